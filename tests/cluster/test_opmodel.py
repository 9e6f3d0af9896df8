"""The learned operator-time model: features against hand-computed values, the learner on a known
law, and the shipped model against the measured Vidur data it was fitted on.

The shipped model is fitted once per session (or loaded from the on-disk cache keyed by the data).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cluster import opmodel, perf
from cluster.catalog import default_catalog
from cluster.exceptions import InputError
from cluster.opfeatures import FEATURE_NAMES, SM_COUNT, GemmDevice, gemm_features, roofline_seconds

A100 = GemmDevice("a100-80g-sxm", 312e12, 2039e9, 108)


def col(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, FEATURE_NAMES.index(name)]


# ------------------------------------------------------------------------------------ features


def test_features_match_hand_computed_roofline():
    m, n, k = 4096, 12288, 4096
    x = gemm_features(m, n, k, 2.0, A100)
    assert x.shape == (1, len(FEATURE_NAMES))
    flops, nbytes = 2 * m * n * k, 2 * (m * k + k * n + m * n)
    assert col(x, "log10_flops")[0] == pytest.approx(math.log10(flops))
    assert col(x, "log2_intensity")[0] == pytest.approx(math.log2(flops / nbytes))
    assert col(x, "log10_t_roof")[0] == pytest.approx(math.log10(max(flops / 312e12, nbytes / 2039e9)))
    assert col(x, "mem_bound")[0] == 0.0
    assert roofline_seconds(m, n, k, 2.0, A100)[0] == pytest.approx(flops / 312e12)
    # a decode GEMM (one token) is memory bound
    assert col(gemm_features(1, n, k, 2.0, A100), "mem_bound")[0] == 1.0


def test_tile_and_wave_quantisation():
    # 108 x 128 by 128: exactly one full wave of 128x128 tiles on 108 SMs, no padding
    x = gemm_features(108 * 128, 128, 64, 2.0, A100)
    assert col(x, "wave_q_128x128")[0] == pytest.approx(1.0)
    assert col(x, "tile_q_128x128")[0] == pytest.approx(1.0)
    assert col(x, "log2_waves_128x128")[0] == pytest.approx(0.0)
    # one more row: 109 tiles -> 2 waves, the second holds 1 tile of 108 slots; the padded row tile
    x = gemm_features(108 * 128 + 1, 128, 64, 2.0, A100)
    assert col(x, "wave_q_128x128")[0] == pytest.approx((109 / 108) / 2)
    assert col(x, "tile_q_128x128")[0] == pytest.approx((108 * 128 + 1) / (109 * 128))
    # k padding to the 64 step and the alignment of m
    assert col(gemm_features(8, 8, 96, 2.0, A100), "k_q")[0] == pytest.approx(96 / 128)
    assert col(gemm_features([1, 8, 24, 1024], 8, 8, 2.0, A100), "m_align").tolist() == [0, 3, 3, 7]


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_features_refuse_bad_sizes_naming_the_field(bad):
    with pytest.raises(InputError, match="^m: "):
        gemm_features(bad, 8, 8, 2.0, A100)
    with pytest.raises(InputError, match="^GemmDevice.n_sm"):
        GemmDevice("x", 1e12, 1e9, 0)


# ------------------------------------------------------------------------------ perf projections


def test_projection_gemms_llama_shapes():
    # Llama-2-7B: hidden 4096, 32 heads, MHA, ffn 11008, gated
    assert perf.projection_gemms(4096, 32, 32, 11008, True) == {
        "qkv": (12288, 4096), "o": (4096, 4096), "up": (22016, 4096), "down": (4096, 11008)}
    # Llama-2-70B at tp 8: GQA with 8 KV heads of 128 -> (64 + 16) * 128 / 8 = 1280 columns
    g = perf.projection_gemms(8192, 64, 8, 28672, True, tp=8)
    assert g == {"qkv": (1280, 8192), "o": (8192, 1024), "up": (7168, 8192), "down": (8192, 3584)}
    for field, args in (("heads", (4096, 30, 30, 11008)), ("kv_heads", (4096, 32, 5, 11008)),
                        ("tp", (4096, 32, 8, 11008, True, 16)), ("hidden", (0, 32, 32, 11008))):
        with pytest.raises(InputError, match=f"^{field}: "):
            perf.projection_gemms(*args)


def test_linear_layer_time_is_the_sum_of_four_gemms():
    l4 = default_catalog().get("l4")
    want = sum(perf.gemm_time(300, n, k, l4, "fp16") for n, k in perf.projection_gemms(4096, 32, 8, 14336, True).values())
    assert perf.linear_layer_time(300, 4096, 32, 8, 14336, l4, gated=True, dtype="fp16") == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------------------- learner


def _synthetic(ns: list[int], ks: list[int]) -> opmodel.GemmSamples:
    """Times that follow a known law: roofline x (1 + 8 / m) x (1.3 when n is not a multiple of 128)."""
    m, n, k = (a.ravel() for a in np.meshgrid(2 ** np.arange(13), ns, ks, indexing="ij"))
    law = roofline_seconds(m, n, k, 2.0, A100) * (1 + 8 / m) * np.where(n % 128, 1.3, 1.0)
    groups = np.array([f"{a}x{b}x{c}" for a, b, c in zip(m, n, k)])
    return opmodel.GemmSamples((A100,) * len(m), np.full(len(m), 2.0), m, n, k, law, groups)


@pytest.mark.parametrize("learner,median_max", [("hgb", 0.03), ("extra-trees", 0.08)])
def test_learner_recovers_a_known_law_on_unseen_shapes(learner, median_max):
    train = _synthetic([1024, 2000, 4096, 5000, 8192, 10000], [1024, 4096, 8192])
    test = _synthetic([3072, 6000], [2048, 6144])  # (n, k) never seen in training
    assert not np.isin(test.groups, train.groups).any()
    model = opmodel.OpTimeModel(learner).fit(train)
    rel = np.abs(model.predict_data(test) / test.seconds - 1)
    assert np.median(rel) < median_max and np.percentile(rel, 90) < 0.15
    # the roofline alone misses the law by the launch term at small m (1 + 8 / m)
    assert np.median(np.abs(roofline_seconds(test.m, test.n, test.k, 2.0, A100) / test.seconds - 1)) > 0.1
    assert model.covers == frozenset({("a100-80g-sxm", 2.0)})


def test_learner_refuses_misuse():
    with pytest.raises(InputError, match="^learner: "):
        opmodel.OpTimeModel("svm")
    with pytest.raises(InputError, match="fit"):
        opmodel.OpTimeModel().predict([A100], np.array([2.0]), np.array([1]), np.array([8]), np.array([8]))
    with pytest.raises(InputError, match="^GemmSamples.seconds"):
        opmodel.GemmSamples((A100,), np.array([2.0]), np.array([1]), np.array([8]), np.array([8]), np.array([0.0]), np.array(["g"]))


# ------------------------------------------------------------------------------- shipped model


@pytest.fixture(scope="module")
def vidur():
    return opmodel.load_vidur()


def test_shipped_data_is_what_the_readme_says(vidur):
    assert set(vidur.device.tolist()) == {"a100-80g-sxm", "h100-sxm"}
    assert set(vidur.model.tolist()) == {"Llama-2-7b-hf", "Llama-2-70b-hf", "CodeLlama-34b-Instruct-hf", "phi-2"}
    assert vidur.tokens.min() == 1 and vidur.tokens.max() == 4096
    assert set(vidur.tp.tolist()) == {1, 2, 4, 8}
    assert np.all(vidur.layer_seconds > 0)
    assert vidur.shapes["Llama-2-70b-hf"] == {"hidden": 8192, "heads": 64, "kv_heads": 8, "ffn": 28672, "gated": True}
    for kind in ("a100-80g-sxm", "h100-sxm"):
        assert kind in SM_COUNT and opmodel.learned_covers(kind, "fp16") and opmodel.learned_covers(kind, "bf16")
    assert not opmodel.learned_covers("a100-80g-sxm", "fp32") and not opmodel.learned_covers("l4", "fp16")


@pytest.mark.parametrize("kind,tokens", [("a100-80g-sxm", 1), ("a100-80g-sxm", 512), ("h100-sxm", 64), ("h100-sxm", 4096)])
def test_learned_layer_is_close_to_the_measured_point(vidur, kind, tokens):
    i = int(np.flatnonzero((vidur.device == kind) & (vidur.model == "Llama-2-7b-hf") & (vidur.tp == 1)
                           & (vidur.tokens == tokens))[0])
    spec = default_catalog().get(kind)
    pred = opmodel.predict_layer(spec, 4096, 32, 32, 11008, [tokens], gated=True)
    assert pred.predictor == "learned"
    assert pred.layer_ms[0] == pytest.approx(vidur.layer_seconds[i] * 1e3, rel=0.05)
    for p in perf.PROJECTIONS:
        assert pred.ops_ms[p][0] == pytest.approx(vidur.seconds[p][i] * 1e3, rel=0.10)
    # learned time never beats the peak roofline of the same GEMMs
    roof = sum(roofline_seconds(tokens, n, k, 2.0, opmodel.gemm_device(spec, "fp16"))[0] for n, k in pred.gemms.values())
    assert pred.layer_ms[0] > roof * 1e3


def test_learned_layer_grows_with_tokens_and_is_faster_on_h100():
    cat = default_catalog()
    toks = [1, 256, 1024, 4096]
    a = opmodel.predict_layer(cat.get("a100-80g-sxm"), 5120, 40, 40, 13824, toks, gated=True)
    h = opmodel.predict_layer(cat.get("h100-sxm"), 5120, 40, 40, 13824, toks, gated=True)
    assert list(a.layer_ms) == sorted(a.layer_ms) and a.layer_ms[-1] > 5 * a.layer_ms[0]
    assert all(hh < aa for hh, aa in zip(h.layer_ms, a.layer_ms))
    assert a.extrapolated == () and a.to_dict()["extrapolated_tokens"] == []
    big = opmodel.predict_layer(cat.get("a100-80g-sxm"), 5120, 40, 40, 13824, [4096, 16384], gated=True)
    assert big.extrapolated == (16384,)
    # beyond the data the log-ratio stays at its edge, so time keeps scaling with the roofline
    assert big.layer_ms[1] == pytest.approx(4 * big.layer_ms[0], rel=0.15)


def test_roofline_fallback_equals_perf_and_errors_name_the_field():
    cat = default_catalog()
    l4 = cat.get("l4")
    pred = opmodel.predict_layer(l4, 4096, 32, 32, 11008, [1, 100], gated=True)
    assert pred.predictor == "roofline"
    for i, t in enumerate((1, 100)):
        assert pred.layer_ms[i] == pytest.approx(
            perf.linear_layer_time(t, 4096, 32, 32, 11008, l4, gated=True, dtype="fp16") * 1e3, rel=1e-12)
    # a covered kind can be forced onto the roofline; an uncovered one cannot be forced onto the learner
    forced = opmodel.predict_layer(cat.get("h100-sxm"), 4096, 32, 32, 11008, [7], learned=False)
    assert forced.predictor == "roofline"
    with pytest.raises(InputError, match="^device: "):
        opmodel.predict_layer(l4, 4096, 32, 32, 11008, [1], learned=True)
    with pytest.raises(InputError, match="^tokens: "):
        opmodel.predict_layer(l4, 4096, 32, 32, 11008, [])
    with pytest.raises(InputError, match="^tokens: "):
        opmodel.predict_layer(l4, 4096, 32, 32, 11008, [4, 0])
    with pytest.raises(InputError, match="^dtype: "):
        opmodel.predict_layer(l4, 4096, 32, 32, 11008, [4], dtype="fp12")
    d = pred.to_dict()
    assert d["modeled"] is True and d["predictor"] == "roofline" and len(d["layer_ms"]) == 2


def test_extract_script_regenerates_the_shipped_tables(tmp_path):
    import importlib.util

    root = opmodel.OPDATA_DIR.parents[2]
    spec = importlib.util.spec_from_file_location("extract_opdata", root / "scripts" / "extract_opdata.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    vidur = mod.shared_data() / "vidur"
    if not vidur.is_dir():
        pytest.skip(f"{vidur} not present (the shared data folder)")
    assert mod.main(["--vidur", str(vidur), "--out", str(tmp_path)]) == 0
    for name in ("vidur_models.csv", "vidur_linear.csv"):
        assert (tmp_path / name).read_bytes() == (opmodel.OPDATA_DIR / name).read_bytes(), name
