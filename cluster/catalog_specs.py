"""Device specs and the catalog's pure queries: typed figures, each with its source.

:class:`Figure` (a value with source, date and basis), :class:`DeviceSpec` (one device kind's
figures), :class:`HostTemplate` (the typed-in part of the measured host kind) and :class:`Catalog`
(kinds, aliases, ``resolve`` / ``get``). Each validates itself (InputError naming the field);
reading them from ``devices.yaml`` is :mod:`cluster.catalog_file`. Units and names: see
:mod:`cluster.catalog`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from solvers.validate import is_real
from cluster.exceptions import CatalogError, InputError, UnknownDeviceKindError, did_you_mean

#: Allowed ``category`` values.
CATEGORIES = ("consumer", "datacenter", "edge", "host")

#: Allowed ``basis`` values of a :class:`Figure`.
BASES = ("datasheet", "quote", "derived", "unverified", "measured")

#: The kind that stands for the local host; measured at start-up, never typed in.
HOST_KIND = "cpu"

#: Figure name -> (value type, null allowed, lower bound rule). "positive": > 0; "non-negative": >= 0.
_FIGURE_RULES: Mapping[str, tuple[str, bool, str]] = MappingProxyType(
    {
        "memory_gib": ("number", False, "positive"),
        "mem_bw_gbs": ("number", False, "positive"),
        "tflops_fp16": ("number", False, "positive"),
        "tflops_fp8": ("number", True, "positive"),
        "power_idle_w": ("number", False, "non-negative"),
        "power_max_w": ("number", False, "positive"),
        "interconnect": ("text", False, ""),
        "link_gbs": ("number", False, "positive"),
        "price_per_hour": ("number", True, "non-negative"),
        "price_per_hour_melange": ("number", False, "positive"),
        "price_per_vcpu_hour": ("number", False, "positive"),
    }
)
#: Figures every typed (non-host) entry must carry; DeviceSpec has one field per name.
_SPEC_FIGURES = tuple(n for n in _FIGURE_RULES if n not in ("price_per_hour_melange", "price_per_vcpu_hour"))
_OPTIONAL_FIGURES = ("price_per_hour_melange",)
#: Figures the host entry carries; the rest are measured (its price_per_hour is
#: price_per_vcpu_hour x the host's logical CPUs, derived at start-up).
_HOST_FIGURES = ("power_idle_w", "power_max_w", "price_per_vcpu_hour")

_DATE_RE = re.compile(r"\d{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?")
_KIND_RE = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_SEPARATORS = re.compile(r"[\s_-]+")


def normalize_name(name: str) -> str:
    """Normalise a device name for lookup: lowercase, trimmed, ``[ _-]+`` -> ``-``.

    >>> normalize_name("  NVIDIA GeForce  RTX_4090 ")
    'nvidia-geforce-rtx-4090'
    """
    return _SEPARATORS.sub("-", name.strip().lower()).strip("-")


# ------------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class Figure:
    """One catalog figure and where it comes from.

    ``value`` is a number, a text (``interconnect``) or ``None`` (no such figure, e.g. no FP8);
    ``source`` names the document or the arithmetic; ``date`` is the source's date, ``YYYY-MM`` or
    ``YYYY-MM-DD``; ``basis`` is one of :data:`BASES`.
    """

    value: float | str | None
    source: str
    date: str
    basis: str

    def __post_init__(self) -> None:
        if not (self.value is None or isinstance(self.value, str) or is_real(self.value)):
            raise InputError(f"Figure.value: expected a finite number, a text or None, got {self.value!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise InputError(f"Figure.source: expected a non-empty text naming the source, got {self.source!r}")
        if not isinstance(self.date, str) or not _DATE_RE.fullmatch(self.date):
            raise InputError(f"Figure.date: expected 'YYYY-MM' or 'YYYY-MM-DD', got {self.date!r}")
        if self.basis not in BASES:
            raise InputError(
                f"Figure.basis: {self.basis!r} is not allowed; allowed: {', '.join(BASES)}"
                f"{did_you_mean(str(self.basis), BASES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "source", "date", "basis"}``, JSON-ready."""
        return {"value": self.value, "source": self.source, "date": self.date, "basis": self.basis}


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """The figures of one device kind (see the module docstring for units).

    ``figures`` keeps the provenance: field name -> :class:`Figure`. Where a figure is given for a
    field, its value must equal the field. ``price_per_hour_melange`` (the Mélange paper's price,
    for L4, A10G, A100-80G and H100) exists only as a figure. Change a spec with
    ``dataclasses.replace``; validation runs again.
    """

    kind: str
    name: str
    category: str
    memory_gib: float
    mem_bw_gbs: float
    tflops_fp16: float
    tflops_fp8: float | None
    power_idle_w: float
    power_max_w: float
    interconnect: str
    link_gbs: float
    price_per_hour: float | None
    aliases: tuple[str, ...] = ()
    figures: tuple[tuple[str, Figure], ...] = ()

    def __post_init__(self) -> None:
        where = f"DeviceSpec({self.kind!r})"
        if not isinstance(self.kind, str) or not _KIND_RE.fullmatch(self.kind):
            raise InputError(
                f"DeviceSpec.kind: expected lowercase letters, digits and single dashes "
                f"(e.g. 'a100-80g-sxm'), got {self.kind!r}"
            )
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"{where}.name: expected a non-empty text, got {self.name!r}")
        if self.category not in CATEGORIES:
            raise InputError(
                f"{where}.category: {self.category!r} is not allowed; allowed: {', '.join(CATEGORIES)}"
                f"{did_you_mean(str(self.category), CATEGORIES)}"
            )
        for name in ("memory_gib", "mem_bw_gbs", "tflops_fp16", "power_max_w", "link_gbs"):
            _check_number(where, name, getattr(self, name), nullable=False, rule="positive")
        _check_number(where, "tflops_fp8", self.tflops_fp8, nullable=True, rule="positive")
        _check_number(where, "power_idle_w", self.power_idle_w, nullable=False, rule="non-negative")
        _check_number(where, "price_per_hour", self.price_per_hour, nullable=True, rule="non-negative")
        if self.power_idle_w > self.power_max_w:
            raise InputError(
                f"{where}.power_idle_w: {self.power_idle_w} W exceeds power_max_w {self.power_max_w} W; "
                f"idle power must be at most the maximum"
            )
        if not isinstance(self.interconnect, str) or not self.interconnect.strip():
            raise InputError(f"{where}.interconnect: expected a non-empty text, got {self.interconnect!r}")
        if not isinstance(self.aliases, tuple) or not all(isinstance(a, str) and a.strip() for a in self.aliases):
            raise InputError(f"{where}.aliases: expected a tuple of non-empty texts, got {self.aliases!r}")
        _check_figures(where, self, self.figures)

    # ---------------------------------------------------------------------- queries

    def figure(self, field_name: str) -> Figure:
        """The :class:`Figure` (value with source, date, basis) behind ``field_name``."""
        for name, fig in self.figures:
            if name == field_name:
                return fig
        have = ", ".join(n for n, _ in self.figures) or "none"
        raise InputError(f"{self.kind}: no figure {field_name!r}; figures present: {have}")

    @property
    def memory_bytes(self) -> int:
        """Device memory in bytes: ``memory_gib * 2**30``, rounded down."""
        return int(self.memory_gib * 2**30)

    @property
    def mem_bw_bytes_s(self) -> float:
        """Peak memory bandwidth in bytes/s: ``mem_bw_gbs * 1e9``."""
        return self.mem_bw_gbs * 1e9

    @property
    def flops_fp16(self) -> float:
        """Peak dense fp16/bf16 tensor rate in FLOP/s: ``tflops_fp16 * 1e12``."""
        return self.tflops_fp16 * 1e12

    @property
    def link_bytes_s(self) -> float:
        """Host/network link bandwidth in bytes/s, one direction: ``link_gbs * 1e9``."""
        return self.link_gbs * 1e9

    @property
    def price_per_hour_melange(self) -> float | None:
        """The Mélange paper's price for this kind (USD/h), or None where the paper has none."""
        for name, fig in self.figures:
            if name == "price_per_hour_melange":
                return fig.value  # type: ignore[return-value]
        return None

    def to_dict(self) -> dict[str, Any]:
        """Every field, ``price_per_hour_melange`` and ``figures`` (name -> Figure dict), JSON-ready."""
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "category": self.category}
        for name in _SPEC_FIGURES:
            out[name] = getattr(self, name)
        out["price_per_hour_melange"] = self.price_per_hour_melange
        out["aliases"] = list(self.aliases)
        out["figures"] = {name: fig.to_dict() for name, fig in self.figures}
        return out


