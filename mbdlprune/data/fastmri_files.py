"""fastMRI-layout multi-coil ``.h5`` files made from real magnitude images.

:func:`write_fastmri_file` turns image slices (S, H, W) into a file laid out as fastMRI's
multi-coil brain files are:

* the image is placed in a field of view oversampled ``oversample`` x along the readout (the
  first image axis, H): zero padding to (oversample * H, W), as fastMRI brain's 640-row readout
  for a 320 x 320 reconstruction;
* multiplied by smooth complex coil sensitivities (:func:`coil_sensitivities`: the birdcage-like
  maps of :func:`mbdlprune.operators.mri.simulate_coil_maps`, on the oversampled grid, with the
  coil array turned by an angle drawn from ``seed``; sum_c |S_c|^2 = 1 at every pixel);
* Fourier transformed with the centred orthonormal 2-D FFT of :mod:`mbdlprune.operators.fft`
  (the same as ``fastmri.fft2c``) -> ``kspace`` (S, coils, oversample * H, W) complex64;
* ``reconstruction_rss`` (S, H, W) float32: the root-sum-of-squares of the coil images
  (inverse FFT of the stored complex64 k-space) centre-cropped to (H, W) the fastMRI way
  (rows from (oversample * H - H) // 2), which equals the magnitude of the image given;
* attributes ``max`` (the RSS volume's maximum), ``norm`` (its Frobenius norm) and
  ``acquisition``, and an ``ismrmrd_header`` (XML bytes) with the encodedSpace / reconSpace
  matrix sizes and the ``kspace_encoding_step_1`` limits (``center`` = W // 2, ``maximum`` = W - 1:
  no padded columns), which fastMRI's ``SliceDataset`` reads for its crop and padding.

No patient attribute is written and no noise is added. The magnitude scale of the images is kept
as given: the shipped VarNet example (``mbdlprune.examples``, ``varnet``) was trained on slices
with a largest magnitude of 1 and takes its k-space unscaled (``scale="none"`` in
:func:`mbdlprune.data.raw.prepare_eval`, as fastMRI's VarNet does).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
#: fastMRI's multi-coil target dataset
TARGET_KEY = "reconstruction_rss"


def coil_sensitivities(coils: int, height: int, width: int, rotation: float = 0.0) -> np.ndarray:
    """Smooth complex coil sensitivities (coils, H, W) complex64 with sum_c |S_c|^2 = 1.

    The maps of :func:`mbdlprune.operators.mri.simulate_coil_maps` (coil c on a circle of radius
    1.5 half-FOVs at angle 2 pi c / coils, Gaussian magnitude, phase ramp towards it) with the
    array turned by ``rotation`` radians; ``rotation = 0`` gives exactly ``simulate_coil_maps``.
    One coil gives ones.
    """
    if coils == 1:
        return np.ones((1, height, width), np.complex64)
    if rotation == 0.0:
        from ..operators.mri import simulate_coil_maps

        m = simulate_coil_maps(coils, height, width)
        return (m[..., 0] + 1j * m[..., 1]).astype(np.complex64)
    half = max(height, width) / 2
    yy, xx = np.meshgrid((np.arange(height) - (height - 1) / 2) / half,
                         (np.arange(width) - (width - 1) / 2) / half, indexing="ij")
    theta = 2 * np.pi * np.arange(coils)[:, None, None] / coils + rotation
    cx, cy = 1.5 * np.cos(theta), 1.5 * np.sin(theta)
    mag = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 2.0)
    phase = theta + 0.5 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta))
    maps = mag * np.exp(1j * phase)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
    return maps.astype(np.complex64)


def coil_rotation(seed: int, coils: int) -> float:
    """The coil array's turn for a file written with ``seed``: uniform in [0, 2 pi / coils)."""
    return float(np.random.default_rng(seed).uniform(0.0, 2 * np.pi / max(coils, 1))) if coils > 1 else 0.0


