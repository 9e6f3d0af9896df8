"""Experts on one node share one copy of the model's weights through Ray's object store
(:func:`actors.expert.put_weights`): their parameters are the same pages of the same shared-memory
file, neither holds a private copy, and they generate the same greedy text as an expert that
loaded its own copy from the cache file (not the object)."""

from __future__ import annotations

import pytest

KIND = "rtx4090"
QUESTION = "What is the capital of France?"


def _weights_mapping(expert) -> dict:
    """Inside ``expert``'s process (via ``__ray_call__``): where its parameters live.

    For every parameter, the mapping of /proc/self/maps that holds its first byte, as
    (device, inode, byte offset in the mapped file); the bytes of parameters in anonymous
    (process-private) memory; and the process's private resident bytes (smaps_rollup)."""
    import os

    def probe(self) -> dict:
        maps = []
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                maps.append((lo, hi, int(parts[2], 16), parts[3], int(parts[4]), parts[5] if len(parts) > 5 else ""))
        where, private = {}, 0
        for name, p in self._lm.model.named_parameters():
            addr = p.data_ptr()
            hit = next((m for m in maps if m[0] <= addr < m[1]), None)
            assert hit is not None, name
            lo, _, off, dev, inode, path = hit
            if inode == 0:
                private += p.numel() * p.element_size()
            where[name] = (dev, inode, path, off + addr - lo)
        rollup = {}
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    rollup[key] = int(rest.split()[0]) * 1024
        nbytes = sum(p.numel() * p.element_size() for p in self._lm.model.parameters())
        return {"pid": os.getpid(), "where": where, "private_param_bytes": private, "param_bytes": nbytes,
                "private_bytes": rollup["Private_Clean"] + rollup["Private_Dirty"], "info": self.info()}

    import ray

    return ray.get(expert.__ray_call__.remote(probe))


@pytest.fixture(scope="module")
def experts(ray_session):
    """Two rtx4090 experts built from one SharedWeights object, and an a100 expert that loads
    its own copy from the cache."""
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, put_weights, spawn_expert
    from cluster.catalog import default_catalog

    weights = put_weights(None)
    conf = ExpertConfig(max_concurrency=1, max_context=256)
    catalog = default_catalog()
    devs = {f"{KIND}-{i}": spawn(catalog.get(KIND), f"{KIND}-{i}") for i in range(2)}
    shared = [spawn_expert(dev, KIND, d, conf, start=False, weights=weights) for d, dev in devs.items()]
    own_dev = spawn(catalog.get("a100-80g-sxm"), "a100-80g-sxm-0")
    own = spawn_expert(own_dev, "a100-80g-sxm", "a100-80g-sxm-0", conf, start=False)
    ray.get([h.start.remote() for h in (*shared, own)])
    yield {"weights": weights, "shared": shared, "own": own}
    for h in (*shared, own):
        ray.get(h.stop.remote())
        ray.kill(h)
    for d in (*devs.values(), own_dev):
        ray.kill(d)


def test_put_weights_holds_every_parameter_once(experts):
    from actors.llm.loader import ensure_cached, resolve_source, weight_arrays

    w = experts["weights"]
    arrays = weight_arrays(ensure_cached(resolve_source(None)))
    assert w.model == "smollm2-135m"
    assert w.nbytes == sum(a.nbytes for a in arrays.values()) > 500e6  # 135M fp32 parameters


def test_two_experts_map_the_same_shared_pages(experts):
    a, b = (_weights_mapping(h) for h in experts["shared"])
    assert a["pid"] != b["pid"]
    assert a["info"]["weights"] == b["info"]["weights"] == "shared"
    # every parameter (the tied head included) lies in a file-backed shared mapping, not in
    # anonymous memory, at the same offset of the same file in both processes: the same pages
    assert a["private_param_bytes"] == b["private_param_bytes"] == 0
    assert a["where"] == b["where"]
    assert all(inode != 0 for _, inode, _, _ in a["where"].values())
    assert len({(d, i) for d, i, _, _ in a["where"].values()}) == 1  # one object, one file
    # so neither process holds the weights privately: its private memory is below one copy
    assert a["param_bytes"] > 500e6
    assert a["private_bytes"] < a["param_bytes"] and b["private_bytes"] < b["param_bytes"]


def test_an_expert_without_shared_weights_loads_its_own(experts):
    own = _weights_mapping(experts["own"])
    shared = _weights_mapping(experts["shared"][0])
    assert own["info"]["weights"] == "own" and own["param_bytes"] == shared["param_bytes"]
    files = {(d, i) for d, i, _, _ in own["where"].values()}
    assert files.isdisjoint({(d, i) for d, i, _, _ in shared["where"].values()})


def test_shared_and_own_weights_generate_the_same_greedy_text(experts):
    import ray

    req = {"prompt": QUESTION, "max_tokens": 16}
    texts = [r["text"] for r in ray.get([h.generate.remote(req) for h in (*experts["shared"], experts["own"])])]
    assert "Paris" in texts[0]
    assert texts[0] == texts[1] == texts[2]


def test_shared_weights_of_another_model_are_refused(experts, ray_session):
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, SharedWeights, spawn_expert
    from cluster.catalog import default_catalog
    from cluster.exceptions import InputError

    wrong = SharedWeights("other-model", experts["weights"].ref, experts["weights"].nbytes)
    dev = spawn(default_catalog().get("jetson-agx-orin-64"), "jetson-agx-orin-64-0")
    try:
        with pytest.raises(InputError, match=r"weights: shared weights of 'other-model', but this expert serves 'smollm2-135m'"):
            spawn_expert(dev, "jetson-agx-orin-64", "jetson-agx-orin-64-0", ExpertConfig(), weights=wrong)
    finally:
        ray.kill(dev)