def _check_number(where: str, name: str, value: object, *, nullable: bool, rule: str) -> None:
    if value is None and nullable:
        return
    ok = is_real(value) and (value > 0 if rule == "positive" else value >= 0)  # type: ignore[operator]
    if not ok:
        expected = f"a {rule} number" + (" or None" if nullable else "")
        raise InputError(f"{where}.{name}: expected {expected}, got {value!r}")


def _check_figures(where: str, spec: DeviceSpec | None, figures: object) -> None:
    """Figures are (name, Figure) pairs with known, unique names matching the spec's fields."""
    if not isinstance(figures, tuple):
        raise InputError(f"{where}.figures: expected a tuple of (name, Figure) pairs, got {type(figures).__name__}")
    seen: set[str] = set()
    for item in figures:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Figure)):
            raise InputError(f"{where}.figures: expected (name, Figure) pairs, got {item!r}")
        name, fig = item
        if name not in _FIGURE_RULES:
            raise InputError(
                f"{where}.figures: unknown figure {name!r}; allowed: {', '.join(_FIGURE_RULES)}"
                f"{did_you_mean(str(name), _FIGURE_RULES)}"
            )
        if name in seen:
            raise InputError(f"{where}.figures: figure {name!r} given twice")
        seen.add(name)
        if spec is not None and name in _SPEC_FIGURES and fig.value != getattr(spec, name):
            raise InputError(
                f"{where}.figures: figure {name!r} has value {fig.value!r} but the field is {getattr(spec, name)!r}"
            )


