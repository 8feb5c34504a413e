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
from .registry import check_arg_types, check_factory_args, default_args, get_arch, list_archs


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
    check_arg_types(entry.factory, args, f"architecture {arch!r}")
    full = {**default_args(arch), **args}
    try:
        model = entry.factory(**full)
    except MemoryError:
        raise ConfigError(f"the arguments for {arch!r} make a model too large for this machine", "fix --arch-args") from None
    except Exception as e:  # a built-in factory fails only on bad arguments
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"bad arguments for {arch!r}: {first}", "fix --arch-args") from e
    return model, ArchSpec(arch, full, "builtin", entry.kind, entry.version)


def same_factory(given: str, recorded: str) -> bool:
    """True when the command line's ``--arch`` names the factory a file records (same module or file, same name)."""
    if given == recorded:
        return True
    g_target, _, g_attr = given.rpartition(":")
    r_target, _, r_attr = recorded.rpartition(":")
    if g_attr != r_attr or not g_target or not r_target:
        return False
    as_file = lambda t: t.endswith(".py") or "/" in t or "\\" in t  # noqa: E731
    if as_file(g_target) and as_file(r_target):
        try:
            return Path(g_target).expanduser().resolve() == Path(r_target).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            return False
    return False


def build_recorded(record: dict[str, Any], arch: str | None, source: str, state: dict[str, Any] | None = None):
    """Build the architecture a file records, for the one loader (:func:`mbdlprune.io.load_model`).

    A recorded name is only looked up in the built-in registry. A recorded factory
    (``file.py:factory`` or ``pkg.mod:factory``) runs only when the command line's ``arch``
    names the same factory; whatever the file says about its "source" is not trusted.
    Recorded arguments must not build a model beyond :data:`registry.MAX_MODEL_ELEMENTS`.
    """
    from ..errors import CheckpointError

    name = record["name"]
    args = dict(record.get("args") or {})
    if is_factory_spec(name):
        if arch is None:
            raise MbdlError(f"{source} was built by user code {name!r}", f"pass --arch {name} to allow running it")
        if not same_factory(arch, name):
            raise MbdlError(f"--arch {arch!r} is not the code {source} was built by ({name!r})", f"pass --arch {name}")
        return build_arch(arch, args)
    if name not in list_archs():
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise CheckpointError(f"{source} records the architecture {shown!r}, which is not a built-in one",
                              f"built-ins: {', '.join(list_archs())}; for your own code pass --arch file.py:factory to a plain checkpoint")
    if arch is not None and arch != name:
        raise MbdlError(f"{source} records the architecture {name!r}, not {arch!r}", "drop --arch: mbdlprune files know their architecture")
    _check_build_size(name, args, source)
    try:
        return build_arch(name, args)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e.problem}", "the file's architecture record is damaged: export it again") from None


def _check_build_size(name: str, args: dict[str, Any], source: str) -> None:
    """Build on the meta device (no memory) and refuse recorded arguments that make a huge model."""
    import torch

    from ..errors import CheckpointError
    from .registry import MAX_MODEL_ELEMENTS

    entry = get_arch(name)
    try:
        check_factory_args(entry.factory, args, f"architecture {name!r}")
        check_arg_types(entry.factory, args, f"architecture {name!r}")
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e.problem}", "the file's architecture record is damaged: export it again") from None
    try:
        with torch.device("meta"):
            model = entry.factory(**{**default_args(name), **args})
    except Exception as e:  # on the meta device nothing is allocated: a failure means arguments no model can have
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{source} records arguments for {name!r} that build no model ({first[:100]})",
                              "the file's architecture record is damaged: export it again") from None
    total = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    if total > MAX_MODEL_ELEMENTS:
        raise CheckpointError(f"{source} records arguments for {name!r} that make a model of {total:.3g} elements",
                              "the file's architecture record is damaged or hostile: use the original checkpoint")
