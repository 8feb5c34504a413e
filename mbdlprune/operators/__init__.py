"""Measurement operators, built by name from a spec file's ``[operator]`` table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from ..config import check_keys, read_config_file
from ..errors import ConfigError
from ..registry import Registry

#: kind -> builder(spec: dict, base_dir: Path) -> Operator. Builders validate their own keys.
OPERATORS: Registry[Callable[..., Any]] = Registry("operator kind")
register_operator = OPERATORS.register
list_operators = OPERATORS.names

_LOADED = False


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from . import blur, ct, denoise, inpaint, mri, superres  # noqa: F401  (registers)


def get_operator(kind: str) -> Callable[..., Any]:
    _load_builtin()
    return OPERATORS.get(kind)


def operator_table(spec: Mapping[str, Any], where: str = "operator spec") -> dict[str, Any]:
    """Return the ``[operator]`` table of a spec, accepting a bare table too."""
    if "operator" in spec:
        check_keys(spec, ["operator"], where)
        table = spec["operator"]
    else:
        table = spec
    if not isinstance(table, Mapping) or "kind" not in table:
        raise ConfigError(f"{where} has no [operator] table with a 'kind'", 'add [operator] with kind = "mri" (or another kind)')
    return dict(table)


def load_operator(spec: str | Path | Mapping[str, Any], base_dir: str | Path | None = None, *,
                  embedded: Mapping[str, Any] | None = None):
    """Build an operator from a TOML/JSON spec file or a dict (``{"operator": {...}}`` or the table).

    A spec the caller gives reads the array files it names (relative to the spec file's folder,
    or ``base_dir``). A spec recorded in a model file is rebuilt with that file's ``embedded``
    arrays and opens no path at all. The operator keeps the arrays it read in ``op.embedded``
    (spec key -> array), so a model file written with it is self-contained.
    """
    from .files import SpecFiles

    _load_builtin()
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        data = read_config_file(path)
        base = Path(base_dir) if base_dir else path.parent
        where = path.name
    else:
        if not isinstance(spec, Mapping):
            raise ConfigError(f"an operator spec must be a table, got {type(spec).__name__}", 'write [operator] with kind = "mri" (or another kind)')
        data = dict(spec)
        base = Path(base_dir) if base_dir else Path.cwd()
        where = "operator spec"
    table = operator_table(data, where)
    if not isinstance(table["kind"], str):
        raise ConfigError(f"{where}: kind must be a string, got {table['kind']!r}", f"use one of: {', '.join(OPERATORS.names())}")
    builder = OPERATORS.get(table["kind"])
    files = SpecFiles(base, dict(embedded)) if embedded is not None else SpecFiles(base)
    op = builder(table, files)
    op.embedded = dict(files.read)
    op.embedded_sources = dict(files.sources)
    return op


def list_operator_kinds() -> list[str]:
    _load_builtin()
    return OPERATORS.names()
