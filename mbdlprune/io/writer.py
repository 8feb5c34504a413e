"""The one writer: every file any command writes goes through :func:`write_file`.

A temp file in the target folder, flushed and fsynced, then moved into place without
replacing an existing file unless the caller passed ``force`` (a hard link, which fails if
the name exists): of two writers racing for one new path exactly one wins. Output paths,
folders and permissions are checked before any long work starts.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..config import json_safe
from ..errors import MbdlError
from ..errors import first_line as _first_line

def check_output_path(path: str | Path, force: bool, suffix: str | None = ".safetensors",
                      inputs: Iterable[Any] = ()) -> Path:
    """Check an output path before any long work: suffix, existence (--force), folder, writability, inputs.

    ``inputs`` may hold anything a command was given (an operator object, None): only paths count.
    """
    p = Path(path)
    if suffix and p.suffix != suffix:
        raise MbdlError(f"output {str(p)!r} must end in {suffix}", f"name the output e.g. {p.with_suffix(suffix).name}")
    for src in inputs:
        if isinstance(src, (str, Path)) and _same_file(p, Path(src)):
            raise MbdlError(f"output {str(p)!r} is also an input", "write the output to a new path")
    if p.is_dir():
        raise MbdlError(f"output {str(p)!r} is a folder", "give a file path")
    if (p.exists() or p.is_symlink()) and not force:
        raise MbdlError(f"output {str(p)!r} already exists", "pass --force to overwrite it, or choose another path")
    check_writable_dir(p.parent if str(p.parent) else Path("."))
    return p


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_writable_dir(folder: str | Path) -> Path:
    """Refuse a missing or unwritable folder by creating (and removing) a probe file in it."""
    d = Path(folder)
    if not d.is_dir():
        raise MbdlError(f"output folder {str(d)!r} does not exist", "create it first, or choose another path")
    try:
        with tempfile.TemporaryFile(dir=str(d)):
            pass
    except OSError as e:
        raise MbdlError(f"cannot write to folder {str(d)!r} ({e.strerror or e})", "choose a folder you can write to") from None
    return d


def prepare_output_dir(folder: str | Path, names: Iterable[str], force: bool, create: bool = True) -> Path:
    """Check an output folder before any work: refuse it if any of ``names`` exists there without --force.

    With ``create`` the folder (and missing parents) is made now; without, only its nearest
    existing ancestor is checked for write permission, so a run that fails early leaves nothing
    behind: call :func:`make_output_dir` right before the first write.
    """
    d = Path(folder)
    if d.exists() and not d.is_dir():
        raise MbdlError(f"output folder {str(d)!r} is a file", "choose a folder path")
    if d.exists():
        check_writable_dir(d)
        if not force:
            present = sorted(n for n in names if (d / n).exists() or (d / n).is_symlink())
            if present:
                more = f" (+{len(present) - 3} more)" if len(present) > 3 else ""
                raise MbdlError(f"{str(d)!r} already holds {', '.join(present[:3])}{more}",
                                "pass --force to overwrite, or choose another output folder")
    else:
        ancestor = d.parent if str(d.parent) else Path(".")
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise MbdlError(f"output folder {str(d)!r} lies under {str(ancestor)!r}, which is a file", "choose a folder path")
        check_writable_dir(ancestor)
    return make_output_dir(d) if create else d


@contextmanager
def rollback_on_error(folder: str | Path, names: Iterable[str]) -> Iterator[None]:
    """A multi-step command leaves nothing behind when it fails: on any error (Ctrl-C and SIGTERM
    included) the files among ``names`` that it created in ``folder`` are removed, and so is the
    folder if the command created it and it is empty again. Files that existed before stay."""
    d = Path(folder)
    existed = d.exists()
    before = {n for n in names if os.path.lexists(d / n)} if existed else set()
    try:
        yield
    except BaseException:
        for n in names:
            if n not in before and os.path.lexists(d / n):
                try:
                    os.unlink(d / n)
                except OSError:
                    pass
        if not existed:
            try:
                d.rmdir()
            except OSError:
                pass
        raise


def make_output_dir(folder: str | Path) -> Path:
    """Create an output folder (and missing parents) checked by :func:`prepare_output_dir`."""
    d = Path(folder)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MbdlError(f"cannot create output folder {str(d)!r} ({e.strerror or e})", "create it first, or choose another folder") from None
    return d


def write_file(path: str | Path, write: Callable[[str], Any], *, force: bool = False) -> Path:
    """Write a file safely: ``write(tmp)`` fills a temp file beside ``path``, which then takes its place.

    The temp file is fsynced before the move; without ``force`` the move never replaces an
    existing file (a hard link, which fails if the name exists), so of two racing writers
    exactly one wins and the other gets the usual "already exists" error. The temp file is
    removed on any error, Ctrl-C or SIGTERM (the CLI turns SIGTERM into an exception).
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise MbdlError(f"output {str(p)!r} is a folder", "give a file path")
    if not force and (p.exists() or p.is_symlink()):
        raise MbdlError(f"output {str(p)!r} already exists", "pass --force to overwrite it, or choose another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(folder))
    except FileNotFoundError:
        raise MbdlError(f"output folder {str(folder)!r} does not exist", "create it first, or choose another path") from None
    except OSError as e:
        raise MbdlError(f"cannot write to folder {str(folder)!r} ({e.strerror or e})", "choose a folder you can write to") from None
    os.close(fd)
    try:
        try:
            write(tmp)
        except (MbdlError, OSError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # a serialiser wrapping an I/O error (safetensors: "No space left on device")
            if type(e).__name__ != "SafetensorError" and "os error" not in str(e):
                raise
            raise MbdlError(f"writing {str(p)!r} failed ({_first_line(e, 120)})", "check free disk space and permissions") from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, p)
        else:
            _move_no_replace(tmp, p)
        _fsync_dir(folder)
    except OSError as e:
        if isinstance(e, FileExistsError):
            raise MbdlError(f"output {str(p)!r} already exists", "pass --force to overwrite it, or choose another path") from None
        raise MbdlError(f"writing {str(p)!r} failed ({e.strerror or e})", "check free disk space and permissions") from None
    finally:
        if os.path.lexists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return p


def _move_no_replace(tmp: str, dst: Path) -> None:
    """Move ``tmp`` to ``dst`` atomically, failing with FileExistsError if ``dst`` exists."""
    try:
        os.link(tmp, dst)  # atomic, and fails if dst exists
    except FileExistsError:
        raise
    except OSError:
        # file systems without hard links: claim the name exclusively, then replace the claim
        fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        os.close(fd)
        os.replace(tmp, dst)
        return
    os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)



def write_text(path: str | Path, text: str, *, force: bool = False) -> Path:
    """Write a text file through :func:`write_file`."""
    return write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), force=force)


def write_json(path: str | Path, obj: Any, *, force: bool = False) -> Path:
    """Write strict JSON (no NaN/Infinity) through :func:`write_file`."""
    return write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False, default=str) + "\n", force=force)


def user_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/mbdlprune/NAME`` (``~/.cache/mbdlprune/NAME`` without XDG_CACHE_HOME): where
    measured or computed results are kept between runs (read back as untrusted input)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mbdlprune" / name
