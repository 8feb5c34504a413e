"""Reading checkpoint files without running code: safetensors and torch files, checked metadata, strict loading.

Every file is hostile until proven otherwise: torch files are opened with
``weights_only=True``, mbdlprune metadata is checked for shape and types before anything
reads it, and weights are loaded strictly (one clear error for missing, unexpected or
mis-shaped tensors).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError
from ..errors import first_line as _first_line

FORMAT_NAME = "mbdlprune"
FORMAT_VERSION = 1
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "ema", "ema_state_dict", "state_dict_ema", "net", "network", "params", "weights")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin")
#: safetensors keys of operator data (masks, coil maps, kernels) embedded in a model file
EMBED_PREFIX = "@operator/"
#: model attributes a model file may set, and their types: plain values only, never code
MODEL_ATTRS: dict[str, type] = {"prune_sensitivity": bool}

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

    from .. import __version__

    return {"mbdlprune": __version__, "torch": torch.__version__, "torch_pruning": getattr(torch_pruning, "__version__", "?")}


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
    for key in ("operator", "pruning", "finetune", "model_attrs", "norm_widths", "conv_groups", "key_map"):
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
    for table in ("norm_widths", "conv_groups"):
        for key, value in (meta.get(table) or {}).items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1 << 20:
                raise bad(f"{table.replace('_', ' ')[:-1]} of {key} is not a positive integer")


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
                f"{p.name} needs to unpickle code to load ({_first_line(e, 120)})",
                "re-save it as a plain state_dict, or pass --unsafe-pickle if you trust its source",
            ) from None
    except Exception as e:  # weights_only loading runs no code; anything it raises means a damaged file
        raise CheckpointError(f"{p.name} is not a readable torch checkpoint ({_first_line(e, 120)})", "the file is truncated or corrupt: copy or export it again") from None
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

    With ``resize``, modules first take the shapes stored in ``state`` (a pruned model). Keys
    the model lists in ``legacy_state_keys()`` are dropped when present.
    """
    as_saved = state
    state = match_keys(state, list(model.state_dict()))
    legacy = set(model.legacy_state_keys()) if callable(getattr(model, "legacy_state_keys", None)) else set()
    if legacy:  # keys older checkpoints hold that the model no longer keeps (e.g. VarNet's `zero`)
        state = {k: v for k, v in state.items() if k not in legacy}
    own = model.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    if missing or unexpected:
        if state is not as_saved:  # a stripped prefix did not make them match: name the keys as saved
            unexpected = {k for k in set(as_saved) - set(own) if k not in legacy}
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


def first_nonfinite(named_tensors) -> tuple[str, int] | None:
    """``(name, count)`` of the first floating tensor holding NaN/Inf among ``(name, tensor)`` pairs,
    or None. Meta tensors and non-float tensors are skipped. The one check behind loading
    (:func:`check_finite`) and pruning (``pruning.guards.check_finite_weights``)."""
    import torch

    for key, t in named_tensors:
        if not torch.is_tensor(t) or t.device.type == "meta" or not (t.is_floating_point() or t.is_complex()) or not t.numel():
            continue
        ok = torch.isfinite(t.detach())
        if not bool(ok.all()):
            return key, int((~ok).sum())
    return None


def check_finite(state: Mapping[str, Any], name: str) -> None:
    """Refuse weights holding NaN or infinite values, naming the first such tensor."""
    bad = first_nonfinite(state.items())
    if bad is not None:
        raise CheckpointError(f"{name}: tensor {bad[0]!r} holds NaN or infinite values",
                              "the checkpoint is damaged (or training diverged): use an earlier checkpoint")
