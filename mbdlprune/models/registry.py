"""String registry of built-in architectures: ``register_arch``, ``create_arch``, ``list_archs``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError
from ..registry import Registry


@dataclass(frozen=True)
class ArchEntry:
    """A registered architecture: its factory, kind (``mbdl`` model or bare ``prior``) and version."""

    name: str
    factory: Callable[..., Any]
    kind: str
    version: int
    summary: str


ARCHS: Registry[ArchEntry] = Registry("architecture")


def register_arch(name: str, *, kind: str = "mbdl", version: int = 1):
    """Decorator: register ``factory(**args) -> nn.Module`` under ``name``."""
    if kind not in ("mbdl", "prior"):
        raise ValueError("kind must be 'mbdl' or 'prior'")

    def deco(factory: Callable[..., Any]):
        doc = (inspect.getdoc(factory) or "").splitlines()
        ARCHS.register(name, ArchEntry(name, factory, kind, version, doc[0] if doc else ""))
        return factory

    return deco


def _load_builtin() -> None:
    from . import builtin  # noqa: F401  (registers everything)


def get_arch(name: str) -> ArchEntry:
    _load_builtin()
    return ARCHS.get(name)


def list_archs(kind: str | None = None) -> list[str]:
    _load_builtin()
    return [n for n in ARCHS.names() if kind is None or ARCHS.get(n).kind == kind]


def create_arch(name: str, **args: Any):
    """Build a registered architecture; an unknown argument is an error naming it."""
    entry = get_arch(name)
    check_factory_args(entry.factory, args, f"architecture {name!r}")
    return entry.factory(**args)


def check_factory_args(factory: Callable[..., Any], args: dict[str, Any], where: str) -> None:
    """Reject keyword arguments the factory does not accept (no silent drops)."""
    sig = inspect.signature(factory)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in args:
        if key not in allowed:
            raise ConfigError(f"unknown argument {key!r} for {where}", f"use one of: {', '.join(allowed) or 'none'}")


#: largest model (parameters + buffers, in elements) built from a file's recorded arguments
MAX_MODEL_ELEMENTS = 2_000_000_000
#: largest integer argument a built-in architecture takes (widths, depths, cascades, iterations)
MAX_INT_ARG = 100_000


def check_arg_types(factory: Callable[..., Any], args: dict[str, Any], where: str) -> None:
    """Each argument must have its default's type (an int where the default is an int, ...) and a sane size."""
    sig = inspect.signature(factory)
    for key, value in args.items():
        p = sig.parameters.get(key)
        default = None if p is None else p.default
        if default is None or default is inspect.Parameter.empty:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            raise ConfigError(f"argument {key} of {where} must be a {type(default).__name__} like its default {default!r}, got {value!r:.40}",
                              f"fix {key}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_ARG:
            raise ConfigError(f"argument {key} = {value} of {where} is beyond any model mbdlprune builds (at most {MAX_INT_ARG:,})",
                              f"fix {key}")


def default_args(name: str) -> dict[str, Any]:
    """The factory's default arguments, recorded in checkpoints so a model can be rebuilt."""
    sig = inspect.signature(get_arch(name).factory)
    return {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
