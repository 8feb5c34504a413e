"""The fine-tuning training state: one safetensors file beside the output, replaced atomically.

``OUT.state.safetensors`` holds everything a run needs to continue: the model, the best
weights so far, the optimiser's tensors and the torch RNG state as tensors, and the JSON
document (epoch, config, data identity, history, best so far, optimiser settings) in the
safetensors header. One file per save, written through :func:`mbdlprune.io.write_file`
(temp file, fsync, one rename), so a kill at any moment leaves either the previous complete
state or the new one — never tensors of one epoch beside the document of another.

The file is read with safetensors only (no pickle) and treated as hostile: a truncated file,
damaged JSON, missing keys or wrong types are a one-line :class:`MbdlError`, never an internal
exception.
"""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import MbdlError

STATE_FORMAT = "mbdlprune-finetune-state"
#: 1: tensors + a separate ``.state.json`` (two renames, could tear); 2: one file
STATE_VERSION = 2

_START_OVER = "start over with --force (without --resume)"


def state_path(out: str | Path) -> Path:
    """``OUT.state.safetensors`` beside the output ``OUT.safetensors``."""
    p = Path(out)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(stem + ".state.safetensors")


def legacy_state_path(out: str | Path) -> Path:
    """``OUT.state.json``: the JSON half of a version-1 state (older mbdlprune)."""
    s = state_path(out)
    return s.with_name(s.name[: -len(".safetensors")] + ".json")


def state_paths(out: str | Path) -> tuple[Path, Path]:
    """Every file a run may leave beside the output: ``(OUT.state.safetensors, legacy OUT.state.json)``."""
    return state_path(out), legacy_state_path(out)


# ----------------------------------------------------------------------------- before a run
def check_start(out: Path, *, resume: bool, force: bool) -> str:
    """Decide how a run writing ``out`` starts: ``"resume"`` or ``"fresh"``; refuse what would lose work.

    * without ``resume``, an existing state (an interrupted run) is refused unless ``force``
      (then the first save overwrites it);
    * with ``resume``: a state continues; a legacy version-1 state is refused; no state but the
      output exists means the run finished (refused: nothing to resume); neither means the run
      was stopped before its first save, so it starts from the beginning (``"fresh"``).
    """
    state, legacy = state_paths(out)
    if not resume:
        for p in (state, legacy):
            if p.exists() and not force:
                raise MbdlError(f"{p.name} beside the output holds the training state of an interrupted run",
                                "pass --resume to continue, or --force to start over")
        return "fresh"
    if state.exists():
        return "resume"
    if legacy.exists():
        raise _legacy(legacy)
    if out.exists():
        raise MbdlError(f"nothing to resume: the run already finished, output {out.name} exists",
                        "use it, or train again with --force (without --resume)")
    return "fresh"


def _legacy(p: Path) -> MbdlError:
    return MbdlError(f"{p.name} is a training state of an older mbdlprune (two files, format 1), which cannot be resumed",
                     _START_OVER)


# ----------------------------------------------------------------------------- writing
def save_state(out: Path, model, optimizer, best_state: Mapping[str, Any] | None, info: Mapping[str, Any]) -> Path:
    """Write the whole training state as one file, replacing the previous one atomically."""
    import torch
    from safetensors.torch import save_file

    from ..io import state_for_saving, write_file

    tensors: dict[str, Any] = {f"model.{k}": v for k, v in state_for_saving(model).items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous().clone() for k, v in best_state.items()})
    osd = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in osd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = val.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    tensors["rng.torch"] = torch.get_rng_state().clone()
    doc = {**info, "format": STATE_FORMAT, "version": STATE_VERSION,
           "optimizer": {"param_groups": osd["param_groups"], "scalars": scalars}}
    header = {"format": STATE_FORMAT, "version": str(STATE_VERSION), "state": json.dumps(doc, sort_keys=True)}
    path = write_file(state_path(out), lambda tmp: save_file(tensors, tmp, metadata=header), force=True)
    legacy = legacy_state_path(out)
    if legacy.exists():  # a version-1 state discarded with --force: its tensors were just overwritten
        legacy.unlink()
    return path


