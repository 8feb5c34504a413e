"""Writers of fastMRI-layout raw k-space files made from real brain slices, for tests.

The image content is real: axial slices of nibabel's ``example4d.nii.gz`` (a brain EPI shipped
with nibabel's test data). A file is written the way fastMRI's multi-coil brain files are laid
out: ``kspace`` (S, coils, H, W) complex64 with H the readout, oversampled x2 (fastMRI: 640), W
the phase-encode columns (fastMRI: 320); ``reconstruction_rss`` (S, h, w) the RSS of the coil
images centre-cropped to the recon size (fastMRI: 320x320); attributes ``max``, ``norm``,
``acquisition``, ``patient_id``; and an ``ismrmrd_header`` XML with encodedSpace / reconSpace
matrix sizes and kspace_encoding_step_1 limits. Everything here uses NumPy's FFT, independently
of mbdlprune's code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mbdlprune.operators.mri import simulate_coil_maps

EXAMPLE4D = os.path.join(os.path.dirname(__import__("nibabel").__file__), "tests", "data", "example4d.nii.gz")
ISMRMRD_NS = "http://www.ismrm.org/ISMRMRD"
#: what a single-coil file stores, as fastMRI's single-coil knee files
TARGETS_SINGLE = ("reconstruction_esc", "reconstruction_rss")


def brain_slices(n: int = 3, size: int = 64, start: int = 10, peak: float = 3e-4) -> np.ndarray:
    """``n`` axial brain slices (n, size, size) float32 from nibabel's example4d, max ``peak``.

    The 128x96 slices are cropped to the 96x96 around the head and area-resampled to ``size``;
    ``peak`` defaults to the order of fastMRI's magnitudes (~1e-4), so unit mistakes show.
    """
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    a = np.asarray(nib.load(EXAMPLE4D).dataobj, dtype=np.float32)[16:112, :, start:start + n, 0]
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[:, None]
    t = F.interpolate(t, size=(size, size), mode="area")[:, 0].numpy()
    return (t / t.max() * peak).astype(np.float32)


def fft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D FFT over the last two dims (NumPy)."""
    ax = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=ax), norm="ortho"), axes=ax)


def ifft2c(k: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse 2-D FFT over the last two dims (NumPy)."""
    ax = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=ax), norm="ortho"), axes=ax)


def crop(x: np.ndarray, h: int, w: int) -> np.ndarray:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


def smooth_phase(h: int, w: int) -> np.ndarray:
    """A smooth image phase (a ramp plus a bowl), as B0 and receive phase give real MR images."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return np.exp(1j * (0.6 * xx - 0.4 * yy + 0.8 * (xx ** 2 + yy ** 2)))


def fastmri_kspace(image: np.ndarray, coils: int = 8, oversample: int = 2, noise: float = 0.0, seed: int = 0,
                   phase: bool = True) -> dict[str, np.ndarray]:
    """Fully sampled multi-coil k-space of ``image`` (S, h, w) real.

    The image is zero padded to (oversample x h, w) along the readout (rows, as fastMRI's
    oversampled FOV), given a smooth phase, multiplied by smooth complex coil sensitivities
    (sum |S_c|^2 = 1) and Fourier transformed; complex Gaussian ``noise`` (a fraction of the
    largest k-space magnitude) is added. Returns kspace (S, C, H, W) complex64, maps (C, H, W),
    image (S, H, W) complex (the padded true image) and target (S, h, w) = RSS cropped.
    """
    s, h, w = image.shape
    big_h = oversample * h
    top = (big_h - h) // 2
    full = np.zeros((s, big_h, w), np.complex128)
    full[:, top:top + h] = image
    if phase:
        full *= smooth_phase(big_h, w)
    if coils == 1:
        maps = np.ones((1, big_h, w), np.complex128)
    else:
        m = simulate_coil_maps(coils, big_h, w).astype(np.float64)
        maps = m[..., 0] + 1j * m[..., 1]
    k = fft2c(maps[None] * full[:, None])
    if noise:
        g = np.random.default_rng(seed)
        sigma = noise * np.abs(k).max()
        k = k + sigma * (g.standard_normal(k.shape) + 1j * g.standard_normal(k.shape)) / np.sqrt(2)
    k = k.astype(np.complex64)
    target = crop(np.sqrt((np.abs(ifft2c(k.astype(np.complex128))) ** 2).sum(1)), h, w).astype(np.float32)
    return {"kspace": k, "maps": maps.astype(np.complex64), "image": full.astype(np.complex64), "target": target}


def ismrmrd_header(encoded: tuple[int, int], recon: tuple[int, int], center: int | None = None,
                   maximum: int | None = None, extra: str = "") -> bytes:
    """An ISMRMRD XML header with the matrix sizes (x = readout, y = phase) and step-1 limits."""
    center = encoded[1] // 2 if center is None else center
    maximum = encoded[1] - 1 if maximum is None else maximum
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<ismrmrdHeader xmlns="{ISMRMRD_NS}">'
        f"<studyInformation><studyTime>12:00:00</studyTime></studyInformation>"
        f"<encoding><trajectory>cartesian</trajectory>"
        f"<encodedSpace><matrixSize><x>{encoded[0]}</x><y>{encoded[1]}</y><z>1</z></matrixSize>"
        f"<fieldOfView_mm><x>440</x><y>220</y><z>7.5</z></fieldOfView_mm></encodedSpace>"
        f"<reconSpace><matrixSize><x>{recon[0]}</x><y>{recon[1]}</y><z>1</z></matrixSize>"
        f"<fieldOfView_mm><x>220</x><y>220</y><z>5</z></fieldOfView_mm></reconSpace>"
        f"<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum>"
        f"<center>{center}</center></kspace_encoding_step_1></encodingLimits></encoding>{extra}</ismrmrdHeader>"
    ).encode()


