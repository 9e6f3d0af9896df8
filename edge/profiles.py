"""Expert profiles: an expert is a model on a device kind; its modeled latency and energy per query.

For expert ``n`` (model ``m`` on device ``d``) and query category ``c``:

    p_c        = mean prompt tokens of c's questions   = mean(prompt_chars) / chars_per_token
                 + prompt_overhead_tokens
    o_{n,c}    = mean output tokens of m on c           = mean(gen_chars of m) / chars_per_token
    t_cmp      = cluster.perf.request_latency(m, d, p_c, o_{n,c}).e2e_s      (prefill + decode)
    t_tx       = (prompt_bytes + answer_bytes) / link_bytes_s(d)              (query in, answer out)
    t_{n,c}    = t_cmp + t_tx                                                 (seconds)
    E_{n,c}    = request_latency(...).energy_j + P_idle(d) * t_tx              (joules: power x time)
    E_n        = sum_c w_c E_{n,c},  w_c = share of the questions in c        (one figure per expert)

``E_{n,c}`` is kept too (``energy_by_category``). Two deployment semantics use these figures
(docs/edge-experts.md): when S runs all its experts on every query (the oracle objective), its
latency on category c is ``max_{n in S} t_{n,c} + a`` (a = aggregation time) and its energy per query
``sum_{n in S} E_n``; when each query is routed to ONE expert (``flotilla experts evaluate``, the gate
objective with top-1), a query of category c routed to n costs ``E_{n,c}`` and ``t_{n,c}``. Every figure here is *modeled* from the roofline in cluster/perf,
not measured; prompt and output lengths come from the data (characters / ``chars_per_token``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cluster.exceptions import InputError, did_you_mean
from cluster.perf import fits, request_latency


@dataclass(frozen=True, slots=True)
class Placement:
    """One expert: data column ``model`` served on catalog kind ``device`` with weights in ``dtype``."""

    model: str
    device: str
    dtype: str = "bf16"

    @property
    def name(self) -> str:
        suffix = "" if self.dtype == "bf16" else f":{self.dtype}"
        return f"{self.model}@{self.device}{suffix}"

    @classmethod
    def parse(cls, text: str) -> Placement:
        """``MODEL@DEVICE`` or ``MODEL@DEVICE:DTYPE``."""
        if not isinstance(text, str) or "@" not in text:
            raise InputError(f"experts: expected MODEL@DEVICE[:DTYPE], got {text!r}")
        model, _, rest = text.partition("@")
        device, _, dtype = rest.partition(":")
        if not model or not device:
            raise InputError(f"experts: expected MODEL@DEVICE[:DTYPE], got {text!r}")
        return cls(model.strip(), device.strip(), dtype.strip() or "bf16")


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """Assumptions of the profile model (each one a knob, none measured).

    ``chars_per_token`` (4.0): English text averages about 4 characters per BPE token.
    ``prompt_overhead_tokens`` (0): extra prompt tokens per query (system prompt, few-shot examples);
    the data's answers come from 5-shot prompts, a deployment would usually send the query alone.
    ``aggregation_ms`` (5.0): time to combine the experts' answers (weighted vote at the gate).
    ``batch`` (1): requests an expert serves together (edge servers serve one query at a time).
    """

    chars_per_token: float = 4.0
    prompt_overhead_tokens: int = 0
    aggregation_ms: float = 5.0
    batch: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.chars_per_token, (int, float)) and self.chars_per_token > 0):
            raise InputError(f"chars_per_token: expected a number > 0, got {self.chars_per_token!r}")
        if not (isinstance(self.prompt_overhead_tokens, int) and self.prompt_overhead_tokens >= 0):
            raise InputError(f"prompt_overhead_tokens: expected an integer >= 0, got {self.prompt_overhead_tokens!r}")
        if not (isinstance(self.aggregation_ms, (int, float)) and math.isfinite(self.aggregation_ms)
                and self.aggregation_ms >= 0):
            raise InputError(f"aggregation_ms: expected a number >= 0, got {self.aggregation_ms!r}")
        if not (isinstance(self.batch, int) and self.batch >= 1):
            raise InputError(f"batch: expected an integer >= 1, got {self.batch!r}")


@dataclass(frozen=True, slots=True)
class ExpertProfile:
    """Modeled cost of one expert: energy per query (J) and latency per category (ms)."""

    name: str
    model: str
    device: str
    dtype: str
    energy_j: float
    latency_ms: tuple[tuple[str, float], ...]
    #: energy per query on each category (J); ``energy_j`` is their question-weighted mean
    energy_by_category: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "model": self.model, "device": self.device, "dtype": self.dtype,
                "energy_j": self.energy_j, "latency_ms": dict(self.latency_ms),
                "energy_j_by_category": dict(self.energy_by_category), "modeled": True}


def query_cost(model, device, prompt_tokens: int, output_tokens: int, payload_bytes: float,
               batch: int = 1) -> tuple[float, float]:
    """(seconds, joules) of one query: compute from cluster/perf plus transmission over the link."""
    cost = request_latency(model, device, max(1, prompt_tokens), max(1, output_tokens), batch)
    t_tx = payload_bytes / device.link_bytes_s
    return cost.e2e_s + t_tx, cost.energy_j + device.power_idle_w * t_tx


def build_profiles(data, placements: list[Placement] | tuple[Placement, ...], catalog=None,
                   config: ProfileConfig = ProfileConfig()) -> list[ExpertProfile]:
    """Profiles of ``placements`` from the questions of ``data`` (an :class:`edge.dataset.ExpertData`)."""
    from cluster.catalog import default_catalog
    from cluster.models import expert_model

    catalog = catalog or default_catalog()
    cats = np.asarray(data.categories)
    categories = sorted(set(data.categories))
    weights = {c: float(np.mean(cats == c)) for c in categories}
    out = []
    seen: set[str] = set()
    for p in placements:
        if p.name in seen:
            raise InputError(f"experts: {p.name!r} is listed twice")
        seen.add(p.name)
        if p.model not in data.models:
            raise InputError(f"experts: model {p.model!r} is not in the data{did_you_mean(p.model, data.models)}; "
                             f"known: {', '.join(data.models)}")
        shape = expert_model(p.model, p.dtype)
        spec = catalog.get(p.device)
        if not fits(shape, spec):
            raise InputError(
                f"experts: {p.model} in {p.dtype} ({shape.weight_bytes / 2**30:.1f} GiB of weights) does not fit "
                f"on {spec.kind} ({spec.memory_gib:g} GiB); try {p.model}@{p.device}:int4 or a larger device")
        col = data.models.index(p.model)
        lat, energy, ecat = {}, 0.0, {}
        for c in categories:
            rows = cats == c
            pchars = float(data.prompt_chars[rows].mean())
            ochars = float(data.gen_chars[rows, col].mean())
            ptok = int(round(pchars / config.chars_per_token)) + config.prompt_overhead_tokens
            otok = int(round(ochars / config.chars_per_token))
            t, e = query_cost(shape, spec, ptok, otok, pchars + ochars, config.batch)
            lat[c] = t * 1e3
            ecat[c] = e
            energy += weights[c] * e
        out.append(ExpertProfile(p.name, p.model, spec.kind, p.dtype, energy, tuple(lat.items()),
                                 tuple(ecat.items())))
    return out


def default_placements(models: tuple[str, ...] | list[str], devices: tuple[str, ...] | list[str],
                       catalog=None) -> list[Placement]:
    """Model i on device ``devices[i % len(devices)]``, bf16 when it fits there, else int8, else int4."""
    from cluster.catalog import default_catalog
    from cluster.models import expert_model

    if not devices:
        raise InputError("devices: expected at least one device kind")
    catalog = catalog or default_catalog()
    out = []
    for i, m in enumerate(models):
        kind = catalog.resolve(devices[i % len(devices)])
        spec = catalog.get(kind)
        dtype = next((dt for dt in ("bf16", "int8", "int4") if fits(expert_model(m, dt), spec)), "int4")
        out.append(Placement(m, kind, dtype))
    return out