def remove_state(out: Path) -> None:
    """After the output is written: remove the state, a legacy JSON, and temp files that killed saves left."""
    for p in state_paths(out):
        if p.exists():
            p.unlink()
    for name in (state_path(out).name, Path(out).name):
        # write_file's temp files are ".NAME.<random>.tmp"; a SIGKILL mid-save leaves one behind
        for tmp in glob.glob(os.path.join(glob.escape(str(Path(out).parent)), f".{glob.escape(name)}.*.tmp")):
            try:
                os.unlink(tmp)
            except OSError:
                pass


# ----------------------------------------------------------------------------- reading
def load_state(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(document, tensors)`` of the state beside ``out``, checked; any defect is one MbdlError."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    p = state_path(out)
    if not p.is_file():
        if legacy_state_path(out).exists():
            raise _legacy(legacy_state_path(out))
        raise MbdlError(f"no training state beside {out} ({p.name})", "run without --resume to start a new run")
    try:
        with safe_open(str(p), framework="pt") as f:  # one open: header and tensors of the same file
            header = f.metadata() or {}
            if header.get("format") == STATE_FORMAT and "state" in header:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise MbdlError(f"{p.name} is not a readable training state ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})",
                        f"the file is truncated or damaged: {_START_OVER}") from None
    if header.get("format") != STATE_FORMAT:
        raise MbdlError(f"{p.name} is not an mbdlprune training state (format {header.get('format')!r})", _START_OVER)
    if "state" not in header:
        raise _legacy(p)
    try:
        doc = json.loads(header["state"])
    except (json.JSONDecodeError, RecursionError):
        raise MbdlError(f"{p.name} has a damaged state document (not JSON)", _START_OVER) from None
    if not isinstance(doc, dict):
        raise MbdlError(f"{p.name} has a damaged state document (not a JSON object)", _START_OVER)
    version = doc.get("version")
    if not _is_int(version):
        raise _damaged(p, "version")
    if version > STATE_VERSION:
        raise MbdlError(f"{p.name} was written by a newer mbdlprune (state version {version}, this one reads {STATE_VERSION})",
                        f"upgrade mbdlprune to resume, or {_START_OVER}")
    if version < STATE_VERSION:
        raise _legacy(p)
    _check_doc(doc, p)
    _check_tensors(tensors, doc, p)
    return doc, tensors


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _damaged(p: Path, what: str) -> MbdlError:
    return MbdlError(f"{p.name} has a damaged state document ({what} is missing or malformed)", _START_OVER)


def _check_doc(doc: dict[str, Any], p: Path) -> None:
    """Every key the trainer reads, with its type; the history agrees with the epoch count."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise _damaged(p, what)

    need(doc.get("format") == STATE_FORMAT, "format")
    epoch = doc.get("epoch")
    need(_is_int(epoch) and epoch >= 0, "epoch")
    need(isinstance(doc.get("config"), dict), "config")
    need(isinstance(doc.get("pruned_sha256"), str), "pruned_sha256")
    for key in ("train_files", "val_files"):
        need(isinstance(doc.get(key), dict), key)
    need(doc.get("best_value") is None or _is_num(doc.get("best_value")), "best_value")
    be = doc.get("best_epoch")
    need(be is None or (_is_int(be) and 1 <= be <= epoch), "best_epoch")
    need(doc.get("val_metric") is None or isinstance(doc.get("val_metric"), str), "val_metric")
    before = doc.get("before")
    need(before is None or (isinstance(before, dict) and isinstance(before.get("metric"), str)
                            and (before.get("value") is None or _is_num(before.get("value")))), "before")
    history = doc.get("history")
    need(isinstance(history, list) and len(history) == epoch, "history")
    for i, h in enumerate(history):
        need(isinstance(h, dict) and h.get("epoch") == i + 1 and _is_num(h.get("lr")) and _is_num(h.get("time_s"))
             and isinstance(h.get("train"), dict) and _is_num(h["train"].get("loss"))
             and all(_is_num(v) for v in h["train"].values())
             and (h.get("val") is None or (isinstance(h["val"], dict) and _is_num(h["val"].get("value")))),
             f"history[{i}]")
    opt = doc.get("optimizer")
    need(isinstance(opt, dict) and isinstance(opt.get("param_groups"), list) and isinstance(opt.get("scalars"), dict), "optimizer")
    for g in opt["param_groups"]:
        need(isinstance(g, dict) and isinstance(g.get("params"), list) and all(_is_int(i) for i in g["params"]), "optimizer.param_groups")
    for idx, vals in opt["scalars"].items():
        need(idx.isdigit() and isinstance(vals, dict), "optimizer.scalars")


def _check_tensors(tensors: dict[str, Any], doc: dict[str, Any], p: Path) -> None:
    """Names follow the layout save_state writes; the RNG state is a byte tensor; best matches model."""
    import torch

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise MbdlError(f"{p.name} is a damaged training state ({what})", _START_OVER)

    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    need(bool(model), "no model tensors")
    rng = tensors.get("rng.torch")
    need(rng is not None and rng.dtype == torch.uint8 and rng.dim() == 1, "RNG state")
    for name in tensors:
        if name.startswith(("model.", "best.")) or name == "rng.torch":
            continue
        parts = name.split(".", 2)
        need(len(parts) == 3 and parts[0] == "optim" and parts[1].isdigit() and parts[2], f"unexpected tensor {name[:60]!r}")
    if best:
        need(best.keys() == model.keys() and all(best[k].shape == model[k].shape for k in model), "best weights do not match the model")
    need((doc["best_epoch"] is None) == (not best), "best weights and best epoch disagree")


def optimizer_state(doc: dict[str, Any], tensors: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The optimiser's per-parameter state, rebuilt from the ``optim.*`` tensors and the document's scalars."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = t
    for idx, vals in doc["optimizer"]["scalars"].items():
        state.setdefault(int(idx), {}).update(vals)
    return state


#: the per-parameter state of Adam and AdamW (max_exp_avg_sq with amsgrad)
_ADAM_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq"})


def restore(doc: dict[str, Any], tensors: dict[str, Any], model, optimizer, p: Path) -> dict[str, Any] | None:
    """Load the saved model, optimiser and RNG state into this run's; return the best weights (or None).

    The optimiser's settings (its param groups) are this run's own, which the caller has checked
    against the saved config; the file supplies only the per-parameter state, each tensor checked
    against its parameter. Anything that does not fit is a one-line error.
    """
    import torch

    from ..errors import CheckpointError
    from ..io import load_weights

    bad = f"{p.name} does not fit this model"

    def why(e: Exception) -> str:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__

    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        load_weights(model, model_state, p.name)
    except CheckpointError as e:
        raise MbdlError(f"{bad}: {e.problem}", _START_OVER) from None
    except (RuntimeError, ValueError, TypeError) as e:
        raise MbdlError(f"{bad} ({why(e)})", _START_OVER) from None
    own = optimizer.state_dict()
    if [g.get("params") for g in doc["optimizer"]["param_groups"]] != [g["params"] for g in own["param_groups"]]:
        raise MbdlError(f"{bad}: its optimiser has other parameter groups", _START_OVER)
    params = [q for g in optimizer.param_groups for q in g["params"]]
    state = optimizer_state(doc, tensors)
    for idx, st in state.items():
        if idx >= len(params):
            raise MbdlError(f"{bad}: optimiser state for parameter {idx} of {len(params)}", _START_OVER)
        if not _ADAM_KEYS <= set(st) <= _ADAM_KEYS | {"max_exp_avg_sq"}:
            raise MbdlError(f"{bad}: optimiser state of parameter {idx} holds {', '.join(sorted(st))}", _START_OVER)
        step = st["step"]
        if isinstance(step, torch.Tensor):
            ok = step.dim() == 0 and step.dtype.is_floating_point and bool(torch.isfinite(step)) and float(step) >= 0
        else:
            ok = _is_num(step) and math.isfinite(step) and step >= 0
        if not ok:
            raise MbdlError(f"{bad}: optimiser step count of parameter {idx} is malformed", _START_OVER)
        for key in set(st) - {"step"}:
            t = st[key]
            if not isinstance(t, torch.Tensor) or t.shape != params[idx].shape or not t.dtype.is_floating_point:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise MbdlError(f"{bad}: optimiser tensor {key} of parameter {idx} is {shape}, the parameter {tuple(params[idx].shape)}",
                                _START_OVER)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": own["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise MbdlError(f"{bad} ({why(e)})", _START_OVER) from None
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    return best or None
