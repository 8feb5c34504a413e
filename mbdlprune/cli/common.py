"""Shared CLI plumbing: error handling, JSON output, Rich console, option definitions."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import signal
import sys
import threading
from typing import Any, Callable, Iterator

import typer

from ..config import json_safe

# Shared option definitions, so every command spells them the same way.
JsonOpt = typer.Option(False, "--json", help="Print one JSON object instead of tables and progress bars.")
DebugOpt = typer.Option(False, "--debug", help="Show full tracebacks on errors.")
ForceOpt = typer.Option(False, "--force", help="Overwrite an existing output file.")
ArchOpt = typer.Option(None, "--arch", help="Registry name (see `mbdlprune archs`) or file.py:factory / package.module:factory (runs that code).")
ArchArgsOpt = typer.Option(None, "--arch-args", help="Architecture arguments: inline JSON or a JSON/TOML file.")
OperatorOpt = typer.Option(None, "--operator", help="Operator spec file (TOML or JSON) with an [operator] table.")
KeyMapOpt = typer.Option(None, "--key-map", help="Rename a foreign checkpoint's tensors first: a shipped map (e.g. mbdl-pruning) or a TOML file.")
UnsafePickleOpt = typer.Option(False, "--unsafe-pickle", help="Allow checkpoints that unpickle code (only for files you trust).")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (CUDA when available).")


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def print_json(obj: Any) -> None:
    """Write one strict JSON object to stdout: NaN and +-Inf (which JSON cannot hold) become null."""
    sys.stdout.write(json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


#: errno values that mean a condition of the user's files or disk, not a bug
_USER_ERRNOS = {
    errno.EACCES: ("permission denied", "check the permissions, or choose another path"),
    errno.EPERM: ("operation not permitted", "check the permissions, or choose another path"),
    errno.ENOSPC: ("no space left on device", "free disk space, or write to another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota, or write elsewhere"),
    errno.EROFS: ("read-only file system", "write to a writable folder"),
    errno.EISDIR: ("is a folder, not a file", "pass the path of a file"),
    errno.ENOTDIR: ("a part of the path is not a folder", "check the path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path"),
    errno.ELOOP: ("too many levels of symbolic links", "check the links in the path"),
    errno.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n) or use fewer workers"),
}


def os_error_line(e: OSError) -> str | None:
    """One line ``problem — fix`` for an OSError that is a user condition (else None)."""
    if e.errno not in _USER_ERRNOS:
        return None
    problem, fix = _USER_ERRNOS[e.errno]
    paths = [str(p) for p in (e.filename, getattr(e, "filename2", None)) if p not in (None, "")]
    where = f": {' -> '.join(paths)}" if paths else ""
    return f"{problem}{where} — {fix}"


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so ``finally`` blocks and cleanup handlers run."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


@contextlib.contextmanager
def signal_handlers() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` (exit 128 + 15 = 143).

    Only a default handler is replaced (an ignored SIGTERM stays ignored), only in the main
    thread, and the previous handler is restored afterwards.
    """
    installed = None
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                installed = signal.signal(signal.SIGTERM, _raise_terminated)
        except (ValueError, OSError):  # pragma: no cover - no signals here (embedded interpreters)
            installed = None
    try:
        yield
    finally:
        if installed is not None:
            signal.signal(signal.SIGTERM, installed)


def install_signal_handlers() -> None:
    """Make SIGTERM raise :class:`Terminated` for the rest of the process (for scripts without handle_errors)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


def handle_errors(fn: Callable) -> Callable:
    """Turn user errors into one line on stderr and exit 2 (full traceback with --debug).

    User errors are :class:`MbdlError` and OSErrors that are conditions of the user's files or
    disk (permission denied, no space left, a folder where a file is wanted, a missing path).
    SIGTERM and Ctrl-C stop the command with one line (exit 143 / 130) after cleanup ran.
    Anything else is a bug: one line with the exception type (exit 1).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = bool(kwargs.get("debug"))
        from ..errors import MbdlError

        try:
            with signal_handlers():
                return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except MbdlError as e:
            if debug:
                raise
            sys.stderr.write(f"error: {_one_line(str(e))}\n")
            raise typer.Exit(2) from None
        except Terminated as e:
            sys.stderr.write(f"error: terminated by signal {e.signum} (SIGTERM) — run the command again to finish it\n")
            raise typer.Exit(128 + e.signum) from None
        except KeyboardInterrupt:
            sys.stderr.write("error: interrupted\n")
            raise typer.Exit(130) from None
        except Exception as e:
            if debug:
                raise
            line = os_error_line(e) if isinstance(e, OSError) else None
            if line is not None:  # the user's files or disk, not a bug
                sys.stderr.write(f"error: {line}\n")
                raise typer.Exit(2) from None
            # unexpected: still one line
            first = str(e).splitlines()[0] if str(e).strip() else ""
            sys.stderr.write(f"error: {type(e).__name__}: {first} — run again with --debug for the traceback\n")
            raise typer.Exit(1) from None

    return wrapper


def _one_line(text: str) -> str:
    return " ".join(text.split()) if "\n" in text or "\r" in text else text


def resolve_device(device: str) -> str:
    """Map ``auto`` to CUDA when available; refuse CUDA where there is none."""
    import torch

    from ..errors import MbdlError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MbdlError(f"--device {device} asked for CUDA, but no CUDA device is available", "use --device cpu or --device auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise MbdlError(f"unknown --device {device!r}", "use cpu, cuda, cuda:N or auto")
    return device
