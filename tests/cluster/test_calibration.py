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


@pytest.mark.parametrize("name", ["engines-2026", "melange-2024", "vidur-2024"])
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


def test_engines_profile_fits_the_h200_run_and_keeps_the_vidur_fits():
    doc = json.loads(C.H200_CHECK_FILE.read_text())
    eff, fit = C.h200_fit()
    assert eff.compute == doc["roofline"]["compute_fraction_of_peak"]  # measured, not fitted
    assert 0.05 <= eff.memory <= 1 and 0 <= eff.step_overhead_s <= 0.05
    # the three CUDA-graph decode steps: the defaults miss by > 30 %, the fit by < 2 %
    assert fit["error_before"]["median"] > 0.3 and fit["error_after"]["p90"] < 0.02
    m, spec = get_model("llama-2-7b"), default_catalog().get("h200-sxm")
    for row in doc["decode_cuda_graph"]["rows"]:
        got = perf.decode_step_time(m, spec, row["batch"], row["context"], eff)
        assert got == pytest.approx(row["decode_step_graph_s"], rel=0.02)
    prof = C.load_profile("engines-2026")
    assert set(prof.efficiency) == {"a100-80g-sxm", "h100-sxm", "h200-sxm"}
    vidur = C.load_profile("vidur-2024")
    for kind in ("a100-80g-sxm", "h100-sxm"):
        assert prof.efficiency[kind] == vidur.efficiency[kind]
    assert "today's engines" in prof.description


def test_cpu_fit_sets_the_step_overhead_that_closes_the_mean_gap():
    from cluster.catalog import default_catalog as dc
    from cluster.probe import HostMeasurement, _host_spec

    host = _host_spec(dc().host, HostMeasurement(0.05, 20.0, 8.0, 512, "test cpu", "2026-12-02"))

    class OneHost:
        def get(self, kind):
            assert kind == "cpu"
            return host

    eff, fit = C.cpu_fit(catalog=OneHost())
    assert fit["host"]["tflops_fp16"] == 0.05 and fit["rows"] == 2
    assert eff.step_overhead_s == pytest.approx(fit["params"]["step_overhead_s"]) and eff.step_overhead_s > 0
    assert fit["error_after"]["median"] < fit["error_before"]["median"]
    with pytest.raises(InputError, match="nope.jsonl.*cannot read it"):
        C.cpu_fit(C.RESULTS_DIR / "nope.jsonl", catalog=OneHost())


def test_capacity_leave_one_out_predicts_each_published_capacity_from_the_other():
    m, cat = get_model("llama-2-7b"), default_catalog()
    loo = C.capacity_loo(0.120)
    assert set(loo) == set(C.MELANGE_CAPACITY)
    for held, f in loo.items():
        (other,) = f["fitted_on"]
        assert other != held
        _, fit = C.fit_capacity_scale(m, cat.get(other), C.MELANGE_CAPACITY[other], *C.MELANGE_SHAPE, 0.120)
        assert f["scale"] == pytest.approx(fit["params"]["scale"])
        pred = C.modeled_capacity(m, cat.get(held), *C.MELANGE_SHAPE, 0.120, C._scaled(f["scale"]))
        assert f["predicted_rps"] == pytest.approx(pred)
        assert f["error"] == pytest.approx(pred / C.MELANGE_CAPACITY[held] - 1)
    # the committed result file is what this code computes
    committed = json.loads((C.RESULTS_DIR / "calibration_holdout.json").read_text())["capacity_loo"]["tpot_120ms"]
    for held, f in loo.items():
        assert committed[held]["predicted_rps"] == pytest.approx(f["predicted_rps"], rel=1e-6)


def test_preferred_gpu_is_the_argmax_of_requests_per_dollar_and_transfer_is_the_mean_scale():
    m, cat = get_model("llama-2-7b"), default_catalog()
    prof = C.load_profile("melange-2024")
    scales = [f["params"]["scale"] for f in prof.fits.values()]
    got, want_eff = C.transfer_efficiency(prof, "l4"), C._scaled((scales[0] * scales[1]) ** 0.5)
    for field, value in dataclasses.asdict(want_eff).items():
        assert getattr(got, field) == pytest.approx(value, rel=1e-12), field
    assert C.transfer_efficiency(prof, "a10g") == prof.efficiency["a10g"]
    labels = ("L4", "A10G", "A100", "H100")
    per_dollar = {lab: C.modeled_capacity(m, cat.get(C.MELANGE_LABELS[lab]), 500, 250, 0.120,
                                          C.transfer_efficiency(prof, C.MELANGE_LABELS[lab]))
                  / C.MELANGE_PRICES[C.MELANGE_LABELS[lab]] for lab in labels}
    want = max(per_dollar, key=per_dollar.get)
    assert C.preferred_gpu(500, 250, 0.120, labels, lambda k: C.transfer_efficiency(prof, k)) == want
    # a shape none of the candidates can serve under the SLO has no preferred GPU
    assert C.preferred_gpu(16000, 2000, 0.120, ("L4",), lambda k: perf.DEFAULT_EFFICIENCY) is None
