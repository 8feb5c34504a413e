"""Checkpoint I/O: read any common checkpoint safely, write safetensors + JSON metadata atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import CheckpointError, MbdlError

FORMAT_NAME = "mbdlprune"
FORMAT_VERSION = 1
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "ema", "ema_state_dict", "state_dict_ema", "net", "network", "params", "weights")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin")
#: safetensors keys of operator data (masks, coil maps, kernels) embedded in a model file
EMBED_PREFIX = "@operator/"
#: model attributes a model file may set, and their types: plain values only, never code
MODEL_ATTRS: dict[str, type] = {"prune_sensitivity": bool}
#: largest model (parameters + buffers, in elements) built from a file's recorded arguments
MAX_MODEL_ELEMENTS = 2_000_000_000


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint."""
    import torch
    import torch_pruning

    from . import __version__

    return {"mbdlprune": __version__, "torch": torch.__version__, "torch_pruning": getattr(torch_pruning, "__version__", "?")}


# -- reading ------------------------------------------------------------------------------
def read_checkpoint(path: str | Path, unsafe_pickle: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Return ``(state_dict, mbdlprune_metadata_or_None)`` from .safetensors or a torch file."""
    ck = read_model_file(path, unsafe_pickle)
    return ck.state, ck.meta


@dataclass
class CheckpointFile:
    """What one checkpoint file holds: model tensors, mbdlprune metadata (checked) and embedded operator data."""

    path: Path
    state: dict[str, Any]
    meta: dict[str, Any] | None
    embedded: dict[str, Any]


def read_model_file(path: str | Path, unsafe_pickle: bool = False) -> CheckpointFile:
    """Read any supported checkpoint without running code; mbdlprune metadata is checked for shape and types."""
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is a folder", "give the checkpoint file inside it")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist", "check the path")
    if p.suffix == ".safetensors":
        state, meta = _read_safetensors(p)
    elif p.suffix in TORCH_SUFFIXES:
        state, meta = find_weights(_torch_load(p, unsafe_pickle), str(p)), None
    else:
        raise CheckpointError(f"unsupported checkpoint type {p.suffix!r}", f"use .safetensors or one of {', '.join(TORCH_SUFFIXES)}")
    embedded = {k[len(EMBED_PREFIX):]: v for k, v in state.items() if k.startswith(EMBED_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith(EMBED_PREFIX)}
    if meta is not None:
        check_meta(meta, p.name)
    elif embedded:
        raise CheckpointError(f"{p.name} holds operator data but no mbdlprune metadata", "the file is damaged: export it again")
    if not state:
        raise CheckpointError(f"{p.name} holds no weights", "check that this is the model's checkpoint")
    return CheckpointFile(p, state, meta, embedded)


def is_mbdlprune_file(path: str | Path) -> bool:
    """True when ``path`` is a safetensors file written by mbdlprune (reads the header only)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT_NAME
    except (SafetensorError, OSError, ValueError):
        return False


def _read_safetensors(p: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p.name} is not a readable safetensors file ({e})", "the file is truncated or corrupt: copy or export it again") from None
    meta = None
    if header.get("format") == FORMAT_NAME:
        try:
            meta = json.loads(header[FORMAT_NAME], parse_constant=_reject_constant)
        except (KeyError, ValueError, RecursionError):
            raise CheckpointError(f"{p.name} has damaged mbdlprune metadata", "write the model again with mbdlprune") from None
    return state, meta


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name} in metadata")


