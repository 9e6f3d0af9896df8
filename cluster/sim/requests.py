"""The simulator's request streams: arrival times and (input, output) lengths, as numpy arrays.

Arrival processes (``rate`` = mean requests per second, ``n`` requests, all from one seeded
``numpy.random.Generator``):

* ``poisson``: exponential inter-arrival times of mean ``1 / rate``;
* ``gamma:CV``: Gamma inter-arrival times of mean ``1 / rate`` and coefficient of variation ``CV``
  (shape ``1 / CV^2``, scale ``CV^2 / rate``; CV = 1 is Poisson, CV > 1 bursty);
* ``onoff:ON:OFF``: Poisson at ``rate (ON + OFF) / ON`` during ON seconds, silent for OFF seconds
  (same mean rate, bursty);
* ``deterministic``: one request every ``1 / rate`` seconds, starting at 0;
* ``diurnal:F:PERIOD``: a day-like load, Poisson with intensity
  ``peak (F + (1 - F) (1 - cos(2 pi t / PERIOD)) / 2)`` (trough ``F peak`` at t = 0, peak at
  PERIOD / 2), ``peak = 2 rate / (1 + F)`` so the mean over a period is ``rate``; drawn by thinning;
* ``trace``: the arrival times of a trace file (:func:`load_trace`).

Lengths come from a named workload of :mod:`solvers.workloads` (its log-normal mixture sampled
with numpy: ``max(1, round(X))`` tokens, as :meth:`LogNormalLengths.sample`), or from a file of
records (:func:`cluster.workload_files.load_requests`) drawn uniformly with replacement.

Trace files (``.jsonl`` / ``.json`` / ``.csv``): per request ``arrival_s`` (seconds from the start;
aliases ``arrival_time``, ``time``) and the lengths ``input_len`` / ``output_len`` (aliases
``input_tokens`` / ``output_tokens``). Times must be finite, >= 0 and non-decreasing; lengths
integers >= 1. Errors are :class:`~cluster.exceptions.InputError` naming the file, line and field.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.exceptions import InputError
from cluster.workload_files import FIELDS, FORMATS, jsonl_objects, load_requests
from solvers import validate
from solvers.exceptions import did_you_mean
from solvers.workloads import WORKLOADS, WorkloadSpec

ARRIVALS = ("poisson", "gamma:CV", "onoff:ON:OFF", "diurnal:F:PERIOD", "deterministic", "trace")
TIME_FIELDS = ("arrival_s", "arrival_time", "time")


@dataclass(frozen=True)
class Requests:
    """``n`` requests: ``arrival`` seconds (non-decreasing), ``input_len`` and ``output_len`` tokens."""

    arrival: np.ndarray
    input_len: np.ndarray
    output_len: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.arrival)
        if n == 0:
            raise InputError("requests: expected at least one request, got none")
        if len(self.input_len) != n or len(self.output_len) != n:
            raise InputError("requests: arrival, input_len and output_len differ in length")
        a = np.asarray(self.arrival, dtype=np.float64)
        if not np.all(np.isfinite(a)) or a[0] < 0 or np.any(np.diff(a) < 0):
            raise InputError("arrival_s: expected finite times >= 0 in non-decreasing order")
        for name in ("input_len", "output_len"):
            v = np.asarray(getattr(self, name))
            if v.dtype.kind not in "iu" or np.any(v < 1):
                raise InputError(f"{name}: expected integers >= 1")
        object.__setattr__(self, "arrival", a)
        object.__setattr__(self, "input_len", np.asarray(self.input_len, dtype=np.int64))
        object.__setattr__(self, "output_len", np.asarray(self.output_len, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.arrival)


# ------------------------------------------------------------------------------------ arrivals


def parse_arrivals(text: str) -> tuple[str, tuple[float, ...]]:
    """``("gamma", (cv,))`` etc. from ``poisson`` | ``gamma:CV`` | ``onoff:ON:OFF`` | ``deterministic`` | ``trace``."""
    if not isinstance(text, str) or not text:
        raise InputError(f"arrivals: expected one of {', '.join(ARRIVALS)}, got {text!r}")
    head, *args = text.strip().lower().split(":")
    want = {"poisson": 0, "deterministic": 0, "trace": 0, "gamma": 1, "onoff": 2, "diurnal": 2}
    if head not in want:
        raise InputError(f"arrivals: {text!r} is not allowed{did_you_mean(head, want)}; allowed: {', '.join(ARRIVALS)}")
    if len(args) != want[head]:
        raise InputError(f"arrivals: {text!r} takes {want[head]} parameter(s); allowed: {', '.join(ARRIVALS)}")
    try:
        vals = tuple(float(a) for a in args)
    except ValueError:
        raise InputError(f"arrivals: {text!r}: parameters must be numbers") from None
    for v in vals:
        validate.real(f"arrivals ({text})", v, lo=0.0, lo_open=True)
    if head == "diurnal" and vals[0] > 1:
        raise InputError(f"arrivals ({text}): the trough fraction F must be in (0, 1], got {vals[0]:g}")
    return head, vals


def arrival_times(kind: str, rate: float, n: int, rng: np.random.Generator, params: tuple[float, ...] = ()) -> np.ndarray:
    """``n`` arrival times of the process ``kind`` (module docstring) at mean ``rate`` req/s."""
    validate.real("rate", rate, lo=0.0, lo_open=True)
    validate.integer("requests", n, minimum=1)
    if kind == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    elif kind == "gamma":
        (cv,) = params
        gaps = rng.gamma(1.0 / cv**2, cv**2 / rate, n)
    elif kind == "deterministic":
        return np.arange(n, dtype=np.float64) / rate
    elif kind == "diurnal":
        f, period = params
        peak = 2.0 * rate / (1.0 + f)
        out: list[np.ndarray] = []
        t, got = 0.0, 0
        while got < n:
            cand = t + np.cumsum(rng.exponential(1.0 / peak, 2 * (n - got) + 16))
            t = float(cand[-1])
            lam = f + (1.0 - f) * (1.0 - np.cos(2.0 * np.pi * cand / period)) / 2.0
            keep = cand[rng.random(len(cand)) < lam]
            out.append(keep)
            got += len(keep)
        return np.concatenate(out)[:n]
    elif kind == "onoff":
        on, off = params
        t_on = np.cumsum(rng.exponential(on / (rate * (on + off)), n))
        return t_on + np.floor(t_on / on) * off
    else:
        raise InputError(f"arrivals: {kind!r} needs a trace file (--arrivals trace with --workload FILE)")
    return np.cumsum(gaps)


def sample_lengths(spec: WorkloadSpec, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (input, output) lengths of a named workload: component by weight, then ``max(1, round(X))``."""
    comps = spec.components
    which = rng.choice(len(comps), size=n, p=[c.weight for c in comps]) if len(comps) > 1 else np.zeros(n, np.int64)
    out = []
    for attr in ("input", "output"):
        mu = np.array([getattr(c, attr).mu for c in comps])[which]
        sigma = np.array([getattr(c, attr).sigma for c in comps])[which]
        x = np.rint(rng.lognormal(mu, sigma))
        out.append(np.maximum(1, np.minimum(x, 2**40)).astype(np.int64))
    return out[0], out[1]


