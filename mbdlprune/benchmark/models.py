"""The models a benchmark compares: :class:`~mbdlprune.io.LoadedModel` s built from files through the one loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import MbdlError

ROLES = ("original", "pruned", "control")


def _label_for(path: str | Path, taken: set[str]) -> str:
    base = Path(path).name
    if base.endswith(".safetensors"):
        base = base[: -len(".safetensors")]
    label, i = base, 2
    while label in taken:
        label, i = f"{base}#{i}", i + 1
    return label


def load_bench_models(models: Sequence[Any], arch: str | None = None, unsafe_pickle: bool = False,
                      key_map: Any = None) -> list:
    """Paths or :class:`io.LoadedModel` objects -> a list of LoadedModel with distinct labels.

    The first model is the reference ("original") unless it is a LoadedModel with another
    role; the others keep their role ("pruned" by default). A plain checkpoint (a .pth of the original, say) is built with the
    architecture and operator recorded in the first mbdlprune file among ``models``. Every
    file goes through the one loader, :func:`mbdlprune.io.load_model`.
    """
    from ..io import LoadedModel, is_mbdlprune_file, load_model

    out: list = []
    plain: list[tuple[int, Path]] = []
    taken: set[str] = set()
    given = [isinstance(m, LoadedModel) for m in models]
    for i, m in enumerate(models):
        if isinstance(m, LoadedModel):
            bm = m
            if not bm.label or bm.label in taken:
                bm.label = _label_for(bm.path or "model", taken)
        elif isinstance(m, (str, Path)) and not is_mbdlprune_file(m):
            plain.append((i, Path(m)))
            out.append(None)
            continue
        elif isinstance(m, (str, Path)):
            bm = load_model(m, arch=arch, device="cpu", unsafe_pickle=unsafe_pickle)
            bm.meta, bm.path, bm.label = dict(bm.meta), str(m), _label_for(m, taken)
        else:
            raise MbdlError(f"cannot benchmark a {type(m).__name__}", "pass model file paths")
        taken.add(bm.label)
        out.append(bm)
    for i, path in plain:
        out[i] = _plain_checkpoint_model(path, [b for b in out if b is not None], arch, unsafe_pickle, taken, key_map)
        taken.add(out[i].label)
    if out and not given[0]:
        out[0].role = "original"
    if len(out) < 1:
        raise MbdlError("no models to benchmark", "pass the original model and at least one pruned model")
    return out


def _plain_checkpoint_model(path: Path, described: Sequence, arch: str | None, unsafe_pickle: bool,
                            taken: set[str], key_map: Any = None):
    """Build a plain checkpoint with the architecture an mbdlprune file among the models records."""
    from ..io import load_model

    ref = next((b for b in described if b.meta.get("arch")), None)
    if ref is None:
        raise MbdlError(f"{path.name} does not say which architecture it is, and no other model records one",
                        "pass a pruned .safetensors written by mbdlprune too, or run `mbdlprune convert` first")
    lm = load_model(path, arch=arch, unsafe_pickle=unsafe_pickle, like=ref.meta, key_map=key_map)
    meta = {"arch": lm.arch.to_dict(), "operator": (ref.meta or {}).get("operator")}
    lm.model.eval()
    lm.meta, lm.operator, lm.path, lm.label = meta, ref.operator, str(path), _label_for(path, taken)
    return lm


def ensure_model_file(bm, folder: str | Path, force: bool = False) -> str:
    """A path to an mbdlprune file holding ``bm`` (writes one into ``folder`` when needed)."""
    from ..io import is_mbdlprune_file, save_model

    if bm.path and str(bm.path).endswith(".safetensors") and is_mbdlprune_file(bm.path):
        return str(bm.path)
    if not (bm.meta or {}).get("arch"):
        raise MbdlError(f"{bm.label} has no architecture record to save it with", "pass the model as an mbdlprune file")
    out = Path(folder) / f"{bm.label.replace('/', '_')}.safetensors"
    meta = {k: v for k, v in bm.meta.items() if k not in ("format_version",)}
    if bm.operator is not None and getattr(bm.operator, "spec", None):
        meta["operator"] = bm.operator.spec
    save_model(out, bm.model, meta, force=force, operator=bm.operator)
    return str(out)