def _is_json_plain(v: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        import math

        return math.isfinite(v)
    if isinstance(v, list):
        return all(_is_json_plain(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_json_plain(x, depth + 1) for k, x in v.items())
    return False


def check_meta(meta: Any, name: str) -> None:
    """Refuse mbdlprune metadata whose shape or types are not what mbdlprune writes."""

    def bad(what: str):
        return CheckpointError(f"{name} has damaged mbdlprune metadata ({what})", "write the model again with mbdlprune")

    if not isinstance(meta, dict):
        raise bad("not a JSON object")
    version = meta.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise bad("format_version is not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{name} uses format version {version}, newer than this mbdlprune", "upgrade mbdlprune")
    arch = meta.get("arch")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not arch["name"]:
        raise bad("no architecture name")
    if not isinstance(arch.get("args", {}), dict) or not _is_json_plain(arch.get("args", {})):
        raise bad("architecture arguments are not plain values")
    if arch.get("kind", "mbdl") not in ("mbdl", "prior"):
        raise bad("unknown architecture kind")
    if isinstance(arch.get("version", 1), bool) or not isinstance(arch.get("version", 1), int):
        raise bad("architecture version is not an integer")
    for key in ("operator", "pruning", "finetune", "model_attrs", "norm_widths", "key_map"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(f"{key} is not an object")
    for key in ("parent", "parent_sha256", "created"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(f"{key} is not a string")
    if not _is_json_plain(meta):
        raise bad("values that are not plain JSON")
    pruning = meta.get("pruning") or {}
    priors = pruning.get("priors", {})
    if not isinstance(priors, dict) or not all(isinstance(v, dict) for v in priors.values()):
        raise bad("pruning.priors is not a table of priors")
    for key, value in (meta.get("model_attrs") or {}).items():
        if key not in MODEL_ATTRS:
            raise CheckpointError(f"{name} asks to set the model attribute {key!r}, which mbdlprune never restores from a file",
                                  f"remove it, or re-save the model with mbdlprune (allowed: {', '.join(MODEL_ATTRS)})")
        if not isinstance(value, MODEL_ATTRS[key]):
            raise bad(f"model attribute {key} is not a {MODEL_ATTRS[key].__name__}")
    for key, value in (meta.get("norm_widths") or {}).items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1 << 20:
            raise bad(f"norm width of {key} is not a positive integer")


def _first_line(e: BaseException, n: int = 120) -> str:
    lines = str(e).splitlines()
    return (lines[0] if lines else type(e).__name__)[:n]


def _torch_load(p: Path, unsafe_pickle: bool):
    import pickle  # noqa: F401  (only for the exception type below)

    import torch

    if p.stat().st_size == 0:
        raise CheckpointError(f"{p.name} is empty (0 bytes)", "the file is truncated: copy or export it again")
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not unsafe_pickle:
            raise CheckpointError(
                f"{p.name} needs to unpickle code to load ({_first_line(e)})",
                "re-save it as a plain state_dict, or pass --unsafe-pickle if you trust its source",
            ) from None
    except Exception as e:  # weights_only loading runs no code; anything it raises means a damaged file
        raise CheckpointError(f"{p.name} is not a readable torch checkpoint ({_first_line(e)})", "the file is truncated or corrupt: copy or export it again") from None
    try:
        return torch.load(str(p), map_location="cpu", weights_only=False)  # explicit --unsafe-pickle
    except Exception as e:
        raise CheckpointError(f"{p.name} could not be loaded even with --unsafe-pickle: {e}", "check the file") from None


def find_weights(obj: Any, where: str = "checkpoint") -> dict[str, Any]:
    """Find the tensor dict in a checkpoint, looking into the usual nesting keys."""
    import torch

    if hasattr(obj, "state_dict") and callable(obj.state_dict) and not isinstance(obj, dict):
        obj = obj.state_dict()  # a pickled module (only reachable with --unsafe-pickle)
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors
        for key in NESTED_KEYS:
            if key in obj and obj[key] is not None:
                try:
                    return find_weights(obj[key], where)
                except CheckpointError:
                    continue
    raise CheckpointError(f"no weights found in {where}", f"store a state_dict at the top level or under one of {', '.join(NESTED_KEYS)}")


def match_keys(state: dict[str, Any], model_keys: list[str]) -> dict[str, Any]:
    """Strip ``module.`` or one consistent wrapper prefix when that makes the keys match."""
    want = set(model_keys)
    if set(state) == want:
        return state
    best, best_hits = state, len(want & set(state))
    prefixes = {k.split(".", 1)[0] + "." for k in state if "." in k}
    for prefix in sorted(prefixes) + ["module.model.", "model.module.", "_orig_mod."]:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(want & set(stripped))
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def _list(keys, n=4) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(model, state: dict[str, Any], source: str = "checkpoint", resize: bool = False) -> None:
    """Load ``state`` strictly into ``model``; one clear error for missing/unexpected/shape conflicts.

    With ``resize``, modules first take the shapes stored in ``state`` (a pruned model).
    """
    as_saved = state
    state = match_keys(state, list(model.state_dict()))
    own = model.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    if missing or unexpected:
        if state is not as_saved:  # a stripped prefix did not make them match: name the keys as saved
            unexpected = set(as_saved) - set(own)
        parts = []
        if missing:
            parts.append(f"missing {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected {_list(unexpected)}")
        raise CheckpointError(f"{source} does not match the architecture: " + "; ".join(parts), "pass the --arch (and --arch-args) the checkpoint was trained with")
    if resize:
        resize_to_state(model, state)
    conflicts = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)] if not resize else []
    if conflicts:
        k = conflicts[0]
        raise CheckpointError(
            f"{source} does not match the architecture: shape of {k} is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model ({len(conflicts)} conflicts)",
            "pass the --arch-args (widths, depth) the checkpoint was trained with",
        )
    model.load_state_dict(state, strict=True)


def resize_to_state(model, state: dict[str, Any]) -> None:
    """Give every parameter/buffer of ``model`` the shape stored in ``state`` (replays pruning)."""
    import torch
    from torch import nn

    for name, tensor in state.items():
        mod_name, _, attr = name.rpartition(".")
        module = model.get_submodule(mod_name) if mod_name else model
        if attr in module._parameters and module._parameters[attr] is not None:
            old = module._parameters[attr]
            if tuple(old.shape) != tuple(tensor.shape):
                module._parameters[attr] = nn.Parameter(torch.empty(tensor.shape, dtype=old.dtype), requires_grad=old.requires_grad)
        elif attr in module._buffers and module._buffers[attr] is not None:
            old = module._buffers[attr]
            if tuple(old.shape) != tuple(tensor.shape):
                module._buffers[attr] = torch.empty(tensor.shape, dtype=old.dtype)
    sync_module_attributes(model)


def sync_module_attributes(model) -> None:
    """Make layer attributes (channels, features) agree with their weight shapes."""
    from torch import nn

    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.modules.conv._ConvTransposeNd) and w is not None:
            m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
        elif isinstance(m, nn.modules.conv._ConvNd) and w is not None:
            m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, (nn.modules.batchnorm._NormBase,)):
            ref = m.weight if m.weight is not None else m.running_mean
            if ref is not None:
                m.num_features = ref.shape[0]
        elif isinstance(m, nn.GroupNorm) and m.weight is not None:
            m.num_channels = m.weight.shape[0]
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            m.normalized_shape = tuple(m.weight.shape)
        elif isinstance(m, nn.PReLU):
            m.num_parameters = m.weight.numel()


