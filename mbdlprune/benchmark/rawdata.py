"""Raw k-space evaluation data, the fastMRI way: real measurements in, RSS targets out.

Given fastMRI-layout files (``kspace`` (S, coils, H, W), see :mod:`mbdlprune.data.raw`), every
model sees the same retrospectively undersampled k-space: the operator's mask rule with
fastMRI's per-file seed (``random``, ``equispaced``, ``equispaced_fraction``), or the
operator's own fixed mask (``uniform``, a mask file), or the file's stored mask; no noise is
added to real data. Outputs are magnitudes mapped back to the target's units and centre-cropped
to the target size, then scored per volume (``--metric fastmri``: maxval = the volume maximum).
Models that take coil maps from the operator get maps estimated from each slice's calibration
region (``acs`` or ``espirit``), once for all models; an E2E-VarNet estimates its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import DataError

from ..data.raw import KSPACE_SCALES  # noqa: E402,F401  (re-exported: the choices of --kspace-scale)
COIL_MAP_METHODS = ("acs", "espirit")
#: mask kinds drawn per file with fastMRI's seed; other masks are the operator's own, fixed
from ..data.raw import MASK_KINDS as SEEDED_MASKS  # noqa: E402


def is_raw_data(data: Any) -> bool:
    """True when ``data`` is prepared raw data or names files holding raw k-space."""
    from ..data.raw import is_raw

    return isinstance(data, RawEvalData) or is_raw(data)


@dataclass
class RawVolumeInputs:
    """One volume as every model sees it: measurements, its operator (mask, maps), target and scale."""

    name: str
    y: Any  # (S, coils, H, W, 2) tensor
    op: Any  # the operator with this volume's mask (and per-slice coil maps)
    target: Any  # (S, h, w) tensor, the target's units
    maxval: float
    prepared: Any  # data.raw.EvalSlices (to_target_units)
    record: dict[str, Any]


@dataclass
class RawEvalData:
    """The evaluation volumes, prepared once for all models."""

    volumes: list[RawVolumeInputs]
    source: str
    hashes: list[str]
    files: list[str]
    protocol: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(int(v.y.shape[0]) for v in self.volumes)

    def timing_input(self, batch_size: int):
        """The first volume's first ``batch_size`` slices (tiled when fewer) and their operator."""
        import torch

        v = self.volumes[0]
        n = int(v.y.shape[0])
        idx = [i % n for i in range(batch_size)]
        y = v.y[idx]
        op = v.op
        if getattr(op, "per_image_maps", False):
            op = op.with_sampling(coil_maps=op.coil_maps[torch.as_tensor(idx)])
        return y, op

    def record(self, seed: int) -> dict[str, Any]:
        return {"source": self.source, "kind": "raw k-space", "n_images": self.n_images, "volumes": len(self.volumes),
                "seed": seed, "sha256": self.hashes, "files": self.files, "protocol": self.protocol,
                "per_volume": [v.record for v in self.volumes]}


def resolve_scale(scale: str, models: Sequence[Any]) -> str:
    """The k-space scaling for ``models`` (:func:`mbdlprune.data.raw.resolve_kspace_scale` on their architectures)."""
    from ..data.raw import resolve_kspace_scale

    return resolve_kspace_scale(scale, [((getattr(m, "meta", None) or {}).get("arch") or {}).get("name") for m in models])


def needs_coil_maps(models: Sequence[Any]) -> bool:
    """True when some model takes coil maps from the operator (it does not estimate its own)."""
    from ..models.protocol import estimates_coil_maps

    return any(not estimates_coil_maps(getattr(m, "model", m)) for m in models)


