"""Reading a device catalog file: strict YAML (no duplicate keys), every field validated with an
error naming the file and the field (:class:`~cluster.exceptions.CatalogError`), into a
:class:`~cluster.catalog_specs.Catalog`. Loading never measures the host.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
from pathlib import Path

import yaml

from solvers.validate import is_real
from cluster.catalog_specs import (
    _DATE_RE,
    _FIGURE_RULES,
    _HOST_FIGURES,
    _KIND_RE,
    _OPTIONAL_FIGURES,
    _SPEC_FIGURES,
    BASES,
    CATEGORIES,
    HOST_KIND,
    Catalog,
    DeviceSpec,
    Figure,
    HostTemplate,
)
from cluster.exceptions import CatalogError, InputError, did_you_mean

#: The packaged catalog file.
DEFAULT_CATALOG_PATH = Path(__file__).with_name("devices.yaml")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (plain YAML keeps the last one silently)."""


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise _DuplicateKey(key, key_node.start_mark.line + 1)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Load and validate a catalog file; ``None`` means the packaged ``devices.yaml`` (cached).

    Any problem raises :class:`CatalogError` naming the file and the field, e.g.
    ``devices.yaml: devices.rtx4090.mem_bw_gbs.value: expected a positive number, got 'fast'``.
    Loading never measures the host.
    """
    if path is None or Path(path).resolve() == DEFAULT_CATALOG_PATH.resolve():
        return default_catalog()
    return _load(Path(path))


@functools.lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The packaged catalog, loaded once per process."""
    return _load(DEFAULT_CATALOG_PATH)


def _load(path: Path) -> Catalog:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{where}: cannot read the catalog: {exc.strerror or exc}") from exc
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise CatalogError(f"{where}: line {exc.line}: key {exc.key!r} given twice") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"{where}: not valid YAML: {exc}") from exc
    return _parse_catalog(doc, where)


def _parse_catalog(doc: object, where: str) -> Catalog:
    if not isinstance(doc, dict):
        raise CatalogError(f"{where}: expected a mapping with 'version' and 'devices', got {type(doc).__name__}")
    _no_unknown(where, "", doc, ("version", "devices"))
    for key in ("version", "devices"):
        if key not in doc:
            raise CatalogError(f"{where}: {key}: missing (required: version, devices)")
    version = doc["version"]
    if isinstance(version, _dt.date):
        version = version.isoformat()
    if not isinstance(version, str) or not version.strip():
        raise CatalogError(f"{where}: version: expected a text such as '2026-11-28', got {version!r}")
    devices = doc["devices"]
    if not isinstance(devices, dict) or not devices:
        raise CatalogError(
            f"{where}: devices: expected a non-empty mapping kind -> entry, got {type(devices).__name__}"
        )
    specs: list[DeviceSpec] = []
    host: HostTemplate | None = None
    for kind, entry in devices.items():
        item = _parse_entry(where, kind, entry)
        if isinstance(item, HostTemplate):
            host = item
        else:
            specs.append(item)
    return Catalog(version=version, specs=tuple(specs), host=host, path=where)