# -- writing ------------------------------------------------------------------------------
# Every file any command writes goes through write_file: a temp file in the target folder,
# flushed and fsynced, then moved into place without replacing an existing file unless the
# caller passed force. Two writers racing for one new path: exactly one wins.

def check_output_path(path: str | Path, force: bool, suffix: str | None = ".safetensors",
                      inputs: Iterable[str | Path] = ()) -> Path:
    """Check an output path before any long work: suffix, existence (--force), folder, writability, inputs."""
    p = Path(path)
    if suffix and p.suffix != suffix:
        raise MbdlError(f"output {str(p)!r} must end in {suffix}", f"name the output e.g. {p.with_suffix(suffix).name}")
    for src in inputs:
        if src is not None and _same_file(p, Path(src)):
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
            raise MbdlError(f"writing {str(p)!r} failed ({_first_line(e)})", "check free disk space and permissions") from None
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


def atomic_write_bytes(path: str | Path, write) -> None:  # pragma: no cover - transitional name
    write_file(path, write, force=True)


def atomic_write_text(path: str | Path, text: str) -> None:  # pragma: no cover - transitional name
    write_text(path, text, force=True)


def write_text(path: str | Path, text: str, *, force: bool = False) -> Path:
    """Write a text file through :func:`write_file`."""
    return write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), force=force)


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: non-finite floats become None, tuples lists."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return json_safe(obj.tolist())
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any, *, force: bool = False) -> Path:
    """Write strict JSON (no NaN/Infinity) through :func:`write_file`."""
    return write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False, default=str) + "\n", force=force)