def load_raw_eval(data: Any, op, models: Sequence[Any], *, scale: str = "auto", coil_maps: str = "acs",
                  max_images: int | None = None, cache_dir: str | Path | None = None, say=None) -> RawEvalData:
    """Read raw volumes and prepare them the fastMRI way for the operator ``op`` (see the module notes)."""
    import numpy as np
    import torch

    from ..data import raw as R

    if isinstance(data, RawEvalData):
        return data
    say = say or (lambda msg: None)
    if getattr(op, "kind", None) != "mri":
        raise DataError("raw k-space evaluation needs an MRI operator", 'use models (or --operator) of kind "mri"')
    if coil_maps not in COIL_MAP_METHODS:
        raise DataError(f"unknown coil-map method {coil_maps!r}", f"use one of: {', '.join(COIL_MAP_METHODS)}")
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    for p in paths:
        if not Path(p).exists():
            raise DataError(f"evaluation data {str(p)!r} does not exist", "check --data")
    volumes = R.read_raw(paths)
    h, w = op.image_size
    # models that estimate their own coil maps (E2E-VarNet) take any coil count, file by file (as
    # fastMRI brain data vary from 4 to 20 coils); the others need the operator's, in every file
    coil_free = not needs_coil_maps(models)
    if coil_free:
        coils = max(v.coils for v in volumes)
    else:
        coils = R.check_same_coils(volumes)
        if coils != op.coils:
            raise DataError(f"the k-space has {coils} coils, the operator {op.coils}",
                            f"use an operator with coils = {coils} (models for {coils}-coil data)")
    for v in volumes:
        if tuple(v.image_shape) != (h, w):
            raise DataError(f"{v.name}: k-space of {v.image_shape[0]}x{v.image_shape[1]} (readout x phase encodes), "
                            f"the operator takes {h}x{w}", "use models built for this k-space size (operator image_size)")
    scale = resolve_scale(scale, models)
    rule, accel, cf = R.operator_mask_rule(op)
    kind = rule if isinstance(rule, str) else str((getattr(op, "spec", None) or {}).get("mask", "uniform"))
    maps_needed = needs_coil_maps(models) and coils > 1
    cache = None
    if maps_needed:
        from ..data.coilmaps import CoilMapCache, coil_maps_for

        cache = CoilMapCache.for_method(coil_maps, cache_dir)
    out, taken, notes = [], 0, []
    for v in volumes:
        if max_images is not None and taken >= max_images:
            break
        if v.target is None:
            raise DataError(f"{v.name} has no target: no reconstruction_rss / reconstruction_esc and undersampled k-space",
                            "evaluate on fully sampled k-space, or files that store a target")
        ev = R.prepare_eval(v, mask=rule, acceleration=accel or 4, center_fraction=cf or 0.08, scale=scale)
        keep = v.num_slices if max_images is None else min(v.num_slices, max_images - taken)
        maps, maps_rec = None, None
        if maps_needed:
            say(f"estimating coil maps ({coil_maps}) for {v.name}")
            maps, maps_rec = coil_maps_for(v, ev, coil_maps, cache=cache)
            maps = torch.from_numpy(np.ascontiguousarray(maps[:keep]))
        y = ev.measurements()[:keep]
        if maps is None and v.coils != op.coils:  # a coil-free model: placeholder maps of this file's coil count
            maps = torch.zeros(v.coils, h, w, 2)
            maps[..., 0] = v.coils ** -0.5
        vol_op = op.with_sampling(mask=torch.from_numpy(np.ascontiguousarray(ev.mask)), coil_maps=maps,
                                  num_low_frequencies=ev.num_low_frequencies)
        target = torch.from_numpy(np.ascontiguousarray(ev.target[:keep])).float()
        maxval = float(target.max())
        if not maxval > 0:
            raise DataError(f"{v.name}: the target is all zero", "drop empty volumes from the evaluation data")
        ev.scale, ev.kspace = ev.scale[:keep], ev.kspace[:keep]
        # scored with the maximum of the slices evaluated (fastMRI's gt.max()); the file's attribute beside it
        rec = {"name": v.name, **ev.record, "slices": keep, "coils": v.coils, "coil_maps": maps_rec, "maxval": maxval,
               "file_max": ev.record.get("maxval")}
        out.append(RawVolumeInputs(v.name, y, vol_op, target, maxval, ev, rec))
        taken += keep
        notes += [n for n in v.notes if n not in notes]
    if not out:
        raise DataError("no evaluation slices remain", "check --data and --max-images")
    protocol = {"mask": kind if kind in SEEDED_MASKS else f"{kind} (the operator's own, the same for every file)",
                "mask_seed": "tuple(map(ord, file name)), as fastMRI" if kind in SEEDED_MASKS else None,
                "acceleration": accel, "center_fraction": cf, "noise": "none (real measurements)",
                "kspace_scale": scale, "coil_maps": coil_maps if maps_needed else "estimated by the model" if coils > 1 else "single coil",
                "crop": "centre crop of the magnitude output to the target size"}
    hashes = sorted({v.sha256 for v in volumes})
    files = sorted({str(v.path) for v in volumes})
    return RawEvalData(out, ", ".join(map(str, paths)), hashes, files, protocol, notes)


def score_raw(entry, rev: RawEvalData, device: str, batch_size: int, metric, counter_cls,
              warm: bool = False) -> dict[str, Any]:
    """Reconstruct every volume (batched), map outputs to target units, score per volume and per slice.

    ``warm``: each DEQ solve starts from the previous batch's fixed point of the same volume.
    """
    import torch

    from ..metrics import compute_metrics, get_definition, volume_metrics
    from .costs import record_solver_info, solver_summary
    from .warmstart import WarmChain

    d = get_definition(metric)
    counter = counter_cls(entry.model)
    psnrs, ssims, vols = [], [], []
    its, res, conv = [], [], []
    example = truth = None
    batches = 0
    chain = WarmChain(entry.model, warm)
    try:
        with torch.inference_mode():
            for v in rev.volumes:
                preds = []
                n = int(v.y.shape[0])
                chain.reset()
                for s in range(0, n, batch_size):
                    op_b = v.op.batch(s, min(s + batch_size, n)).to(device)
                    xh = chain(v.y[s:s + batch_size].to(device), op_b)
                    batches += 1
                    record_solver_info(entry.model, its, res, conv)
                    preds.append(xh.float().cpu())
                mag = torch.from_numpy(v.prepared.to_target_units(torch.cat(preds)))
                if example is None:
                    example, truth = mag[:1, None].clone(), v.target[:1, None].clone()
                if d.per_volume:
                    vm = volume_metrics(mag, v.target, d, maxval=v.maxval)
                    slice_m = vm["per_slice"]
                    vols.append({"name": v.name, "psnr": vm["psnr"], "ssim": vm["ssim"], "nmse": vm["nmse"],
                                 "maxval": v.maxval, "slices": n})
                else:
                    slice_m = compute_metrics(mag, v.target, d)
                    vols.append({"name": v.name, "psnr": float(slice_m["psnr"].mean()),
                                 "ssim": float(slice_m["ssim"].mean()), "slices": n})
                psnrs += [float(x) for x in slice_m["psnr"]]
                ssims += [float(x) for x in slice_m["ssim"]]
    finally:
        counter.remove()
    return {"psnr": psnrs, "ssim": ssims, "volumes": vols, "priors": counter.summary(rev.n_images, batches),
            "deq": solver_summary(its, res, conv), "example": example, "truth": truth}
