"""Probing the host (cluster/probe.py): measured figures, injected into a catalog, once per process."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os

import pytest
from cluster import probe
from cluster.catalog import DEFAULT_CATALOG_PATH, default_catalog, load_catalog
from cluster.exceptions import CatalogError, InputError
from cluster.probe import HostMeasurement, measure_host_cpu, probed_catalog


def test_measure_host_cpu_returns_measured_figures() -> None:
    spec = measure_host_cpu(seconds_budget=0.3)
    assert spec.kind == "cpu" and spec.category == "host"
    today = datetime.date.today().isoformat()
    for name in ("memory_gib", "mem_bw_gbs", "tflops_fp16", "link_gbs"):
        fig = spec.figure(name)
        assert fig.basis == "measured" and fig.date == today
        assert fig.source.startswith("measured on this host at start-up")
        assert isinstance(fig.value, float) and fig.value > 0
        assert getattr(spec, name) == fig.value
    assert 0.5 < spec.memory_gib < 16384
    assert 1e-4 < spec.tflops_fp16 < 1000 and 0.1 < spec.mem_bw_gbs < 10_000
    assert spec.figure("power_max_w") == default_catalog().host.figures[1][1]
    assert spec.tflops_fp8 is None
    # price: the catalog's quoted vCPU-hour price x this host's logical CPUs, labelled derived
    vcpu = dict(default_catalog().host.figures)["price_per_vcpu_hour"]
    assert vcpu.basis == "quote" and vcpu.value > 0 and "vCPU" in vcpu.source
    price = spec.figure("price_per_hour")
    assert spec.price_per_hour == pytest.approx(vcpu.value * (os.cpu_count() or 1))
    assert price.basis == "derived" and "per vCPU-hour" in price.source and vcpu.date in price.source
    json.dumps(spec.to_dict())
    with pytest.raises(InputError, match="seconds_budget"):
        measure_host_cpu(seconds_budget=0)


def test_catalog_never_measures_without_an_injected_probe() -> None:
    cat = load_catalog(DEFAULT_CATALOG_PATH)
    assert cat.host_probe is None and "cpu" in cat
    with pytest.raises(CatalogError, match="measured rather than typed in.*probed_catalog"):
        cat.get("cpu")
    with pytest.raises(CatalogError):
        default_catalog().get("CPU")
    assert all(s.kind != "cpu" for s in cat.specs_of())


def test_probed_catalog_measures_the_host_lazily_once(monkeypatch) -> None:
    calls: list[float] = []

    def fake_measure(seconds_budget: float) -> HostMeasurement:
        calls.append(seconds_budget)
        return HostMeasurement(0.05, 10.0, 8.0, 512, "test CPU", "2026-11-28")

    probe._cached_host_measurement.cache_clear()
    monkeypatch.setattr(probe, "_measure_host", fake_measure)
    try:
        cat = probed_catalog()
        n_typed = len(cat.specs_of())
        assert calls == []  # building, listing and typed lookups never measure
        assert cat.get("a100-80g-sxm") is default_catalog().get("a100-80g-sxm")
        first = cat.get("cpu")
        assert cat.get("host") == first and probed_catalog().get("CPU") == first
        assert len(calls) == 1
        assert first.tflops_fp16 == 0.05 and first.mem_bw_gbs == 10.0 and first.memory_gib == 8.0
        assert "test CPU" in first.name
        assert len(cat.specs_of(include_host=True)) == n_typed + 1
        # an injected probe is any function of the host template
        other = dataclasses.replace(default_catalog(), host_probe=lambda t: first)
        assert other.get("cpu") is first
    finally:
        probe._cached_host_measurement.cache_clear()
