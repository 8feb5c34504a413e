"""Strict config helpers: read TOML/JSON, reject unknown keys, check types and finite numbers."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ConfigError
from .errors import first_line as _first_line


def _reject_constant(name: str):
    """``json`` accepts NaN, Infinity and -Infinity, which are not JSON: refuse them."""
    raise ValueError(f"{name} is not a JSON number")


def _loads_json(text: str):
    return json.loads(text, parse_constant=_reject_constant)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON file into a dict; errors name the file and the fix.

    Refused in one line: a missing path, a folder, an unreadable or binary (not UTF-8) file,
    an empty file, invalid syntax, JSON's non-standard NaN/Infinity, and a top level that is
    not a table/object.
    """
    p = Path(path)
    kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
    if p.is_dir():
        raise ConfigError(f"spec file {str(p)!r} is a folder", "pass the path of a TOML or JSON file")
    if not p.exists():
        raise ConfigError(f"spec file {str(p)!r} does not exist", "check the path")
    try:
        raw = p.read_bytes()
    except OSError as e:
        reason = "permission denied" if isinstance(e, PermissionError) else (e.strerror or _first_line(e))
        raise ConfigError(f"cannot read spec file {str(p)!r}: {reason}", "check the path and the file's permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"spec file {p.name} is not a text file (not UTF-8)", f"pass a {kind} text file") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise ConfigError(f"spec file {p.name} is empty", f"write the {kind} settings into {p}")
    try:
        out = _loads_json(text) if kind == "JSON" else _loads_toml(text)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{p.name} is not valid {kind}: {_first_line(e)}", f"fix the syntax of {p}") from None
    if not isinstance(out, dict):
        raise ConfigError(f"{p.name} holds a JSON {type(out).__name__}, not an object", 'write a JSON object, e.g. {"operator": {...}}')
    return out


def _loads_toml(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def parse_json_or_file(text: str | None, option: str = "--arch-args", example: str = '{"chans": 18}') -> dict[str, Any]:
    """Parse an option such as ``--arch-args``: inline JSON, or a path to a JSON/TOML file.

    Strict: JSON's non-standard NaN/Infinity are refused, and so are non-finite numbers
    anywhere in the result (TOML's ``nan``/``inf``), nested tables and lists included.
    """
    if not text:
        return {}
    t = text.strip()
    if t.startswith("{"):
        try:
            out = _loads_json(t)
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"{option} is not valid JSON: {_first_line(e)}", f"write e.g. '{example}'") from None
    else:
        out = read_config_file(t)
    if not isinstance(out, dict):
        raise ConfigError(f"{option} must be a JSON object", f"write e.g. '{example}'")
    check_finite(out, option)
    return out


def check_finite(obj: Any, where: str, key: str | None = None) -> Any:
    """Refuse NaN/Inf floats anywhere in ``obj`` (dicts and lists searched); returns ``obj``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        name = f"{key} in {where}" if key else where
        raise ConfigError(f"{name} must be a finite number, got {obj!r}", f"fix {key or 'the value'} in {where}")
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            check_finite(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, where, f"{key}[{i}]" if key else f"[{i}]")
    return obj


def check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str, required: Iterable[str] = ()) -> None:
    """Raise ConfigError for the first unknown or missing key of ``table``."""
    allowed = set(allowed)
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {key!r} in {where}",
                f"remove it or use one of: {', '.join(sorted(allowed))}",
            )
    for key in required:
        if key not in table:
            raise ConfigError(f"missing key {key!r} in {where}", f"add {key} = ... to {where}")


def expect(value: Any, types: type | tuple[type, ...], key: str, where: str) -> Any:
    """Check the type of one config value (bool is not accepted as a number).

    When ``float`` is among ``types``, a float value must be finite: NaN and +-Inf (which TOML
    spells ``nan`` and ``inf``) are refused with "must be a finite number".
    """
    tup = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in tup:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{where}: {key} must be {names}, got {value!r}", f"fix {key} in {where}")
    if float in tup and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}", f"fix {key} in {where}")
    return value


def expect_number(value: Any, key: str, where: str, *, integer: bool = False, minimum: float | None = None,
                  maximum: float | None = None, min_inclusive: bool = True, max_inclusive: bool = True) -> float | int:
    """A finite number (an int with ``integer``) within optional bounds; bool is not a number."""
    expect(value, int if integer else (int, float), key, where)
    lo_bad = minimum is not None and (value < minimum if min_inclusive else value <= minimum)
    hi_bad = maximum is not None and (value > maximum if max_inclusive else value >= maximum)
    if lo_bad or hi_bad:
        lo = "" if minimum is None else f"{'>=' if min_inclusive else '>'} {minimum}"
        hi = "" if maximum is None else f"{'<=' if max_inclusive else '<'} {maximum}"
        rule = " and ".join(r for r in (lo, hi) if r)
        raise ConfigError(f"{where}: {key} must be {rule}, got {value!r}", f"fix {key} in {where}")
    return value


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON holds: non-finite floats become None, arrays, tensors and
    sets lists, paths strings; keys JSON cannot hold become strings. Other objects pass through."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int)):  # bool is an int
        return obj
    if isinstance(obj, Mapping):
        return {_json_key(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors (0-d ones become numbers)
        return json_safe(obj.tolist())
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return obj


def _json_key(k: Any) -> Any:
    if isinstance(k, float) and not math.isfinite(k):
        return str(k)
    return k if k is None or isinstance(k, (str, int, float)) else str(k)


class StepConfig:
    """What the step configs (dataclasses with a ``validate`` method) share: a strict
    :meth:`from_dict`, :meth:`to_dict`, :meth:`replace` and the ``auto`` metric rule."""

    #: how a file's section of these settings is named in messages
    WHERE = "settings"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str | None = None):
        """Build from a mapping: unknown keys refused naming ``where``, then validated."""
        where = where or cls.WHERE
        check_keys(d, [f.name for f in dataclasses.fields(cls)], where)
        cfg = cls(**dict(d))
        cfg.validate_file(where)
        return cfg

    def validate_file(self, where: str) -> None:
        """Validate settings read from a file's ``where`` section (default: as :meth:`validate`)."""
        self.validate()

    def replace(self, **changes: Any):
        """A validated copy with ``changes``."""
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def metric_for(self, raw: bool) -> str:
        """The metric definition's name (:func:`mbdlprune.metric_definitions.resolve_metric`)."""
        from .metric_definitions import resolve_metric

        return resolve_metric(self.metric, raw)
