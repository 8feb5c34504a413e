"""Parallel-beam CT: a Radon transform stored as a sparse system matrix, so A^H is exactly A^T.

The matrix follows Joseph's method: each ray is sampled once per pixel column (or row, whichever
it crosses more steeply) with linear interpolation between the two nearest pixel centres and
weight = path length per step. Detector bins are 1 pixel apart and centred on the image centre.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..config import check_keys, expect
from ..errors import ConfigError, MbdlError
from . import register_operator
from .base import Operator
from .common import COMMON_KEYS, get_image_size, get_int, get_noise_sigma, where_of

CT_KEYS = (*COMMON_KEYS, "channels", "angles", "detector_size")
DEFAULT_ANGLES = 180


def radon_matrix(height: int, width: int, angles_deg: np.ndarray, detector_size: int):
    """COO entries (rows, cols, values) of the (angles * detector_size, H * W) system matrix.

    Rows index (angle, detector bin), columns index pixels (row-major); entries are unsorted.
    """
    cx, cy = (width - 1) / 2, (height - 1) / 2
    s = (np.arange(detector_size) - (detector_size - 1) / 2)[None, :, None]
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    march_cols = np.abs(np.sin(theta)) >= np.abs(np.cos(theta))
    rows, cols, vals = [], [], []
    for by_cols in (True, False):
        n_major, n_minor = (width, height) if by_cols else (height, width)
        sel = np.nonzero(march_cols == by_cols)[0]
        n_chunks = max(1, math.ceil(len(sel) * detector_size * n_major / 2e6))
        for chunk in np.array_split(sel, n_chunks) if len(sel) else ():
            th = theta[chunk][:, None, None]
            # Ray direction in (column, row) pixel coordinates, rows pointing down.
            dc, dr = -np.sin(th), -np.cos(th)
            col0, row0 = cx + s * np.cos(th), cy - s * np.sin(th)
            major = np.arange(n_major)[None, None, :]
            if by_cols:
                minor, weight = row0 + (major - col0) * (dr / dc), 1.0 / np.abs(dc)
            else:
                minor, weight = col0 + (major - row0) * (dc / dr), 1.0 / np.abs(dr)
            lo = np.floor(minor).astype(np.int64)
            frac = minor - lo
            for off, w in ((0, 1.0 - frac), (1, frac)):
                idx = lo + off
                a, d, m = np.nonzero((idx >= 0) & (idx < n_minor) & (w > 1e-12))
                r, c = (idx[a, d, m], m) if by_cols else (m, idx[a, d, m])
                rows.append(chunk[a] * detector_size + d)
                cols.append(r * width + c)
                vals.append((w * weight)[a, d, m])
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _sorted_entries(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_pix: int):
    """Sort COO entries by (row, column) and sum duplicates, as a coalesced sparse tensor requires."""
    key = rows * n_pix + cols
    order = np.argsort(key, kind="stable")
    key, vals = key[order], vals[order]
    if len(key) > 1 and not (np.diff(key) > 0).all():
        key, inverse = np.unique(key, return_inverse=True)
        vals = np.bincount(inverse.ravel(), weights=vals, minlength=len(key))
    return key // n_pix, key % n_pix, vals


def _crow(rows: np.ndarray, n_rows: int, itype=np.int64) -> torch.Tensor:
    """CSR row pointers of sorted row indices."""
    counts = np.bincount(rows, minlength=n_rows)
    return torch.as_tensor(np.concatenate(([0], np.cumsum(counts))).astype(itype))


class _SparseMatmul(torch.autograd.Function):
    """M @ X with a precomputed transpose for the backward pass (itself differentiable)."""

    @staticmethod
    def forward(ctx, x, mat, mat_t):
        ctx.save_for_backward(mat, mat_t)
        return mat @ x

    @staticmethod
    def backward(ctx, grad):
        mat, mat_t = ctx.saved_tensors
        return _SparseMatmul.apply(grad, mat_t, mat), None, None


class CTOperator(Operator):
    """Radon transform (N, 1, H, W) -> sinogram (N, 1, angles, detector_size).

    The system matrix and its transpose are kept in CSR form as buffers: ``sys_crow``, ``sys_col``,
    ``sys_values`` (rows = angle * detector_size + bin, columns = pixels row-major) and
    ``sys_crow_t``, ``sys_col_t``, ``perm_t`` (transpose values are ``sys_values[perm_t]``).
    """

    kind = "ct"

    def __init__(self, image_size: tuple[int, int], angles_deg, detector_size: int,
                 noise_sigma: float = 0.0, spec: dict[str, Any] | None = None):
        super().__init__(image_size, 1, noise_sigma, spec)
        h, w = self.image_size
        self.detector_size = int(detector_size)
        self.num_angles = len(angles_deg)
        n_rays = self.num_angles * self.detector_size
        rows, cols, vals = _sorted_entries(*radon_matrix(h, w, np.asarray(angles_deg), self.detector_size), h * w)
        perm_t = np.argsort(cols * n_rays + rows, kind="stable")
        # 32-bit indices halve the memory of the matrix whenever they can address it.
        itype = np.int32 if max(len(vals), n_rays, h * w) < 2 ** 31 - 1 else np.int64
        self.register_buffer("angles_deg", torch.as_tensor(np.asarray(angles_deg, dtype=np.float32)))
        self.register_buffer("sys_crow", _crow(rows, n_rays, itype))
        self.register_buffer("sys_col", torch.as_tensor(cols.astype(itype)))
        self.register_buffer("sys_values", torch.as_tensor(vals, dtype=torch.float32))
        self.register_buffer("sys_crow_t", _crow(cols, h * w, itype))
        self.register_buffer("sys_col_t", torch.as_tensor(rows[perm_t].astype(itype)))
        self.register_buffer("perm_t", torch.as_tensor(perm_t.astype(itype)))

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        """(1, angles, detector_size) of one sinogram."""
        return (1, self.num_angles, self.detector_size)

    def _matrices(self, dtype: torch.dtype):
        n_rays, n_pix = self.num_angles * self.detector_size, self.image_size[0] * self.image_size[1]
        vals = self.sys_values.to(dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            mat = torch.sparse_csr_tensor(self.sys_crow, self.sys_col, vals, (n_rays, n_pix),
                                          check_invariants=False)
            mat_t = torch.sparse_csr_tensor(self.sys_crow_t, self.sys_col_t, vals[self.perm_t], (n_pix, n_rays),
                                            check_invariants=False)
        return mat, mat_t

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self.check_image(x)
        mat, mat_t = self._matrices(x.dtype)
        out = _SparseMatmul.apply(x.reshape(x.shape[0], -1).t(), mat, mat_t)
        return out.t().reshape(x.shape[0], *self.measurement_shape)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        if y.dim() != 4 or tuple(y.shape[1:]) != self.measurement_shape:
            raise MbdlError(f"sinogram of shape {tuple(y.shape)} does not fit the ct operator "
                            f"(expects (N, {', '.join(map(str, self.measurement_shape))}))",
                            "check angles and detector_size in the operator spec")
        mat, mat_t = self._matrices(y.dtype)
        out = _SparseMatmul.apply(y.reshape(y.shape[0], -1).t(), mat_t, mat)
        return out.t().reshape(y.shape[0], 1, *self.image_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, angles={self.num_angles}, detector_size={self.detector_size}"


def _angles(table: Mapping[str, Any], where: str) -> tuple[Any, np.ndarray]:
    value = expect(table.get("angles", DEFAULT_ANGLES), (int, list), "angles", where)
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{where}: angles must be >= 1, got {value}", "set angles to a number of views such as 60")
        return value, np.arange(value) * 180.0 / value
    if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where}: angles must be a number of views or a non-empty list of degrees, got {value!r}",
                          "write e.g. angles = 60 or angles = [0.0, 45.0, 90.0, 135.0]")
    degrees = [float(v) for v in value]
    if not np.isfinite(degrees).all():
        raise ConfigError(f"{where}: angles holds non-finite values", "list finite angles in degrees")
    return degrees, np.asarray(degrees)


@register_operator("ct")
def build_ct(table: Mapping[str, Any], files) -> CTOperator:
    """Build the parallel-beam CT operator from an ``[operator]`` table."""
    where = where_of("ct")
    check_keys(table, CT_KEYS, where)
    h, w = get_image_size(table, where)
    if get_int(table, "channels", 1, where) != 1:
        raise ConfigError(f"{where}: channels must be 1 for ct", "remove channels or set it to 1")
    spec_angles, degrees = _angles(table, where)
    detector = get_int(table, "detector_size", math.ceil(math.sqrt(2) * max(h, w)), where, minimum=1,
                       maximum=4 * max(h, w) + 16)
    if len(degrees) > 8192:
        raise ConfigError(f"{where}: {len(degrees)} angles are beyond the supported 8192", "use fewer projection angles")
    spec = {"kind": "ct", "image_size": [h, w], "noise_sigma": get_noise_sigma(table, where), "channels": 1,
            "angles": spec_angles, "detector_size": detector}
    return CTOperator((h, w), degrees, detector, spec["noise_sigma"], spec)