@dataclass(frozen=True, slots=True)
class HostTemplate:
    """The catalog entry of the measured host kind: what is typed in; the rest is measured.

    ``figures`` holds ``power_idle_w`` and ``power_max_w`` (documented estimates) and
    ``price_per_vcpu_hour`` (a quoted cloud vCPU-hour price, scaled to the host's logical CPUs).
    """

    kind: str
    name: str
    aliases: tuple[str, ...] = ()
    figures: tuple[tuple[str, Figure], ...] = ()

    def __post_init__(self) -> None:
        where = f"HostTemplate({self.kind!r})"
        if not isinstance(self.kind, str) or not _KIND_RE.fullmatch(self.kind):
            raise InputError(f"HostTemplate.kind: expected a kind such as 'cpu', got {self.kind!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"{where}.name: expected a non-empty text, got {self.name!r}")
        if not isinstance(self.aliases, tuple) or not all(isinstance(a, str) and a.strip() for a in self.aliases):
            raise InputError(f"{where}.aliases: expected a tuple of non-empty texts, got {self.aliases!r}")
        _check_figures(where, None, self.figures)
        names = {n for n, _ in self.figures}
        if names != set(_HOST_FIGURES):
            raise InputError(f"{where}.figures: expected exactly {', '.join(_HOST_FIGURES)}, got {sorted(names)}")
        idle, peak, vcpu = (dict(self.figures)[n].value for n in _HOST_FIGURES)
        _check_number(where, "power_idle_w", idle, nullable=False, rule="non-negative")
        _check_number(where, "power_max_w", peak, nullable=False, rule="positive")
        _check_number(where, "price_per_vcpu_hour", vcpu, nullable=False, rule="positive")
        if idle > peak:  # type: ignore[operator]
            raise InputError(f"{where}.power_idle_w: {idle} W exceeds power_max_w {peak} W")


# ----------------------------------------------------------------------------------- catalog


@dataclass(frozen=True, slots=True)
class Catalog:
    """An immutable set of device kinds with their aliases.

    ``specs`` are the typed kinds; ``host`` is the template of the measured host kind (``cpu``),
    if any. Iterating yields kinds (sorted); ``name in catalog`` accepts kinds and aliases.
    ``get("cpu")`` calls ``host_probe(host)`` (injected, e.g. by :func:`cluster.probe.probed_catalog`);
    without a probe it raises :class:`CatalogError` instead of measuring.
    """

    version: str
    specs: tuple[DeviceSpec, ...]
    host: HostTemplate | None = None
    path: str | None = None
    host_probe: Callable[[HostTemplate], DeviceSpec] | None = field(default=None, compare=False)
    _by_kind: Mapping[str, DeviceSpec] = field(init=False, repr=False, compare=False)
    _names: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = self.path or "<catalog>"
        if not isinstance(self.version, str) or not self.version.strip():
            raise CatalogError(f"{where}: version: expected a non-empty text, got {self.version!r}")
        by_kind: dict[str, DeviceSpec] = {}
        for spec in self.specs:
            if not isinstance(spec, DeviceSpec):
                raise CatalogError(f"{where}: specs: expected DeviceSpec items, got {type(spec).__name__}")
            if spec.kind in by_kind:
                raise CatalogError(f"{where}: devices.{spec.kind}: kind given twice")
            by_kind[spec.kind] = spec
        entries: list[tuple[str, tuple[str, ...]]] = [(s.kind, s.aliases) for s in self.specs]
        if self.host is not None:
            if self.host.kind in by_kind:
                raise CatalogError(f"{where}: devices.{self.host.kind}: kind given twice")
            entries.append((self.host.kind, self.host.aliases))
        # Kinds claim their own normalised name first, so an alias that equals another kind collides.
        names: dict[str, str] = {kind: kind for kind, _ in entries}
        for kind, aliases in entries:
            for alias in aliases:
                key = normalize_name(alias)
                owner = names.setdefault(key, kind)
                if owner != kind:
                    raise CatalogError(
                        f"{where}: devices.{kind}.aliases: alias {alias!r} (normalised {key!r}) is already "
                        f"{'the kind' if key == owner else 'an alias of'} {owner!r}; an alias may name one kind "
                        f"only, so remove it from {kind!r} or {owner!r}"
                    )
        object.__setattr__(self, "_by_kind", MappingProxyType(by_kind))
        object.__setattr__(self, "_names", MappingProxyType(names))

    def kinds(self) -> tuple[str, ...]:
        """Every kind, sorted, the host kind (``cpu``) included."""
        return tuple(sorted(set(self._names.values())))

    def resolve(self, name: str) -> str:
        """The kind that ``name`` (a kind or an alias, any case, spaces/underscores/dashes) names.

        Raises :class:`UnknownDeviceKindError` listing every kind, with a "did you mean".
        """
        if not isinstance(name, str):
            raise UnknownDeviceKindError(
                f"device name: expected a text, got {type(name).__name__} {name!r}; "
                f"known kinds: {', '.join(self.kinds())}"
            )
        key = normalize_name(name)
        kind = self._names.get(key)
        if kind is None:
            hint = did_you_mean(key, self.kinds()) or did_you_mean(key, self._names)
            raise UnknownDeviceKindError(
                f"unknown device kind {name!r}{hint}; known kinds: {', '.join(self.kinds())}"
            )
        return kind

    def get(self, name: str) -> DeviceSpec:
        """The spec of the kind ``name`` resolves to; the host kind comes from ``host_probe``."""
        kind = self.resolve(name)
        if self.host is not None and kind == self.host.kind:
            if self.host_probe is None:
                raise CatalogError(
                    f"device kind {kind!r} is the local host, measured rather than typed in, and this "
                    "catalog has no host probe; use cluster.probe.probed_catalog()"
                )
            return self.host_probe(self.host)
        return self._by_kind[kind]

    def specs_of(self, *, include_host: bool = False) -> tuple[DeviceSpec, ...]:
        """Every spec sorted by kind; the measured host only with ``include_host=True`` (it probes)."""
        return tuple(self.get(k) for k in self.kinds() if include_host or k in self._by_kind)

    def __iter__(self) -> Iterator[str]:
        return iter(self.kinds())

    def __len__(self) -> int:
        return len(self._by_kind) + (self.host is not None)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._names