def _parse_entry(where: str, kind: object, entry: object) -> DeviceSpec | HostTemplate:
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise CatalogError(
            f"{where}: devices.{kind}: a kind is lowercase letters, digits and single dashes "
            f"(e.g. 'a100-80g-sxm'), got {kind!r}"
        )
    p = f"devices.{kind}"
    if not isinstance(entry, dict):
        raise CatalogError(
            f"{where}: {p}: expected a mapping of name, category, aliases and figures, got {type(entry).__name__}"
        )
    for key in ("name", "category"):
        if key not in entry:
            raise CatalogError(f"{where}: {p}.{key}: missing (required)")
    name, category = entry["name"], entry["category"]
    if not isinstance(name, str) or not name.strip():
        raise CatalogError(f"{where}: {p}.name: expected a non-empty text, got {name!r}")
    if category not in CATEGORIES:
        raise CatalogError(
            f"{where}: {p}.category: {category!r} is not allowed; allowed: {', '.join(CATEGORIES)}"
            f"{did_you_mean(str(category), CATEGORIES)}"
        )
    if (category == "host") != (kind == HOST_KIND):
        raise CatalogError(
            f"{where}: {p}.category: the category 'host' belongs to the measured {HOST_KIND!r} kind "
            f"and only to it, got {category!r} for {kind!r}"
        )
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, (str, int)) and str(a).strip() for a in aliases):
        raise CatalogError(f"{where}: {p}.aliases: expected a list of texts, got {aliases!r}")
    aliases_t = tuple(str(a) for a in aliases)  # an unquoted 4090 is still a name
    wanted = _HOST_FIGURES if category == "host" else _SPEC_FIGURES
    allowed = ("name", "category", "aliases", *wanted, *(() if category == "host" else _OPTIONAL_FIGURES))
    _no_unknown(where, p, entry, allowed, host=category == "host")
    figures: list[tuple[str, Figure]] = []
    for fname in (*wanted, *_OPTIONAL_FIGURES):
        if fname not in entry:
            if fname in wanted:
                raise CatalogError(f"{where}: {p}.{fname}: missing (required figures: {', '.join(wanted)})")
            continue
        figures.append((fname, _parse_figure(where, f"{p}.{fname}", fname, entry[fname])))
    try:
        if category == "host":
            return HostTemplate(kind=kind, name=name, aliases=aliases_t, figures=tuple(figures))
        values = {n: f.value for n, f in figures if n in _SPEC_FIGURES}
        return DeviceSpec(kind=kind, name=name, category=category, aliases=aliases_t, figures=tuple(figures), **values)
    except InputError as exc:
        raise CatalogError(f"{where}: {p}: {exc}") from exc


def _no_unknown(where: str, p: str, mapping: dict, allowed: tuple[str, ...], *, host: bool = False) -> None:
    for key in mapping:
        if key not in allowed:
            at = f"{p}.{key}" if p else str(key)
            why = ""
            if host and key in _FIGURE_RULES:
                why = " (the host's compute, memory and links are measured at start-up, not typed in)"
            raise CatalogError(
                f"{where}: {at}: unknown field{why}; allowed: {', '.join(allowed)}{did_you_mean(str(key), allowed)}"
            )


def _parse_figure(where: str, p: str, fname: str, raw: object) -> Figure:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: {p}: expected a mapping {{value, source, date, basis}}, got {raw!r}")
    keys = ("value", "source", "date", "basis")
    _no_unknown(where, p, raw, keys)
    for key in keys:
        if key not in raw:
            raise CatalogError(f"{where}: {p}.{key}: missing (a figure needs value, source, date, basis)")
    kind, nullable, rule = _FIGURE_RULES[fname]
    value = raw["value"]
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise CatalogError(f"{where}: {p}.value: expected a non-empty text, got {value!r}")
    elif not (value is None and nullable):
        if not is_real(value) or not (value > 0 if rule == "positive" else value >= 0):
            expected = f"a {rule} number" + (" or null" if nullable else "")
            raise CatalogError(f"{where}: {p}.value: expected {expected}, got {value!r}")
        value = float(value)
    source, date, basis = raw["source"], raw["date"], raw["basis"]
    if isinstance(date, _dt.date):  # an unquoted 2026-11-28 reaches us as a date
        date = date.isoformat()
    if not isinstance(source, str) or not source.strip():
        raise CatalogError(f"{where}: {p}.source: expected a non-empty text naming the source, got {source!r}")
    if not isinstance(date, str) or not _DATE_RE.fullmatch(date):
        raise CatalogError(f"{where}: {p}.date: expected 'YYYY-MM' or 'YYYY-MM-DD', got {date!r}")
    if basis not in BASES:
        raise CatalogError(
            f"{where}: {p}.basis: {basis!r} is not allowed; allowed: {', '.join(BASES)}"
            f"{did_you_mean(str(basis), BASES)}"
        )
    return Figure(value=value, source=source, date=date, basis=basis)
