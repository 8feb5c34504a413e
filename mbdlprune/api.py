"""The importable steps: :func:`prune`, :func:`convert`, :func:`inspect`, :func:`finetune`, :func:`bench`.

Each step takes a typed config (:class:`~mbdlprune.pruning.PruneConfig`,
:class:`~mbdlprune.finetuning.FinetuneConfig`, :class:`~mbdlprune.benchmark.BenchConfig`; or
the same fields as keywords) and returns a result object with ``to_dict()`` for JSON and
``render(console)`` for people. The CLI is a thin layer over these functions, and the
workflows (:mod:`mbdlprune.workflows`: sweep, pipeline, demo, control run) are built from them.
Models pass between steps as :class:`~mbdlprune.io.LoadedModel` objects (:func:`load_model`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import MbdlError

#: the name --prior uses for an E2E-VarNet's sensitivity U-Net (``+`` adds it to the cascades)
SENSITIVITY_PRIOR = "+sens_net.norm_unet.unet"


def load_model(path: str | Path, arch: str | None = None, device: str = "cpu", operator: Any = None, **kwargs: Any):
    """Build a model from any checkpoint without running code the caller did not name; see :func:`mbdlprune.io.load_model`."""
    from .io import load_model as _load

    return _load(path, arch=arch, device=device, operator=operator, **kwargs)


@dataclass
class PruneResult:
    """A pruned model in memory, its operator, the metadata written with it, and a summary."""

    model: Any
    operator: Any
    meta: dict[str, Any]
    report: dict[str, Any]
    out: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.out) if self.out else None, **self.report}

    def render(self, console, layers: bool = False) -> None:
        from .render import render_layers, render_prune

        if layers:
            render_layers(self.report, console)
        render_prune(self.report, self.out, console)

    def loaded(self, label: str = "", path: str | Path | None = None):
        """This model as a :class:`~mbdlprune.io.LoadedModel` for the next step."""
        from .io import LoadedModel

        where = path or self.out
        return LoadedModel(self.model, self.meta, self.operator, str(where) if where else None, label=label, role="pruned")


@dataclass
class ConvertResult:
    """The file :func:`convert` wrote and what it records."""

    out: Path
    arch: dict[str, Any]
    operator: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.out), "arch": self.arch, "operator": self.operator}

    def render(self, console) -> None:
        console.print(f"wrote {self.out}")


@dataclass
class InspectResult:
    """What :func:`inspect` found: the file, the architecture, priors, widths, MACs and records."""

    info: dict[str, Any]
    path: Path

    def to_dict(self) -> dict[str, Any]:
        return dict(self.info)

    def render(self, console) -> None:
        from .render import render_inspect

        render_inspect(self.info, str(self.path), console)


def _config(cls, config: Any, options: Mapping[str, Any], where: str):
    """``config`` (an instance, a dict or None) with ``options`` (field names) applied, strictly."""
    from .config import check_keys

    names = [f.name for f in dataclasses.fields(cls)]
    check_keys(options, names, where)
    if isinstance(config, cls):
        base = dataclasses.asdict(config)
    elif config is None:
        base = {}
    elif isinstance(config, Mapping):
        check_keys(config, names, where)
        base = dict(config)
    else:
        raise MbdlError(f"{where}: expected a {cls.__name__}, got {type(config).__name__}", f"pass a {cls.__name__}")
    cfg = cls(**{**base, **options})
    cfg.validate()
    return cfg


# -- loading ---------------------------------------------------------------------------------
def load_checkpoint_model(checkpoint: str | Path, arch: str | None, arch_args: dict | None, unsafe_pickle: bool = False,
                          operator: Any = None, key_map: Any = None):
    """Build the architecture and load weights from any supported checkpoint (through :func:`io.load_model`).

    Returns ``(model, arch_spec, meta_or_None, operator_or_None)``; an mbdlprune file needs no
    ``arch`` unless it was built by user code.
    """
    from .io import load_model

    lm = load_model(checkpoint, arch=arch, arch_args=arch_args, unsafe_pickle=unsafe_pickle, operator=operator,
                    key_map=key_map)
    meta = lm.file_meta
    if meta is None and lm.meta.get("key_map"):
        meta = {"key_map": lm.meta["key_map"]}  # a plain checkpoint read through a key map: keep the record
    return lm.model, lm.arch, meta, lm.operator


def example_inputs(model, kind: str, op, image_size: tuple[int, int] | None = None, seed: int = 0) -> tuple:
    """A real, deterministic example input as a tuple: ``(y, op)`` for MBDL models, ``(x,)`` for priors.

    The image is a smooth random field (not white noise), so data consistency and the prior
    see image-like values while tracing.
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    if kind == "prior":
        if op is not None:
            c, (h, w) = op.channels, op.image_size
        else:
            c = int(getattr(model, "in_channels", 0) or _first_conv(model).in_channels)
            h, w = image_size or (64, 64)
    else:
        if op is None:
            raise MbdlError("an MBDL model needs an operator to run", "pass --operator SPEC (TOML/JSON with an [operator] table)")
        c, (h, w) = op.channels, op.image_size
    coarse = torch.randn((1, c, max(h // 8, 2), max(w // 8, 2)), generator=g)
    x = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = x / x.abs().amax().clamp_min(1e-8)
    if kind == "prior":
        return (x,)
    dev = next((b.device for b in op.buffers()), torch.device("cpu"))
    return (op.A(x.to(dev)), op)


def _first_conv(model):
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m
    raise MbdlError("the model has no convolution layer to prune", "check --arch")


# -- pruning ---------------------------------------------------------------------------------
def _prune_config(config: Any, options: Mapping[str, Any], prune_sensitivity: bool):
    from .pruning import DEFAULT_ROUND_TO, PruneConfig, parse_round_to

    options = dict(options)
    if options.get("round_to", 0) is None:
        options["round_to"] = DEFAULT_ROUND_TO
    elif "round_to" in options:  # "auto" (any case) or an integer written as text
        options["round_to"] = parse_round_to(options["round_to"])
    cfg = _config(PruneConfig, config, options, "prune")
    if prune_sensitivity:  # the shorthand for naming the sensitivity U-Net with --prior
        cfg.priors = [*(cfg.priors or []), SENSITIVITY_PRIOR]
    return cfg


def prune_model(model, arch_spec, op=None, config: Any = None, *, image_size: tuple[int, int] | None = None,
                parent_meta: Mapping[str, Any] | None = None, parent_sha256: str | None = None,
                prune_sensitivity: bool = False, **options: Any) -> PruneResult:
    """Prune a built ``model``'s prior(s) in place and return it with metadata ready for :func:`io.save_model`.

    ``config``: a :class:`~mbdlprune.pruning.PruneConfig` (or its fields as ``options``). Each
    group of coupled channels keeps the multiple of ``round_to`` (default 16) and of its channel
    groups nearest to ``ratio``. A layer held back beyond that rounding (channel groups,
    ``ignore``, the maximum ratio, a layer narrower than ``round_to``) raises a one-line
    :class:`~mbdlprune.errors.PruningError` naming it, unless ``allow_partial``; the report then
    lists it under ``held_back``. ``prune_sensitivity``: shorthand for ``priors=["+sens_net.norm_unet.unet"]``.
    """
    from .io import versions
    from .pruning import prune_priors

    cfg = _prune_config(config, options, prune_sensitivity)
    if arch_spec.kind == "prior" and cfg.priors is None:
        cfg.priors = [""]  # a bare prior is its own (only) prior
    model.eval()
    inputs = example_inputs(model, arch_spec.kind, op, image_size, cfg.seed)
    record = prune_priors(model, inputs, cfg)
    record["previous"] = (parent_meta or {}).get("pruning")
    meta = {
        "arch": arch_spec.to_dict(),
        "operator": getattr(op, "spec", None) if op is not None else None,
        "pruning": record,
        "parent_sha256": parent_sha256,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    return PruneResult(model, op, meta, summarize(model, record), None)


def prune(checkpoint: str | Path, config: Any = None, *, arch: str | None = None, arch_args: dict | None = None,
          operator: Any = None, out: str | Path | None = None, force: bool = False, unsafe_pickle: bool = False,
          key_map: Any = None, image_size: tuple[int, int] | None = None, prune_sensitivity: bool = False,
          **options: Any) -> PruneResult:
    """Load a checkpoint, prune its prior(s), and (with ``out``) write a safetensors model.

    ``config``/``options``: :class:`~mbdlprune.pruning.PruneConfig` (ratio, importance, round_to,
    layer_ratios, ignore, priors, ...), checked before the checkpoint is read.
    """
    from .io import check_output_path, save_model, sha256_file

    cfg = _prune_config(config, options, prune_sensitivity)
    if out is not None:
        check_output_path(out, force, inputs=(checkpoint, operator))
    model, spec, meta, op = load_checkpoint_model(checkpoint, arch, arch_args, unsafe_pickle, operator, key_map)
    result = prune_model(model, spec, op, cfg, image_size=image_size, parent_meta=meta,
                         parent_sha256=sha256_file(checkpoint))
    result.meta["parent"] = Path(checkpoint).name
    if (meta or {}).get("key_map"):
        result.meta["key_map"] = meta["key_map"]
    if out is not None:
        result.out = save_model(out, result.model, result.meta, force=force, operator=op)
    return result


def convert(checkpoint: str | Path, *, arch: str | None = None, arch_args: dict | None = None, operator: Any = None,
            out: str | Path, force: bool = False, unsafe_pickle: bool = False, key_map: Any = None) -> ConvertResult:
    """Write any supported checkpoint as an mbdlprune safetensors file (architecture + operator recorded)."""
    from .io import check_output_path, save_model, sha256_file, versions

    check_output_path(out, force, inputs=(checkpoint, operator))
    model, spec, meta, op = load_checkpoint_model(checkpoint, arch, arch_args, unsafe_pickle, operator, key_map)
    new_meta = {
        **(meta or {}),
        "arch": spec.to_dict(),
        "operator": getattr(op, "spec", None) if op is not None else (meta or {}).get("operator"),
        "parent": Path(checkpoint).name,
        "parent_sha256": sha256_file(checkpoint),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    path = save_model(out, model, new_meta, force=force, operator=op)
    return ConvertResult(Path(path), new_meta["arch"], new_meta["operator"])


# -- fine-tuning and benchmarking ------------------------------------------------------------
def finetune(pruned: str | Path, config: Any = None, *, data: Any, out: str | Path | None, **kwargs: Any):
    """Fine-tune a pruned model file; returns a :class:`~mbdlprune.finetuning.FinetuneResult`.

    ``config``: a :class:`~mbdlprune.finetuning.FinetuneConfig` or its fields as keywords (mode,
    epochs, lr, ...); the other keywords (``teacher``, ``val_data``, ``eval_data``, ``operator``,
    ``arch``, ``resume``, ``force``, ``progress``, ``callback``, ...) are those of
    :func:`mbdlprune.finetuning.finetune`. See docs/finetune.md.
    """
    from .finetuning.trainer import finetune as _finetune

    return _finetune(pruned, data=data, out=out, config=config, **kwargs)


def bench(models: Sequence[Any], data: Any, config: Any = None, *, operator: Any = None, arch: str | None = None,
          key_map: Any = None, unsafe_pickle: bool = False, control: bool | Mapping[str, Any] = False,
          control_data: Any = None, control_out: str | Path | None = None, force: bool = False, progress=None,
          **options: Any):
    """Load ``models`` (first = the original) and compare them side by side on ``data``.

    ``models``: file paths or :class:`~mbdlprune.io.LoadedModel` objects; a plain checkpoint takes
    the architecture recorded by the mbdlprune files among them (``arch`` only names user
    code, ``key_map``/``unsafe_pickle`` apply to plain checkpoints). ``config``: a
    :class:`~mbdlprune.benchmark.BenchConfig` or its fields as keywords (warmup, repeats,
    metric, ...). ``control``: also fine-tune the original with the pruned model's budget (True:
    its recorded settings, on ``control_data``; or a dict of settings) and compare it as role
    "control" (:mod:`mbdlprune.workflows.control`). Returns a :class:`~mbdlprune.benchmark.BenchReport`.
    """
    from .benchmark import BenchConfig, compare, load_bench_models

    cfg = _config(BenchConfig, config, options, "bench")
    say = progress or (lambda msg: None)
    entries = load_bench_models(models, arch=arch, unsafe_pickle=unsafe_pickle, key_map=key_map)
    if control:
        from .workflows.control import control_model

        entries.append(control_model(entries, control, control_out, arch, say, control_data, force))
    return compare(entries, data, cfg, operator=operator, progress=progress)


def summarize(model, record: Mapping[str, Any]) -> dict[str, Any]:
    """Per-prior and per-reconstruction cost before/after, requested and achieved removal, for tables and JSON."""
    from .pruning import join_name, removed_fraction, requested_fraction
    from .pruning.achieved import rounding_notes

    priors = {}
    per_recon = [0, 0]
    nominal = getattr(model, "max_iter", None)
    held_back = {}
    for name, rec in record["priors"].items():
        calls = nominal if isinstance(nominal, int) else rec["calls_per_forward"]
        per_recon[0] += rec["macs_before"] * calls
        per_recon[1] += rec["macs_after"] * calls
        widths = rec["widths"]
        requested = rec.get("requested") or {}
        notes = rec.get("notes") or {}
        held = rec.get("held_back") or {}
        held_back.update(held)
        priors[name] = {
            "params_before": rec["params_before"],
            "params_after": rec["params_after"],
            "macs_before": rec["macs_before"],
            "macs_after": rec["macs_after"],
            "calls_per_reconstruction": calls,
            "widths_before": sorted({w[0] for w in widths.values()}),
            "widths_after": sorted({w[1] for w in widths.values()}),
            "requested_channel_ratio": rec.get("requested_channel_ratio", requested_fraction(widths, requested) if requested else None),
            "achieved_channel_ratio": removed_fraction(widths.values()) or 0.0,
            "layers": {layer: {"before": b, "after": a, "requested": requested.get(layer),
                               "removed": round(1 - a / b, 4) if b else 0.0,
                               "held_back": join_name(name, layer) in held, "note": notes.get(layer)}
                       for layer, (b, a) in widths.items()},
        }
    return {
        "ratio": record["ratio"],
        "importance": record["importance"],
        "round_to": record["round_to"],
        "allow_partial": bool(record.get("allow_partial", False)),
        "params_before": record["params_before"],
        "params_after": record["params_after"],
        "macs_per_reconstruction_before": per_recon[0],
        "macs_per_reconstruction_after": per_recon[1],
        "nominal_iterations": nominal if isinstance(nominal, int) else None,
        "seconds": record["seconds"],
        "held_back": held_back,
        "priors": priors,
        "notes": rounding_notes(priors, record["round_to"]),
    }


# -- inspecting ------------------------------------------------------------------------------
def inspect(checkpoint: str | Path, *, arch: str | None = None, arch_args: dict | None = None, operator: Any = None,
            unsafe_pickle: bool = False, key_map: Any = None) -> InspectResult:
    """Architecture, priors, widths, params, MACs and records of any checkpoint, as an :class:`InspectResult`."""
    return InspectResult(inspect_checkpoint(checkpoint, arch, arch_args, operator, unsafe_pickle, key_map), Path(checkpoint))


def inspect_checkpoint(checkpoint: str | Path, arch: str | None = None, arch_args: dict | None = None,
                       operator: Any = None, unsafe_pickle: bool = False, key_map: Any = None) -> dict[str, Any]:
    """Architecture, priors, widths, params, MACs and pruning record of any checkpoint."""
    from .io import is_mbdlprune_file, read_checkpoint
    from .pruning import count_params, find_priors, layer_widths, shape_and_macs

    path = Path(checkpoint)

    def file_info(state, meta) -> dict[str, Any]:
        return {"path": str(path), "tensors": len(state), "params_in_file": int(sum(v.numel() for v in state.values())),
                "mbdlprune_file": is_mbdlprune_file(path)}

    if not arch and key_map is None and not is_mbdlprune_file(path):
        info = file_info(*read_checkpoint(path, unsafe_pickle=unsafe_pickle))
        info["note"] = "pass --arch to see priors, widths and MACs"
        return info
    model, spec, meta, op = load_checkpoint_model(path, arch, arch_args, unsafe_pickle, operator, key_map)
    info = file_info(model.state_dict(), meta)  # loaded strictly: the same tensors as the file
    info.update(arch=spec.to_dict(), params=count_params(model))
    if meta:
        info.update({k: meta.get(k) for k in ("operator", "pruning", "finetune", "key_map", "parent_sha256", "versions", "created") if meta.get(k) is not None})
        if info.get("pruning"):
            info["pruning"] = {k: v for k, v in info["pruning"].items() if k != "priors"} | {
                "priors": {n: {k: v for k, v in r.items() if k != "history"} for n, r in info["pruning"]["priors"].items()}
            }
    if op is None and spec.kind == "mbdl":
        info["priors"] = {p: {"params": count_params(model.get_submodule(p))} for p in getattr(model, "prior_paths", lambda: [])()}
        info["note"] = "pass --operator to see MACs"
        return info
    model.eval()
    inputs = example_inputs(model, spec.kind, op)
    sites, _ = find_priors(model, inputs)
    info["priors"] = {}
    for s in sites:
        _, macs = shape_and_macs(s.module, s.inputs)
        info["priors"][s.name] = {
            "params": count_params(s.module),
            "macs_per_call": macs,
            "input_shape": list(s.inputs[0].shape),
            "widths": layer_widths(s.module),
        }
    return info