def _contents(image, coils, oversample, single_coil, noise, seed, mask, targets, header, acquisition, patient_id):
    sim = fastmri_kspace(image, 1 if single_coil else coils, oversample, noise, seed)
    k = sim["kspace"]
    s, h, w = image.shape
    arrays: dict[str, np.ndarray] = {}
    if mask is not None:  # an undersampled (test-set) file: the mask and masked k-space, no target
        m = np.asarray(mask, np.float32)
        arrays["kspace"] = (k * (m > 0)).astype(np.complex64)
        arrays["mask"] = m > 0
    else:
        arrays["kspace"] = k
        for key in targets:
            arrays[key] = sim["target"]
    if single_coil:
        arrays["kspace"] = arrays["kspace"][:, 0]
    attrs = {"max": float(sim["target"].max()), "norm": float(np.linalg.norm(sim["target"])),
             "acquisition": acquisition, "patient_id": patient_id}
    hdr = ismrmrd_header((oversample * h, w), (h, w)) if header is True else header
    return sim, arrays, attrs, hdr


def write_fastmri_h5(path: str | Path, image: np.ndarray, coils: int = 8, oversample: int = 2, *,
                     single_coil: bool = False, noise: float = 0.0, seed: int = 0, mask: np.ndarray | None = None,
                     targets: tuple[str, ...] | None = None, header: bool | bytes | None = True,
                     acquisition: str = "AXT2", patient_id: str = "7b6b8c1e0f") -> dict[str, np.ndarray]:
    """Write a fastMRI-layout ``.h5`` from ``image`` (S, h, w) real; returns :func:`fastmri_kspace`'s arrays.

    Multi-coil files store ``reconstruction_rss``; single-coil files (kspace (S, H, W)) store
    ``reconstruction_esc`` and ``reconstruction_rss`` as fastMRI's single-coil knee files do.
    ``mask`` (W,) makes an undersampled test-set file (mask stored, no target). ``header`` True
    writes :func:`ismrmrd_header`, bytes write those, None writes none.
    """
    import h5py

    targets = targets if targets is not None else (TARGETS_SINGLE if single_coil else ("reconstruction_rss",))
    sim, arrays, attrs, hdr = _contents(image, coils, oversample, single_coil, noise, seed, mask, targets, header,
                                        acquisition, patient_id)
    with h5py.File(path, "w") as f:
        for key, a in arrays.items():
            f.create_dataset(key, data=a)
        if hdr is not None:
            f.create_dataset("ismrmrd_header", data=hdr)
        for key, v in attrs.items():
            f.attrs[key] = v
    return sim



def write_fastmri_npz(path: str | Path, image: np.ndarray, coils: int = 8, oversample: int = 2, *,
                      single_coil: bool = False, noise: float = 0.0, seed: int = 0, mask: np.ndarray | None = None,
                      targets: tuple[str, ...] | None = None, header: bool | bytes | None = True,
                      acquisition: str = "AXT2", patient_id: str = "7b6b8c1e0f") -> dict[str, np.ndarray]:
    """The same contents as :func:`write_fastmri_h5` in an ``.npz``: the arrays under the same
    names, the header and the attributes as 0-d arrays."""
    targets = targets if targets is not None else (TARGETS_SINGLE if single_coil else ("reconstruction_rss",))
    sim, arrays, attrs, hdr = _contents(image, coils, oversample, single_coil, noise, seed, mask, targets, header,
                                        acquisition, patient_id)
    extra = {k: np.array(v) for k, v in attrs.items()}
    if hdr is not None:
        extra["ismrmrd_header"] = np.array(hdr)
    np.savez(path, **arrays, **extra)
    return sim
