"""Resolve ``--arch``: a registry name, ``path/to/file.py:factory`` or ``package.module:factory``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, MbdlError
from .registry import check_factory_args, default_args, get_arch, list_archs


@dataclass
class ArchSpec:
    """What a checkpoint records about its architecture, enough to rebuild it."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    source: str = "builtin"  # "builtin" or "factory"
    kind: str = "mbdl"  # "mbdl" (forward(y, op)) or "prior" (forward(x))
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args, "source": self.source, "kind": self.kind, "version": self.version}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArchSpec":
        return cls(d["name"], dict(d.get("args") or {}), d.get("source", "builtin"), d.get("kind", "mbdl"), int(d.get("version", 1)))


def is_factory_spec(arch: str) -> bool:
    """True for ``file.py:factory`` / ``pkg.mod:factory`` forms (code the user chose to run)."""
    return ":" in arch


def load_factory(spec: str) -> Callable[..., Any]:
    """Import the factory named by ``file.py:name`` or ``package.module:name``."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ConfigError(f"--arch {spec!r} is not of the form file.py:factory", "write e.g. --arch my_model.py:build")
    try:
        if target.endswith(".py") or "/" in target or "\\" in target:
            path = Path(target).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"factory file {target!r} does not exist", "check the path given to --arch")
            digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
            mod_name = f"mbdlprune_user_{path.stem}_{digest}"
            mspec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(mspec)
            sys.modules[mod_name] = module
            sys.path.insert(0, str(path.parent))
            try:
                mspec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            module = importlib.import_module(target)
    except MbdlError:
        raise
    except Exception as e:  # the user's file may raise anything; report it in one line
        raise MbdlError(f"importing {target!r} failed: {type(e).__name__}: {e}", "fix the factory file (run with --debug for the traceback)") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{target!r} has no callable {attr!r}", "name a function that returns an nn.Module")
    return factory


def build_arch(arch: str, args: dict[str, Any] | None = None):
    """Build the model named by ``arch`` with ``args``; returns ``(module, ArchSpec)``."""
    from torch import nn

    args = dict(args or {})
    if is_factory_spec(arch):
        factory = load_factory(arch)
        check_factory_args(factory, args, f"factory {arch!r}")
        try:
            model = factory(**args)
        except Exception as e:
            raise MbdlError(f"factory {arch!r} raised {type(e).__name__}: {e}", "fix the factory or --arch-args (--debug shows the traceback)") from e
        if not isinstance(model, nn.Module):
            raise MbdlError(f"factory {arch!r} returned {type(model).__name__}, not an nn.Module", "return the model instance from the factory")
        return model, ArchSpec(arch, args, "factory", "mbdl", 1)
    if arch not in list_archs():
        raise ConfigError(f"unknown architecture {arch!r}", f"use one of: {', '.join(list_archs())}, or file.py:factory")
    entry = get_arch(arch)
    check_factory_args(entry.factory, args, f"architecture {arch!r}")
    full = {**default_args(arch), **args}
    try:
        model = entry.factory(**full)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad arguments for {arch!r}: {e}", "fix --arch-args") from e
    return model, ArchSpec(arch, full, "builtin", entry.kind, entry.version)