def make_requests(workload: str, n: int, *, rate: float, arrivals: str = "poisson", seed: int = 0) -> Requests:
    """``n`` requests of ``workload`` (a name of :data:`solvers.workloads.WORKLOADS` or a JSONL/CSV
    file) arriving by ``arrivals`` at ``rate`` req/s; with ``arrivals="trace"`` the file's own
    times (the first ``n`` records) and ``rate`` is ignored."""
    validate.integer("requests", n, minimum=1)
    kind, params = parse_arrivals(arrivals)
    rng = np.random.default_rng(seed)
    if kind == "trace":
        tr = load_trace(workload)
        return Requests(tr.arrival[:n], tr.input_len[:n], tr.output_len[:n])
    key = workload.strip().lower() if isinstance(workload, str) else ""
    if key in WORKLOADS:
        inp, outp = sample_lengths(WORKLOADS[key], n, rng)
    elif isinstance(workload, str) and Path(workload).suffix.lower() in FORMATS:
        records = np.array(load_requests(workload), dtype=np.int64)
        pick = rng.integers(0, len(records), n)
        inp, outp = records[pick, 0], records[pick, 1]
    else:
        raise InputError(f"workload: {workload!r} is neither a named workload ({', '.join(WORKLOADS)})"
                         f"{did_you_mean(key, WORKLOADS)} nor a {'/'.join(FORMATS)} file")
    return Requests(arrival_times(kind, rate, n, rng, params), inp, outp)


# ---------------------------------------------------------------------------------------- traces


def _field(rec: dict[str, Any], names: tuple[str, ...], where: str) -> tuple[str, Any]:
    for k in names:
        if k in rec:
            return k, rec[k]
    raise InputError(f"{where}: missing field {names[0]!r} (or {' / '.join(repr(a) for a in names[1:])})")


def _time(value: Any, where: str, field: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if not validate.is_real(value) or value < 0:
        raise InputError(f"{where}: {field}: expected a finite number >= 0 (seconds), got {value!r:.40}")
    return float(value)


def _tokens(value: Any, where: str, field: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{where}: {field}: expected an integer >= 1 (tokens), got {value!r:.40}")
    return value


def load_trace(path: str | Path) -> Requests:
    """The requests of a trace file (module docstring), validated record by record."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"trace {str(p)!r}: unknown format {suffix!r}; allowed: {', '.join(FORMATS)}")
    try:
        text = p.read_text()
    except OSError as e:
        raise InputError(f"trace {str(p)!r}: cannot read it ({e.strerror})") from None
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = ((reader.line_num, row) for row in reader)
    else:
        rows = jsonl_objects(text, str(p))
    times: list[float] = []
    ins: list[int] = []
    outs: list[int] = []
    for line, rec in rows:
        where = f"{p}:{line}"
        tf, tv = _field(rec, TIME_FIELDS, where)
        t = _time(tv, where, tf)
        if times and t < times[-1]:
            raise InputError(f"{where}: {tf}: expected non-decreasing times, got {t:g} after {times[-1]:g}")
        times.append(t)
        for names, dest in zip(FIELDS, (ins, outs)):
            f, v = _field(rec, names, where)
            dest.append(_tokens(v, where, f))
    if not times:
        raise InputError(f"trace {str(p)!r}: no requests; expected one record per line with arrival_s, "
                         "input_len, output_len")
    return Requests(np.array(times), np.array(ins, dtype=np.int64), np.array(outs, dtype=np.int64))


def mean_lengths(workload: str) -> float:
    """Mean ``input + output`` tokens of a named workload (for router slots); NaN for files."""
    key = workload.strip().lower() if isinstance(workload, str) else ""
    spec = WORKLOADS.get(key)
    return math.nan if spec is None else spec.mean_input + spec.mean_output


__all__ = ["ARRIVALS", "Requests", "arrival_times", "load_trace", "make_requests", "parse_arrivals", "sample_lengths"]
