"""The chain every workflow runs, written once: prune a copy of the original, write it, fine-tune it.

:func:`prune_and_finetune` is what a sweep does at each ratio, what a pipeline and the demo do
once; each then compares the results with :func:`mbdlprune.bench`. Built from the API steps only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import MbdlError


def load_original(checkpoint: str | Path, arch: str | None = None, arch_args: Mapping[str, Any] | None = None,
                  operator: Any = None, unsafe_pickle: bool = False, key_map: Any = None):
    """The unpruned model as a :class:`~mbdlprune.io.LoadedModel` of role "original" whose ``meta``
    holds its architecture and operator (what a plain checkpoint lacks)."""
    from ..io import load_model, sha256_file

    lm = load_model(checkpoint, arch=arch, arch_args=dict(arch_args or {}) or None, unsafe_pickle=unsafe_pickle,
                    operator=operator, key_map=key_map)
    if lm.operator is None and lm.arch.kind == "mbdl":
        raise MbdlError(f"{Path(checkpoint).name} records no operator", "pass --operator SPEC (TOML/JSON with an [operator] table)")
    meta = dict(lm.file_meta or {})
    if lm.file_meta is None and lm.meta.get("key_map"):
        meta["key_map"] = lm.meta["key_map"]  # a plain checkpoint read through a key map keeps the record
    meta.setdefault("arch", lm.arch.to_dict())
    if lm.operator is not None and getattr(lm.operator, "spec", None):
        meta["operator"] = lm.operator.spec
    meta.setdefault("pruning", None)
    lm.meta, lm.path, lm.label, lm.role = meta, str(checkpoint), checkpoint_stem(checkpoint), "original"
    lm.sha256 = sha256_file(checkpoint)
    return lm


def checkpoint_stem(checkpoint: str | Path) -> str:
    """The checkpoint's file name without its checkpoint suffix (labels and output names)."""
    label = Path(checkpoint).name
    for suffix in (".safetensors", ".pt", ".pth", ".ckpt", ".tar", ".bin"):
        if label.endswith(suffix):
            return label[: -len(suffix)]
    return label


@dataclass
class ChainResult:
    """One pass of the chain: the pruning result, the fine-tuning result (if any) and the model to bench."""

    pruned: Any  # api.PruneResult (its ``out`` is the written file, if any)
    finetuned: Any  # finetuning.FinetuneResult or None
    pruned_model: Any  # io.LoadedModel of the pruned model
    model: Any  # io.LoadedModel: the fine-tuned model if there is one, else the pruned one
    seconds: dict[str, float]  # per step: "prune", "finetune"


def prune_and_finetune(original, prune: Any, *, label: str, finetuned_label: str | None = None, pruned_out: str | Path | None = None,
                       finetune: Mapping[str, Any] | None = None, finetuned_out: str | Path | None = None,
                       teacher: str | None = None, arch: str | None = None, eval_data: Any = None,
                       force: bool = False, say: Callable[[str], None] | None = None,
                       on_pruned: Callable[[Any], None] | None = None) -> ChainResult:
    """Prune a copy of ``original`` (a :class:`~mbdlprune.io.LoadedModel` from :func:`load_original`)
    with ``prune`` (a PruneConfig, or its fields as a dict), write it to ``pruned_out``, and with
    ``finetune`` settings (FinetuneConfig fields plus ``data``, ``val_data``, ``teacher``)
    fine-tune that file into ``finetuned_out``.

    Distillation gets ``teacher`` (default: the original's file). ``arch`` is the user-code factory
    the command line named, if any. ``eval_data``: files the fine-tuning may not train on.
    ``on_pruned(prune_result)`` is called between the two steps (progress lines); the seconds
    each step took are in ``ChainResult.seconds``.
    """
    import time

    from ..api import prune_model
    from ..io import save_model
    from .control import run_finetune

    say = say or (lambda msg: None)
    t0 = time.perf_counter()
    options = dict(prune) if isinstance(prune, Mapping) else {}
    config = None if isinstance(prune, Mapping) else prune
    res = prune_model(copy.deepcopy(original.model), original.arch, original.operator, config, parent_meta=original.meta,
                      parent_sha256=original.sha256, **options)
    if original.path:
        res.meta["parent"] = Path(original.path).name
    if (original.meta or {}).get("key_map"):
        res.meta["key_map"] = original.meta["key_map"]
    if pruned_out is not None:
        res.out = save_model(pruned_out, res.model, res.meta, force=force, operator=original.operator)
    model = res.loaded(label=label)
    seconds = {"prune": time.perf_counter() - t0}
    if on_pruned is not None:
        on_pruned(res)
    if not finetune:
        return ChainResult(res, None, model, model, seconds)
    if pruned_out is None or finetuned_out is None:
        raise MbdlError("fine-tuning in a workflow works on files", "give the workflow an output folder")
    settings = dict(finetune)
    if str(settings.get("mode", "")).startswith("distill"):
        settings.setdefault("teacher", teacher or original.path)
    say(f"fine-tuning {label} ({settings.get('mode', 'supervised')}, {settings.get('epochs', 1)} epochs)")
    t1 = time.perf_counter()
    ft = run_finetune(res.out, settings, finetuned_out, arch=arch, force=force, eval_data=eval_data)
    seconds["finetune"] = time.perf_counter() - t1
    from ..io import LoadedModel

    tuned = LoadedModel(ft.model, dict(ft.meta), original.operator, str(ft.out) if ft.out else None,
                        label=finetuned_label or f"{label}-ft", role="pruned")
    return ChainResult(res, ft, model, tuned, seconds)
