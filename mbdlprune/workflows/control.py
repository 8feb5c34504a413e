"""The control run: fine-tune the original with the pruned model's budget, so extra training is not credited to pruning.

Built from :func:`mbdlprune.finetune`; :func:`mbdlprune.bench` adds the result as role "control".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DataError, MbdlError
from ..benchmark.models import ensure_model_file


def run_finetune(path: str | Path, settings: Mapping[str, Any], out: str | Path | None, arch: str | None = None,
                 force: bool = False, eval_data: Any = None):
    """:func:`mbdlprune.finetune` with a workflow's ``settings`` (``data`` included); returns its result."""
    from ..api import finetune

    kwargs = dict(settings)
    if "data" not in kwargs or kwargs["data"] is None:
        raise MbdlError("fine-tuning needs training data", "give data = PATH in the fine-tune settings")
    if arch is not None:
        kwargs.setdefault("arch", arch)
    if eval_data is not None and not _is_tensor(eval_data):
        kwargs.setdefault("eval_data", eval_data)
    return finetune(path, out=out, force=force, **kwargs)


def _is_tensor(x: Any) -> bool:
    try:
        import torch

        return torch.is_tensor(x)
    except ImportError:  # pragma: no cover
        return False


def control_settings(entries: Sequence, data: Any = None) -> dict[str, Any]:
    """The fine-tune settings of the first fine-tuned model: same mode and budget, on the same data.

    The data files are the caller's (``data``, i.e. ``--control-data``); a path recorded in a
    model file is never opened. Each file the record names must be among them (same sha256).
    """
    rec = next(((e.meta or {}).get("finetune") for e in entries[1:] if (e.meta or {}).get("finetune")), None)
    if not rec:
        raise MbdlError("--control needs a fine-tuned pruned model to copy the budget from",
                        "fine-tune a pruned model first (mbdlprune finetune), then bench it with --control")
    if data is None:
        raise MbdlError("--control needs the data the pruned model was fine-tuned on",
                        "pass --control-data PATH (the files given to finetune --data and --val-data)")
    return settings_from_record(rec, data)


def control_model(entries: list, control: bool | Mapping[str, Any], out: str | Path | None, arch, say,
                  control_data: Any = None, force: bool = False):
    """Fine-tune the original (``entries[0]``) with the same data and budget as the fine-tuned
    pruned model; returns it as a :class:`~mbdlprune.io.LoadedModel` of role "control"."""
    import tempfile

    from ..io import check_output_path, load_model

    if out is not None:
        check_output_path(out, force, inputs=[e.path for e in entries if e.path])

    original = entries[0]
    settings = dict(control) if isinstance(control, Mapping) else control_settings(entries, control_data)
    folder = Path(out).parent if out is not None else Path(tempfile.mkdtemp(prefix="mbdlprune-control-"))
    out = Path(out) if out is not None else folder / "control.safetensors"
    src = ensure_model_file(original, folder, force=force)
    if settings.get("mode", "").startswith("distill") or "teacher" in settings:
        settings.setdefault("teacher", src)
    say(f"fine-tuning the original as a control ({settings.get('mode')}, {settings.get('epochs')} epochs)")
    result = run_finetune(src, settings, out, arch=arch, force=force)
    path = getattr(result, "out", None) or out
    lm = load_model(path, arch=arch)
    lm.meta, lm.path, lm.label, lm.role = dict(lm.meta), str(path), f"{original.label}+finetune (control)", "control"
    return lm


def settings_from_record(rec: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """Fine-tune settings recorded by the fine-tune step, on the caller's copies of its data files.

    ``data``: files or folders given by the caller. The record's training and validation files
    are matched to them by sha256, so the control trains on exactly the same data.
    """
    from ..data import list_data_files
    from ..io import sha256_file

    cfg = dict(rec.get("config") or {}) if isinstance(rec.get("config"), Mapping) else {}
    if not cfg:
        cfg = {k: rec[k] for k in ("mode", "epochs", "lr", "batch_size", "seed", "loss") if k in rec}
    cfg.pop("device", None)
    recorded = rec.get("data") if isinstance(rec.get("data"), Mapping) else {}

    def files_of(part: str) -> dict[str, str]:
        table = recorded.get(part) if isinstance(recorded.get(part), Mapping) else {}
        files = table.get("files")
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, Mapping) else {}

    train, val = files_of("train"), files_of("val")
    if not train:
        raise MbdlError("the fine-tune record does not list its training files", "give the control's settings explicitly")
    given = {sha256_file(p): str(p) for p in list_data_files(data)}
    chosen: dict[str, list[str]] = {"train": [], "val": []}
    for part, files in (("train", train), ("val", val)):
        for name, digest in files.items():
            if digest not in given:
                raise DataError(f"--control-data lacks the {part} file {Path(name).name} (sha256 {digest[:12]}…) the model was fine-tuned on",
                                "pass --control-data with the same files given to finetune --data/--val-data")
            chosen[part].append(given[digest])
    out: dict[str, Any] = {**cfg, "data": sorted(chosen["train"])}
    split = isinstance(recorded.get("val_source"), str) and recorded["val_source"].startswith("split by file")
    if chosen["val"]:
        if split:
            out["data"] = sorted(chosen["train"] + chosen["val"])  # the same split by file is drawn again
        else:
            out["val_data"] = sorted(chosen["val"])
    return out
