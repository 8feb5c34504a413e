"""Whole models: the one loader (:func:`load_model`) and the model-file writer (:func:`save_model`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError, MbdlError
from .checkpoint import (EMBED_PREFIX, FORMAT_NAME, FORMAT_VERSION, MODEL_ATTRS, check_finite, load_weights,
                         read_model_file, versions)
from .writer import check_output_path, json_safe, write_file

def state_for_saving(model) -> dict[str, Any]:
    """Detached, contiguous, unshared CPU copies (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def conv_groups(model) -> dict[str, int]:
    """``groups`` of grouped and depthwise convolutions (pruning a depthwise conv changes it; the weight alone cannot say)."""
    from torch import nn

    return {n: int(m.groups) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd) and m.groups != 1}


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
    meta = {**meta, "format_version": FORMAT_VERSION, "norm_widths": parameterless_norm_widths(model),
            "conv_groups": conv_groups(model), "versions": meta.get("versions") or versions()}
    state = state_for_saving(model)
    state.update(_embedded_tensors(meta.get("operator"), operator))
    header = {"format": FORMAT_NAME, FORMAT_NAME: json.dumps(json_safe(meta), sort_keys=True, allow_nan=False)}
    return write_file(p, lambda tmp: save_file(state, tmp, metadata=header), force=force)


def _embedded_tensors(spec: Mapping[str, Any] | None, operator: Any) -> dict[str, Any]:
    """Tensors ``@operator/KEY`` for every embedded reference in the operator spec."""
    import numpy as np
    import torch

    from ..operators.files import is_embedded_ref

    out = {}
    arrays = getattr(operator, "embedded", None) or {}
    for key, value in (spec or {}).items():
        if is_embedded_ref(value):
            if key not in arrays:
                raise MbdlError(f"the operator's {key!r} data is not at hand to embed in the model file",
                                "pass the operator object (or --operator SPEC) when saving")
            out[EMBED_PREFIX + key] = torch.from_numpy(np.ascontiguousarray(arrays[key]).copy())
    return out


@dataclass
class LoadedModel:
    """A built model with its metadata, its operator (if known), its file and its architecture record.

    The one model type every step passes on: :func:`load_model` returns it, pruning and
    fine-tuning produce it, and a benchmark compares a list of them. ``label`` names it in
    reports (default: the file name without suffix) and ``role`` is ``original``, ``pruned``
    or ``control``. ``path`` is None for a model that exists only in memory.
    """

    model: Any
    meta: dict[str, Any] = field(default_factory=dict)
    operator: Any | None = None
    path: Path | str | None = None
    arch: Any = None  # models.user.ArchSpec
    file_meta: dict[str, Any] | None = None  # the metadata the file itself holds (None: a plain checkpoint)
    label: str = ""
    role: str = "pruned"
    sha256: str | None = None  # of the file, where a caller needs it (lineage records)

    def __post_init__(self) -> None:
        if not self.label and self.path is not None:
            name = Path(self.path).name
            self.label = name[: -len(".safetensors")] if name.endswith(".safetensors") else name


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
    from ..keymap import load_key_map
    from ..models.user import build_arch, build_recorded

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
    for name, groups in ((ck.meta or {}).get("conv_groups") or {}).items():
        _set_conv_groups(model, name, groups, p.name)
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
    from ..keymap import list_key_maps

    return list_key_maps()


def resolve_operator(operator: Any):
    """The operator the caller gave: an Operator, a spec file path or a spec dict (read as the caller's own)."""
    if operator is None:
        return None
    if hasattr(operator, "A") and hasattr(operator, "A_adjoint"):
        return operator
    from ..operators import load_operator

    return load_operator(operator)


def operator_from_meta(meta: Mapping[str, Any], embedded: Mapping[str, Any], name: str):
    """Rebuild the operator a model file records, from the arrays embedded in that file; no path is opened."""
    from ..operators import load_operator

    arrays = {}
    for key, t in embedded.items():
        arrays[key] = t.numpy() if hasattr(t, "numpy") else t
    try:
        return load_operator(meta["operator"], embedded=arrays)
    except MbdlError as e:
        raise type(e)(f"{name}: {e.problem}", e.fix) from None


def _recorded_layer(model, name: str, kind: type, what: str, source: str):
    """The submodule a file's record names, which must be a ``kind`` layer of the model."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if not isinstance(module, kind):
        raise CheckpointError(f"{source} records {what} for {name!r}, which is not such a layer of the model",
                              "the file is damaged: export it again")
    return module


def _set_conv_groups(model, name: str, groups: int, source: str) -> None:
    from torch import nn

    _recorded_layer(model, name, nn.modules.conv._ConvNd, "conv groups", source).groups = int(groups)


def _set_norm_width(model, name: str, width: int, source: str) -> None:
    from torch import nn

    _recorded_layer(model, name, nn.modules.batchnorm._NormBase, "a norm width", source).num_features = int(width)


def restore_setup(model, meta: Mapping[str, Any]) -> None:
    """Re-apply the allowlisted plain attributes recorded at save time (:data:`MODEL_ATTRS`)."""
    for key, value in (meta.get("model_attrs") or {}).items():
        if key not in MODEL_ATTRS or not isinstance(value, MODEL_ATTRS[key]):
            raise CheckpointError(f"model attribute {key!r} cannot be restored from a file", "re-save the model with mbdlprune")
        if hasattr(model, key):
            setattr(model, key, value)
