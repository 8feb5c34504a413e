"""Fine-tune records in model files: what a model trained on, so evaluation on the same files is refused."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from ..errors import DataError
from ..io.model_file import LoadedModel

_HEX = set("0123456789abcdef")


def _is_sha256(s: Any) -> bool:
    return isinstance(s, str) and len(s) == 64 and set(s.lower()) <= _HEX


def _hashes_in(obj: Any, found: set[str]) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if _is_sha256(k):
                found.add(str(k).lower())
            _hashes_in(v, found)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            _hashes_in(v, found)
    elif _is_sha256(obj):
        found.add(obj.lower())


#: parts of a fine-tune record's ``data`` that are not training data (eval files it was told to avoid)
_NOT_TRAINING = ("eval_files", "eval", "evaluation")


def training_hashes(record: Any) -> set[str]:
    """sha256 of every file a fine-tune record says it trained or validated on.

    Reads ``record["data"]`` (``train`` / ``val`` file tables) except the evaluation files
    the run was told to avoid, plus any ``*_hashes`` lists at the top level.
    """
    found: set[str] = set()
    if not isinstance(record, Mapping):
        return found
    data = record.get("data")
    if isinstance(data, Mapping):
        for k, v in data.items():
            if k not in _NOT_TRAINING:
                _hashes_in(v, found)
    elif data is not None:
        _hashes_in(data, found)
    for k, v in record.items():
        if k.endswith("hashes") and not k.startswith("eval"):
            _hashes_in(v, found)
    return found


def _finetune_records(meta: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    out = []
    for key in ("finetune", "finetune_previous"):
        rec = (meta or {}).get(key)
        while isinstance(rec, Mapping):
            out.append(rec)
            rec = rec.get("previous") if isinstance(rec.get("previous"), Mapping) else None
    return out


def finetune_summary(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """Mode, epochs and data of a model's fine-tune record, for reports (None if not fine-tuned)."""
    rec = (meta or {}).get("finetune")
    if not rec:
        return None
    cfg = rec.get("config") if isinstance(rec.get("config"), Mapping) else {}
    out = {k: rec.get(k, cfg.get(k)) for k in ("mode", "epochs", "lr", "batch_size", "loss")}
    data = rec.get("data") if isinstance(rec.get("data"), Mapping) else {}
    train = data.get("train") if isinstance(data.get("train"), Mapping) else {}
    out["train_slices"] = train.get("slices")
    out["train_files"] = len(train.get("files") or {})
    out["validation"] = (rec.get("validation") or {}).get("metric") if isinstance(rec.get("validation"), Mapping) else None
    out["training_hashes"] = len(training_hashes(rec))
    return {k: v for k, v in out.items() if v is not None}


def check_finetune_overlap(models: Sequence[LoadedModel], eval_hashes: Iterable[str]) -> None:
    """Refuse a model fine-tuned (trained or validated) on any of the evaluation files."""
    ev = {h.lower() for h in eval_hashes}
    for m in models:
        for rec in _finetune_records(m.meta):
            overlap = training_hashes(rec) & ev
            if overlap:
                raise DataError(
                    f"{m.label} was fine-tuned on {len(overlap)} of the evaluation files (sha256 {sorted(overlap)[0][:12]}…)",
                    "evaluate on files the model never trained or validated on",
                )
