"""Shared CLI plumbing: error handling, JSON output, Rich console, option definitions."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import typer

# Shared option definitions, so every command spells them the same way.
JsonOpt = typer.Option(False, "--json", help="Print one JSON object instead of tables and progress bars.")
DebugOpt = typer.Option(False, "--debug", help="Show full tracebacks on errors.")
ForceOpt = typer.Option(False, "--force", help="Overwrite an existing output file.")
ArchOpt = typer.Option(None, "--arch", help="Registry name (see `mbdlprune archs`) or file.py:factory / package.module:factory (runs that code).")
ArchArgsOpt = typer.Option(None, "--arch-args", help="Architecture arguments: inline JSON or a JSON/TOML file.")
OperatorOpt = typer.Option(None, "--operator", help="Operator spec file (TOML or JSON) with an [operator] table.")
UnsafePickleOpt = typer.Option(False, "--unsafe-pickle", help="Allow checkpoints that unpickle code (only for files you trust).")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (CUDA when available).")


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def print_json(obj: Any) -> None:
    """Write one JSON object to stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o: Any):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "__fspath__"):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def handle_errors(fn: Callable) -> Callable:
    """Turn user errors into one line on stderr and exit 2 (full traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = bool(kwargs.get("debug"))
        from .errors import MbdlError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except MbdlError as e:
            if debug:
                raise
            sys.stderr.write(f"error: {e}\n")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            sys.stderr.write("error: interrupted\n")
            raise typer.Exit(130) from None
        except Exception as e:  # unexpected: still one line unless --debug
            if debug:
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            sys.stderr.write(f"error: {type(e).__name__}: {first} — run again with --debug for the traceback\n")
            raise typer.Exit(1) from None

    return wrapper


def resolve_device(device: str) -> str:
    """Map ``auto`` to CUDA when available; refuse CUDA where there is none."""
    import torch

    from .errors import MbdlError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MbdlError(f"--device {device} asked for CUDA, but no CUDA device is available", "use --device cpu or --device auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise MbdlError(f"unknown --device {device!r}", "use cpu, cuda, cuda:N or auto")
    return device
