"""Evaluation data: ground-truth images from tensors or volume files, and measurements simulated once for all models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

@dataclass
class EvalData:
    """Ground-truth evaluation images and where they came from."""

    images: Any  # (N, C, H, W) tensor
    source: str
    hashes: list[str]
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. slices dropped for NaN/Inf or all-zero values
    #: the volume of each image, in slice order (None: one stack, e.g. a tensor); for warm starts
    volume_index: list[int] | None = None


def tensor_sha256(t) -> str:
    import hashlib

    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def load_eval_data(data: Any, op, max_images: int | None = None, fit: str = "error") -> EvalData:
    """Evaluation images from a tensor (N, C, H, W), or from volume files via :mod:`mbdlprune.data`."""
    import torch

    if isinstance(data, EvalData):
        ev = data
    elif torch.is_tensor(data):
        imgs = data.detach().float()
        if imgs.dim() == 3:
            imgs = imgs[:, None]
        ev = EvalData(imgs, f"tensor {tuple(imgs.shape)}", [tensor_sha256(imgs)])
    elif isinstance(data, (str, Path)) or (isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, Path)) for d in data)):
        ev = _load_volumes(data, op, fit)
    else:
        raise DataError(f"cannot use {type(data).__name__} as evaluation data", "pass a NIfTI/HDF5 file or folder (--data PATH)")
    if ev.images.dim() != 4 or ev.images.shape[0] == 0:
        raise DataError(f"evaluation data has shape {tuple(ev.images.shape)}", "give at least one image (N, C, H, W)")
    if tuple(ev.images.shape[1:]) != tuple(op.image_shape):
        raise DataError(
            f"evaluation images are {tuple(ev.images.shape[1:])}, the operator takes {tuple(op.image_shape)}",
            "set the operator's image_size/channels to the data, or resample the data",
        )
    if max_images is not None and ev.images.shape[0] > max_images:
        index = ev.volume_index[:max_images] if ev.volume_index is not None else None
        ev = EvalData(ev.images[:max_images], ev.source + f" (first {max_images} images)", ev.hashes, ev.files,
                      ev.notes, index)
    return ev


def _load_volumes(data: Any, op, fit: str = "error") -> EvalData:
    import torch

    try:
        from .. import data as D
    except ImportError as e:  # pragma: no cover - the data module ships with the package
        raise DataError(f"reading volume files needs mbdlprune.data ({e})", "pass images as a tensor") from None
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    volumes = []
    for p in paths:
        if not Path(p).exists():
            raise DataError(f"evaluation data {str(p)!r} does not exist", "check --data")
        volumes.extend(D.read_volumes(p))
    if not volumes:
        raise DataError(f"no volumes found in {', '.join(map(str, paths))}", "point --data at NIfTI or HDF5 files")
    kinds = {v.kind for v in volumes}
    if kinds != {"image"}:
        raise DataError("evaluation data must be images (ground truth), not k-space",
                        "pass image files (NIfTI, NumPy, fastMRI reconstruction_rss) as --data")
    stacks = [D.slices_to_images(v, op, fit=fit) for v in volumes]
    imgs = torch.cat(stacks).float()
    index = [i for i, stack in enumerate(stacks) for _ in range(int(stack.shape[0]))]
    hashes = sorted({v.sha256 for v in volumes if getattr(v, "sha256", None)})
    files = sorted({str(getattr(v, "path", "")) for v in volumes})
    return EvalData(imgs, ", ".join(map(str, paths)), hashes, files, D.volume_notes(volumes), index)


def simulate_measurements(images, op, seed: int = 0):
    """y = A x + noise with a fixed seed (noise drawn on the CPU, so every device sees the same y)."""
    import torch

    try:
        from ..data import simulate
    except ImportError:
        simulate = None
    if simulate is not None:
        return simulate(images, op, seed)
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        return op.measure(images, generator=g)