def state_for_saving(model) -> dict[str, Any]:
    """Detached, contiguous, unshared CPU copies (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def parameterless_norm_widths(model) -> dict[str, int]:
    """``num_features`` of norm layers without weights or statistics (their width is not in the state)."""
    from torch import nn

    return {n: int(m.num_features) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is None and m.running_mean is None}


def save_model(path: str | Path, model, meta: dict[str, Any], force: bool = False, operator: Any = None) -> Path:
    """Write ``model``'s weights and ``meta`` (JSON in the safetensors header) through the one writer.

    The operator's fixed data that came from array files (``operator.embedded``: masks, coil
    maps, kernels) is stored inside the same file, so the model reloads with no path at all.
    """
    from safetensors.torch import save_file

    p = check_output_path(path, force)
    meta = {**meta, "format_version": FORMAT_VERSION, "norm_widths": parameterless_norm_widths(model), "versions": meta.get("versions") or versions()}
    state = state_for_saving(model)
    state.update(_embedded_tensors(meta.get("operator"), operator))
    header = {"format": FORMAT_NAME, FORMAT_NAME: json.dumps(json_safe(meta), sort_keys=True, allow_nan=False)}
    return write_file(p, lambda tmp: save_file(state, tmp, metadata=header), force=force)


def _embedded_tensors(spec: Mapping[str, Any] | None, operator: Any) -> dict[str, Any]:
    """Tensors ``@operator/KEY`` for every embedded reference in the operator spec."""
    import numpy as np
    import torch

    from .operators.files import is_embedded_ref

    out = {}
    arrays = getattr(operator, "embedded", None) or {}
    for key, value in (spec or {}).items():
        if is_embedded_ref(value):
            if key not in arrays:
                raise MbdlError(f"the operator's {key!r} data is not at hand to embed in the model file",
                                "pass the operator object (or --operator SPEC) when saving")
            out[EMBED_PREFIX + key] = torch.from_numpy(np.ascontiguousarray(arrays[key]).copy())
    return out


# -- whole models: the one loader ---------------------------------------------------------
@dataclass
class LoadedModel:
    """A rebuilt model with its metadata, its operator (if known), the file and the architecture record."""

    model: Any
    meta: dict[str, Any]
    operator: Any | None
    path: Path
    arch: Any = None  # models.user.ArchSpec
    file_meta: dict[str, Any] | None = None  # the metadata the file itself holds (None: a plain checkpoint)

    @property
    def label(self) -> str:
        name = self.path.name
        return name[: -len(".safetensors")] if name.endswith(".safetensors") else name


def load_model(path: str | Path, arch: str | None = None, device: str = "cpu", operator: Any = None, *,
               arch_args: Mapping[str, Any] | None = None, unsafe_pickle: bool = False,
               like: Mapping[str, Any] | None = None, resize: bool = False, key_map: Any = None) -> LoadedModel:
    """Build a model from any checkpoint file, strictly and without running code the command line did not name.

    Every command builds models from files through this function: originals, pruned models,
    teachers, controls and pipeline steps.

    * An mbdlprune file rebuilds itself from its metadata (pruned widths included). A name read
      from a file is only looked up in the built-in registry; user code (``file.py:factory``,
      ``pkg.mod:factory``) runs only when ``arch`` names the identical factory.
    * A plain checkpoint needs ``arch`` (and ``arch_args``), or ``like``: the metadata of a
      related mbdlprune file whose architecture it shares (the original of a pruned model);
      ``resize`` then lets widths follow the file (a teacher of other widths).
    * Attributes restored from metadata come from :data:`MODEL_ATTRS` only; the operator is
      ``operator`` (a spec path, dict or Operator the caller gave) or the one the file records,
      rebuilt from data embedded in the file.
    * Non-finite weights are refused, naming the tensor.
    * ``key_map`` (a shipped name, a TOML file or a :class:`keymap.KeyMap`) renames a foreign
      checkpoint's tensors first; what it did is recorded under ``meta["key_map"]``.
    """
    from .keymap import load_key_map
    from .models.user import build_arch, build_recorded

    ck = read_model_file(path, unsafe_pickle)
    p = ck.path
    km = load_key_map(key_map)
    km_record = None
    if km is not None:
        if ck.meta is not None:
            raise MbdlError(f"{p.name} is an mbdlprune file; its tensor names are already mbdlprune's", "drop --key-map")
        ck.state, km_record = km.apply(ck.state)
        if not ck.state:
            raise CheckpointError(f"key map {km.name} dropped every tensor of {p.name}", "check the key map's drop patterns")
        arch = arch or (km.arch if not (like or {}).get("arch") else None)
    recorded = (ck.meta or {}).get("arch") or ((like or {}).get("arch") if ck.meta is None else None)
    if recorded is not None:
        if arch_args:
            raise MbdlError(f"{p.name} {'records' if ck.meta else 'takes'} its architecture arguments from an mbdlprune file",
                            "drop --arch-args")
        model, spec = build_recorded(recorded, arch, p.name, state=ck.state)
        resize = resize or ck.meta is not None
    else:
        if not arch:
            raise MbdlError(f"{p.name} does not say which architecture it is", "pass --arch NAME (see `mbdlprune archs`) or --arch file.py:factory")
        model, spec = build_arch(arch, dict(arch_args or {}))
    restore_setup(model, ck.meta if ck.meta is not None else (like or {}))
    check_finite(ck.state, p.name)
    try:
        load_weights(model, ck.state, p.name, resize=resize)
    except CheckpointError as e:
        if km is None and ck.meta is None and "does not match" in e.problem:
            raise CheckpointError(e.problem, f"{e.fix}; for a checkpoint saved with other names pass --key-map "
                                  f"(shipped: {', '.join(_shipped_maps())}) or a TOML map") from None
        raise
    for name, width in ((ck.meta or {}).get("norm_widths") or {}).items():
        _set_norm_width(model, name, width, p.name)
    model.eval().to(device)
    op = resolve_operator(operator)
    if op is None and ck.meta is not None and ck.meta.get("operator"):
        op = operator_from_meta(ck.meta, ck.embedded, p.name)
    if op is not None:
        op = op.to(device)
    meta = dict(ck.meta) if ck.meta is not None else {"arch": spec.to_dict(), "operator": getattr(op, "spec", None)}
    if km_record is not None:
        meta["key_map"] = km_record
    return LoadedModel(model, meta, op, p, spec, ck.meta)


def _shipped_maps() -> list[str]:
    from .keymap import list_key_maps

    return list_key_maps()


def resolve_operator(operator: Any):
    """The operator the caller gave: an Operator, a spec file path or a spec dict (read as the caller's own)."""
    if operator is None:
        return None
    if hasattr(operator, "A") and hasattr(operator, "A_adjoint"):
        return operator
    from .operators import load_operator

    return load_operator(operator)


def operator_from_meta(meta: Mapping[str, Any], embedded: Mapping[str, Any], name: str):
    """Rebuild the operator a model file records, from the arrays embedded in that file; no path is opened."""
    from .operators import load_operator

    arrays = {}
    for key, t in embedded.items():
        arrays[key] = t.numpy() if hasattr(t, "numpy") else t
    try:
        return load_operator(meta["operator"], embedded=arrays)
    except MbdlError as e:
        raise type(e)(f"{name}: {e.problem}", e.fix) from None


def check_finite(state: Mapping[str, Any], name: str) -> None:
    """Refuse weights holding NaN or infinite values, naming the first such tensor."""
    import torch

    for key, t in state.items():
        if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{name}: tensor {key!r} holds NaN or infinite values",
                                  "the checkpoint is damaged (or training diverged): use an earlier checkpoint")


def _set_norm_width(model, name: str, width: int, source: str) -> None:
    from torch import nn

    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if not isinstance(module, nn.modules.batchnorm._NormBase):
        raise CheckpointError(f"{source} records a norm width for {name!r}, which is not a norm layer of the model",
                              "the file is damaged: export it again")
    module.num_features = int(width)


def restore_setup(model, meta: Mapping[str, Any]) -> None:
    """Re-apply the allowlisted plain attributes recorded at save time (:data:`MODEL_ATTRS`)."""
    for key, value in (meta.get("model_attrs") or {}).items():
        if key not in MODEL_ATTRS or not isinstance(value, MODEL_ATTRS[key]):
            raise CheckpointError(f"model attribute {key!r} cannot be restored from a file", "re-save the model with mbdlprune")
        if hasattr(model, key):
            setattr(model, key, value)
