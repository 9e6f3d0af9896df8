"""Calibration: fits reproduce their targets, reduce the error, and the shipped profiles are current."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cluster import calibration as C
from cluster import perf
from cluster.catalog import default_catalog
from cluster.exceptions import InputError
from cluster.models import get_model


@pytest.fixture(scope="module")
def cat():
    return default_catalog()


def test_capacity_fit_hits_its_target_and_is_monotone(cat):
    m, a100 = get_model("llama-2-7b"), cat.get("a100-80g-sxm")
    eff2, fit2 = C.fit_capacity_scale(m, a100, 2.0, 1000, 250, 0.120)
    eff3, _ = C.fit_capacity_scale(m, a100, 3.0, 1000, 250, 0.120)
    assert C.modeled_capacity(m, a100, 1000, 250, 0.120, eff2) == pytest.approx(2.0, rel=1e-4)
    assert fit2["rate_before_rps"] == pytest.approx(C.modeled_capacity(m, a100, 1000, 250, 0.120))
    assert fit2["error_after"] < 1e-4 < fit2["error_before"]
    # a higher target needs higher efficiencies; only e_c, e_m, e_a move, by one common scale
    assert eff2.compute < eff3.compute <= 1 and eff2.memory < eff3.memory <= 1
    s = fit2["params"]["scale"]
    d = perf.DEFAULT_EFFICIENCY
    assert (eff2.compute, eff2.memory, eff2.attention) == pytest.approx((d.compute * s, d.memory * s, d.attention * s))
    assert eff2.step_overhead_s == d.step_overhead_s
    with pytest.raises(InputError, match="^target_rps: "):
        C.fit_capacity_scale(m, a100, 500.0, 1000, 250, 0.120)


def test_operator_fit_reduces_error(cat):
    eff, fit = C.fit_operator_efficiency("a100-80g-sxm", cat)
    assert 0.05 <= eff.compute <= 1 and 0.05 <= eff.memory <= 1 and 0 <= eff.kernel_overhead_s <= 50e-6
    assert fit["error_after"]["median"] < fit["error_before"]["median"]
    assert fit["error_after"]["p90"] < fit["error_before"]["p90"]
    with pytest.raises(InputError, match="^device: "):
        C.fit_operator_efficiency("l4", cat)


@pytest.mark.parametrize("name", ["melange-2024", "vidur-2024"])
def test_shipped_profiles_match_a_refit(name):
    shipped = C.load_profile(name)
    refit = C.build_profile(name)
    assert shipped.name == name and set(shipped.efficiency) == set(refit.efficiency)
    for kind, eff in refit.efficiency.items():
        got = dataclasses.asdict(shipped.efficiency[kind])
        for field, value in dataclasses.asdict(eff).items():
            assert got[field] == pytest.approx(value, rel=1e-3, abs=1e-9), (kind, field)
    assert shipped.for_kind("t4") == perf.DEFAULT_EFFICIENCY


def test_melange_profile_reproduces_the_published_capacities():
    prof = C.load_profile("melange-2024")
    m, cat = get_model("llama-2-7b"), default_catalog()
    for kind, rps in C.MELANGE_CAPACITY.items():
        assert C.modeled_capacity(m, cat.get(kind), 1000, 250, 0.120, prof.for_kind(kind)) == pytest.approx(rps, rel=1e-3)
        # the defaults overestimate both by far more than 10 %
        assert C.modeled_capacity(m, cat.get(kind), 1000, 250, 0.120) > 1.5 * rps


def test_profile_files_and_errors(tmp_path):
    prof = C.load_profile("melange-2024")
    path = C.save_profile(prof, tmp_path / "p.json")
    back = C.load_profile(str(path))
    assert back.to_dict() == json.loads(json.dumps(prof.to_dict()))
    with pytest.raises(InputError, match="^calibration: no profile 'nope'"):
        C.load_profile("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "efficiency": {"a10g": {"compute": 2.0}}}))
    with pytest.raises(InputError, match="Efficiency.compute"):
        C.load_profile(str(bad))
    bad.write_text(json.dumps({"nothing": 1}))
    with pytest.raises(InputError, match="not a calibration profile"):
        C.load_profile(str(bad))
    with pytest.raises(InputError, match="^--profile: "):
        C.build_profile("melange-2025")
