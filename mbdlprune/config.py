"""Strict config helpers: read TOML/JSON, reject unknown keys, check types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ConfigError


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON file into a dict; errors name the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"spec file {str(p)!r} does not exist", "check the path")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            return json.loads(text)
        import tomllib

        return tomllib.loads(text)
    except (ValueError, json.JSONDecodeError) as e:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise ConfigError(f"{p.name} is not valid {kind}: {e}", f"fix the syntax of {p}") from None


def parse_json_or_file(text: str | None) -> dict[str, Any]:
    """Parse ``--arch-args``: inline JSON, or a path to a JSON/TOML file."""
    if not text:
        return {}
    t = text.strip()
    if t.startswith("{"):
        try:
            out = json.loads(t)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--arch-args is not valid JSON: {e}", 'write e.g. \'{"chans": 18}\'') from None
    else:
        out = read_config_file(t)
    if not isinstance(out, dict):
        raise ConfigError("--arch-args must be a JSON object", 'write e.g. \'{"chans": 18}\'')
    return out


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
    """Check the type of one config value (bool is not accepted as a number)."""
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{where}: {key} must be {names}, got {value!r}", f"fix {key} in {where}")
    return value
