"""Fleet files, device resources and CUDA-name detection (no Ray needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.catalog import default_catalog
from cluster.exceptions import CatalogError
from cluster.runtime import Fleet, FleetEntry, detect_cuda_devices, host_resources, load_fleet, parse_fleet

ROOT = Path(__file__).resolve().parents[2]


def test_example_fleet_becomes_device_resources() -> None:
    fleet = load_fleet(ROOT / "examples" / "fleet.yaml")
    assert fleet.resources() == {
        "device:rtx4090": 2.0,
        "device:a100-80g-sxm": 1.0,
        "device:jetson-agx-orin-64": 2.0,
    }
    slots = fleet.slots()
    assert [s.device_id for s in slots] == [
        "rtx4090-0", "rtx4090-1", "a100-80g-sxm-0", "jetson-agx-orin-64-0", "jetson-agx-orin-64-1",
    ]
    assert all(s.simulated for s in slots)
    assert fleet.size == 5


def test_example_fleet_hosts_smollm2_as_an_expert_on_the_edge_kinds() -> None:
    fleet = load_fleet(ROOT / "examples" / "fleet.yaml")
    assert fleet.experts == ("smollm2-135m@jetson-agx-orin-64", "smollm2-135m@rtx4090")
    assert parse_fleet({"devices": [{"kind": "Orin"}], "experts": ["x@orin"]}).experts == ("x@jetson-agx-orin-64",)
    assert parse_fleet({"devices": [{"kind": "rtx4090"}]}).experts == ()


def test_aliases_in_fleet_resolve_to_kinds() -> None:
    fleet = parse_fleet({"devices": [{"kind": "4090", "count": 1}, {"kind": "A100-80GB"}, {"kind": "Orin"}]})
    assert [e.kind for e in fleet.entries] == ["rtx4090", "a100-80g-sxm", "jetson-agx-orin-64"]
    assert [e.count for e in fleet.entries] == [1, 1, 1]


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([1, 2], "expected a mapping"),
        ({"devices": []}, "devices: expected a non-empty list"),
        ({"devices": [{"count": 2}]}, "devices[0]: expected a mapping with 'kind'"),
        ({"devices": [{"kind": "rtx9090"}]}, "devices[0].kind"),
        ({"devices": [{"kind": "rtx4090", "count": 0}]}, "devices[0].count: expected an integer >= 1, got 0"),
        ({"devices": [{"kind": "rtx4090", "count": "two"}]}, "devices[0].count"),
        ({"devices": [{"kind": "rtx4090", "colour": "red"}]}, "unknown field 'colour'"),
        ({"devices": [{"kind": "rtx4090"}], "nodes": 3}, "unknown field 'nodes'"),
        ({"devices": [{"kind": "rtx4090"}, {"kind": "4090"}]}, "listed more than once"),
        ({"devices": [{"kind": "rtx4090"}], "experts": "m@rtx4090"}, "experts: expected a list of MODEL@KIND"),
        ({"devices": [{"kind": "rtx4090"}], "experts": ["smollm2-135m"]}, "experts[0]: expected MODEL@KIND"),
        ({"devices": [{"kind": "rtx4090"}], "experts": ["m@rtx9090"]}, "experts[0]: unknown device kind"),
        ({"devices": [{"kind": "rtx4090"}], "experts": ["m@a100"]}, "experts[0]: kind 'a100-80g-sxm' is not in this fleet"),
        ({"devices": [{"kind": "rtx4090"}], "experts": ["m@rtx4090", "m@4090"]}, "experts[1]: 'm@rtx4090' is listed more"),
    ],
)
def test_malformed_fleet_names_file_and_field(tmp_path: Path, doc: object, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CatalogError) as info:
        load_fleet(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_unknown_kind_in_fleet_lists_the_valid_kinds(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("devices:\n  - kind: rtx9090\n")
    with pytest.raises(CatalogError) as info:
        load_fleet(path)
    assert "rtx4090" in str(info.value) and "a100-80g-sxm" in str(info.value)


def test_missing_and_unparsable_fleet_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="fleet file not found"):
        load_fleet(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("devices: [\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_fleet(bad)


def test_fleet_entry_validation() -> None:
    with pytest.raises(ValueError, match="count"):
        FleetEntry("rtx4090", -1)
    with pytest.raises(ValueError, match="more than once"):
        Fleet("f", (FleetEntry("l4", 1), FleetEntry("l4", 2)))


def test_no_cuda_here_means_no_host_resources() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA devices; the assertion below is for CPU-only hosts")
    assert detect_cuda_devices() == []
    assert host_resources() == {}
    printed = subprocess.run([sys.executable, "-m", "cluster.runtime", "resources"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(printed.stdout) == {}


def test_ray_cluster_yaml_node_types_use_catalog_kinds() -> None:
    doc = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    catalog = default_catalog()
    device_types = 0
    for name, node in doc["available_node_types"].items():
        devs = [r for r in node["resources"] if r.startswith("device:")]
        if name == doc["head_node_type"]:
            assert devs == []
            continue
        assert devs == [f"device:{name}"], f"node type {name} must advertise exactly its own kind"
        assert name in catalog
        device_types += 1
    assert device_types >= 3


def test_joined_cluster_slots_follow_each_nodes_gpus() -> None:
    """A node with GPUs runs its devices for real (one GPU per unit, in order); a node without
    (a Jetson: Ray sees no GPU there) is simulated; dead nodes are skipped; ids count per kind."""
    from cluster.runtime import slots_from_nodes

    nodes = [
        {"NodeID": "b-gpu", "Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0, "device:rtx4090": 2.0}},
        {"NodeID": "a-orin", "Alive": True, "Resources": {"CPU": 8.0, "device:jetson-agx-orin-64": 1.0}},
        {"NodeID": "c-mixed", "Alive": True, "Resources": {"GPU": 1.0, "device:rtx4090": 1.0, "device:l4": 1.0}},
        {"NodeID": "d-dead", "Alive": False, "Resources": {"GPU": 1.0, "device:h100-sxm": 1.0}},
    ]
    slots = slots_from_nodes(nodes)
    got = [(s.device_id, s.node_id, s.cuda_index, s.simulated) for s in slots]
    assert got == [
        ("jetson-agx-orin-64-0", "a-orin", None, True),
        ("rtx4090-0", "b-gpu", 0, False),
        ("rtx4090-1", "b-gpu", 1, False),
        # c-mixed has one GPU for two units: the first (sorted by resource name) gets it
        ("l4-0", "c-mixed", 0, False),
        ("rtx4090-2", "c-mixed", None, True),
    ]


def test_a_local_ray_that_fails_to_start_is_one_flotilla_error() -> None:
    """ray.init refusing to start (here: a negative CPU count, which Ray itself rejects) becomes
    RayStartError with Ray's first line, and the CLI prints it as one line (exit 1), not a
    traceback. Run in a fresh process: this one may hold the session's Ray already."""
    code = (
        "import sys\n"
        "from cluster.exceptions import RayStartError\n"
        "from cluster.runtime import load_fleet, start\n"
        "from cluster.shell.console import exit_code_for\n"
        "try:\n"
        "    start(load_fleet('examples/fleet.yaml'), num_cpus=-1)\n"
        "except RayStartError as exc:\n"
        "    sys.exit(exit_code_for(exc))\n"
        "sys.exit(0)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("flotilla:")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("flotilla: failed: could not start a local Ray instance: Resource quantities must be "
                               "nonnegative") and "(ValueError)" in lines[0] and "/tmp/ray/session_latest/logs" in lines[0]