def check_images(images: Any, where: str = "images") -> np.ndarray:
    """Real magnitude images as (S, H, W) float32: a 2-D image becomes one slice; complex, empty or
    non-finite input is refused."""
    a = np.asarray(images)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{where} are {a.dtype}, not real magnitude images", "pass real (S, H, W) magnitude images")
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or min(a.shape) < 1:
        raise DataError(f"{where} have shape {a.shape}, not (slices, H, W)", "pass a stack of 2-D slices (S, H, W)")
    if not np.isfinite(a).all():
        raise DataError(f"{where} hold NaN or infinite values", "pass finite images")
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_setup(coils: int, oversample: int) -> None:
    from ..operators.mri import MAX_COILS

    for name, v, top in (("coils", coils, MAX_COILS), ("oversample", oversample, 16)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= top:
            raise DataError(f"{name} must be an integer from 1 to {top}, got {v!r}", f"pass {name}=4, for example")


def simulate_kspace(images: Any, *, coils: int = 4, oversample: int = 2, rotation: float = 0.0,
                    maps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fully sampled multi-coil k-space of magnitude images, and its RSS target.

    ``images`` (S, H, W) real -> ``kspace`` (S, coils, oversample * H, W) complex64 (zero padding
    along the readout, coil sensitivities :func:`coil_sensitivities` with ``rotation`` or the
    given ``maps`` (coils, oversample * H, W), centred orthonormal FFT) and ``target`` (S, H, W)
    float32, the RSS of the coil images of that complex64 k-space, centre-cropped to (H, W).
    """
    import torch

    from ..operators.fft import fft2c
    from .raw_protocol import center_crop, rss_target

    x = check_images(images)
    _check_setup(coils, oversample)
    s, h, w = x.shape
    big = oversample * h
    if maps is None:
        maps = coil_sensitivities(coils, big, w, rotation)
    maps = np.asarray(maps)
    if maps.shape != (coils, big, w):
        raise DataError(f"coil maps of shape {maps.shape} do not fit {coils} coils of {big} x {w}",
                        "pass maps (coils, oversample * H, W)")
    top = (big - h) // 2
    full = np.zeros((s, big, w), np.complex64)
    full[:, top:top + h] = x
    coil_images = torch.view_as_real(torch.from_numpy(maps[None] * full[:, None]).to(torch.complex64))
    k = torch.view_as_complex(fft2c(coil_images).contiguous()).numpy().astype(np.complex64)
    target = np.ascontiguousarray(center_crop(rss_target(k), (h, w)), dtype=np.float32)
    return k, target


def ismrmrd_header(encoded: tuple[int, int], recon: tuple[int, int]) -> bytes:
    """An ISMRMRD XML header as fastMRI's files carry: encodedSpace / reconSpace matrix sizes
    (x = readout, y = phase encode, z = 1) and ``kspace_encoding_step_1`` limits with
    ``center`` = y // 2 and ``maximum`` = y - 1 (fastMRI's padding_left = 0, padding_right = y)."""
    ex, ey = int(encoded[0]), int(encoded[1])
    rx, ry = int(recon[0]), int(recon[1])
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n'
        f'<ismrmrdHeader xmlns="{ISMRMRD_NS}">'
        f"<encoding><trajectory>cartesian</trajectory>"
        f"<encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize>"
        f"<fieldOfView_mm><x>{2.0 * ex:g}</x><y>{2.0 * ey:g}</y><z>2</z></fieldOfView_mm></encodedSpace>"
        f"<reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize>"
        f"<fieldOfView_mm><x>{2.0 * rx:g}</x><y>{2.0 * ry:g}</y><z>2</z></fieldOfView_mm></reconSpace>"
        f"<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{ey - 1}</maximum>"
        f"<center>{ey // 2}</center></kspace_encoding_step_1>"
        f"<slice><minimum>0</minimum><maximum>0</maximum><center>0</center></slice></encodingLimits>"
        f"</encoding></ismrmrdHeader>"
    ).encode("utf-8")


def write_fastmri_file(path: str | Path, images: Any, *, coils: int = 4, oversample: int = 2, seed: int = 0,
                       acquisition: str = "AXT1", force: bool = False) -> Path:
    """Write a fastMRI-layout multi-coil ``.h5`` from real magnitude images (S, H, W); returns its path.

    Datasets ``kspace`` (S, coils, oversample * H, W) complex64, ``reconstruction_rss`` (S, H, W)
    float32 and ``ismrmrd_header``; attributes ``max``, ``norm``, ``acquisition`` (see the module
    notes). ``seed`` turns the coil array (:func:`coil_rotation`), the same for every slice of the
    file. Written through :func:`mbdlprune.io.write_file`: atomic, and an existing file is
    replaced only with ``force``. :func:`mbdlprune.data.raw.read_raw_file` reads it back as fully
    sampled with ``target`` equal to the stored RSS.
    """
    import h5py

    from ..io import write_file

    x = check_images(images)
    _check_setup(coils, oversample)
    if not isinstance(acquisition, str) or len(acquisition) > 64:
        raise DataError(f"acquisition must be a short string, got {acquisition!r}", 'pass e.g. acquisition="AXT1"')
    k, target = simulate_kspace(x, coils=coils, oversample=oversample, rotation=coil_rotation(seed, coils))
    s, h, w = x.shape
    header = ismrmrd_header((oversample * h, w), (h, w))
    peak = float(target.max())
    norm = float(np.linalg.norm(target.astype(np.float64)))
    if not (math.isfinite(peak) and peak > 0):
        raise DataError("the images are all zero", "pass images with some signal")

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=k)
            f.create_dataset(TARGET_KEY, data=target)
            f.create_dataset("ismrmrd_header", data=np.bytes_(header))
            f.attrs["max"] = peak
            f.attrs["norm"] = norm
            f.attrs["acquisition"] = acquisition

    return write_file(path, write, force=force)


def images_from_nifti(path: str | Path) -> np.ndarray:
    """The slices (S, H, W) float32 of a 3-D NIfTI stored as (H, W, S), the layout of the shipped
    ``*_slices.nii.gz`` files (``read_volumes(axis=2)`` gives the same slices)."""
    import nibabel as nib

    try:
        a = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as e:  # noqa: BLE001  (a missing or foreign file: one line)
        raise DataError(f"cannot read {Path(path).name}: {type(e).__name__}: {e}", "pass a 3-D NIfTI file") from None
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise DataError(f"{Path(path).name} has shape {a.shape}, not (H, W, slices)", "pass a 3-D NIfTI file")
    return check_images(np.moveaxis(a, -1, 0), Path(path).name)
