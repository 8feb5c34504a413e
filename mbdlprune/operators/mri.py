"""Cartesian multi-coil MRI: y = M ⊙ F(S ⊙ x) with a centred orthonormal 2-D FFT F.

Images are (N, 2, H, W) (real, imaginary); measurements are (N, coils, H, W, 2) in fastMRI's
layout, zero where not sampled. Masks select phase-encode columns (the last dim, W).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..config import check_keys
from ..errors import ConfigError, MbdlError
from . import register_operator
from .base import Operator
from .common import (COMMON_KEYS, get_float, get_image_size, get_int, get_noise_sigma, get_str,
                     reject_with, where_of)
from .fft import (as_complex, chan_to_complex, complex_conj, complex_mul, complex_to_chan, fft2c, fft2c_complex,
                  ifft2c, ifft2c_complex)
from .files import SpecFiles, binary_mask, check_mask_coverage, is_embedded_ref, looks_like_path
from .masks import (LEGACY_MASK_RULE, MASK_RULE, MASK_RULES, MASK_TYPES, RULE_MASK_TYPES, current_equivalent,
                    fastmri_low_frequencies, fraction_center_lines, make_mask, uniform_center_lines,
                    unknown_mask_error)

MRI_KEYS = (*COMMON_KEYS, "channels", "acceleration", "center_fraction", "mask", "mask_rule", "seed", "coils",
            "coil_maps", "num_low_frequencies")
#: ``num_low_frequencies = "auto"``: fastMRI's detection from the mask (its VarNet with ``None``)
AUTO = "auto"
DEFAULT_CENTER_FRACTION = 0.08
MAX_COILS = 128
MAX_COIL_PIXELS = 1 << 27
COIL_DATASETS = ("coil_maps", "sens_maps")


class MRIOperator(Operator):
    """Undersampled Cartesian MRI with coil sensitivities normalised to sum_c |S_c|^2 = 1 when simulated.

    Buffers: ``mask`` (1, 1, 1, W, 1) or (1, 1, H, W, 1), 1 = sampled; ``coil_maps`` (coils, H, W, 2),
    or (N, coils, H, W, 2) with one set per image of a batch (maps estimated per slice from raw
    k-space: :meth:`with_sampling`, :meth:`batch`). Attributes used by unrolled networks: ``coils``
    and ``num_low_frequencies`` (the centre columns a VarNet estimates coil maps from; the spec
    key of that name).
    """

    kind = "mri"

    def __init__(self, image_size: tuple[int, int], mask: np.ndarray | torch.Tensor,
                 coil_maps: np.ndarray | torch.Tensor, num_low_frequencies: int,
                 noise_sigma: float = 0.0, spec: dict[str, Any] | None = None):
        super().__init__(image_size, 2, noise_sigma, spec)
        h, w = self.image_size
        mask = torch.as_tensor(np.asarray(mask), dtype=torch.float32)
        shape = (1, 1, 1, w, 1) if mask.dim() == 1 else (1, 1, h, w, 1)
        maps = torch.as_tensor(np.asarray(coil_maps), dtype=torch.float32)
        if maps.dim() not in (4, 5) or tuple(maps.shape[-3:]) != (h, w, 2):
            raise ValueError(f"coil_maps must be ([N,] coils, {h}, {w}, 2), got {tuple(maps.shape)}")
        self.register_buffer("mask", mask.reshape(shape))
        self.register_buffer("coil_maps", maps)
        self.coils = int(maps.shape[-4])
        self.num_low_frequencies = int(num_low_frequencies)

    @property
    def per_image_maps(self) -> bool:
        """True when ``coil_maps`` holds one set per image of a batch (N, coils, H, W, 2)."""
        return self.coil_maps.dim() == 5

    def with_sampling(self, mask: np.ndarray | torch.Tensor | None = None, coil_maps: np.ndarray | torch.Tensor | None = None,
                      num_low_frequencies: int | None = None, per_image_mask: bool = False) -> "MRIOperator":
        """A copy with another mask (W,) / (H, W) and/or coil maps ([N,] coils, H, W, 2): the
        operator of one raw volume under the fastMRI protocol (its own mask, its own maps).
        ``per_image_mask``: ``mask`` is (N, W), one row of columns per image of a batch (slices
        of different files). The spec is the original's; what differs is recorded by the caller."""
        def cpu(a) -> torch.Tensor:
            return (a if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))).detach().float().cpu()

        rows, per = (self._mask_rows(), self.per_image_mask) if mask is None else (cpu(mask), per_image_mask)
        op = MRIOperator(self.image_size, rows[0] if per else rows, cpu(self.coil_maps if coil_maps is None else coil_maps),
                         self.num_low_frequencies if num_low_frequencies is None else num_low_frequencies,
                         self.noise_sigma, dict(self.spec))
        if per:
            op.mask = rows.reshape(rows.shape[0], 1, 1, rows.shape[1], 1).clone()
        return op.to(self.mask.device)

    @property
    def per_image_mask(self) -> bool:
        """True when ``mask`` holds one row of columns per image of a batch (N, 1, 1, W, 1)."""
        return self.mask.shape[0] > 1

    def _mask_rows(self) -> torch.Tensor:
        """The mask as (W,), (H, W), or (N, W) for per-image masks."""
        if self.per_image_mask:
            return self.mask[:, 0, 0, :, 0].detach().cpu()
        return (self.mask.reshape(-1) if self.mask.shape[2] == 1 else self.mask[0, 0, :, :, 0]).detach().cpu()

    def batch(self, start: int, stop: int) -> "MRIOperator":
        """The operator for images ``start:stop`` of a batch (itself unless maps or masks are per image)."""
        if not (self.per_image_maps or self.per_image_mask):
            return self
        maps = self.coil_maps[start:stop] if self.per_image_maps else self.coil_maps
        if self.per_image_mask:
            return self.with_sampling(mask=self._mask_rows()[start:stop], coil_maps=maps, per_image_mask=True)
        return self.with_sampling(coil_maps=maps)

    @property
    def measurement_shape(self) -> tuple[int, int, int, int]:
        """(coils, H, W, 2) of one measurement."""
        return (self.coils, *self.image_size, 2)

    @property
    def acceleration(self) -> float:
        """Effective acceleration: all k-space entries / sampled entries."""
        full = self.image_size[0] * self.image_size[1]
        per_col = self.image_size[0] if self.mask.shape[2] == 1 else 1
        return full * self.mask.shape[0] / max(float(self.mask.sum()) * per_col, 1.0)

    def sens_expand(self, x: torch.Tensor) -> torch.Tensor:
        """Coil k-spaces F(S x) of images (N, 2, H, W) -> (N, coils, H, W, 2), no mask.

        In native complex arithmetic (the real/imaginary channel planes made one complex image,
        no permuted copies): the operator runs at every solver iteration, so its overhead is part
        of every model's fixed per-iteration cost.
        """
        self.check_image(x)
        if not _native_complex(x, self.coil_maps):
            return fft2c(complex_mul(self.coil_maps, chan_to_complex(x).unsqueeze(1)))
        z = torch.complex(x[:, 0], x[:, 1]).unsqueeze(1)  # (N, 1, H, W)
        return torch.view_as_real(fft2c_complex(as_complex(self.coil_maps) * z))

    def sens_reduce(self, k: torch.Tensor) -> torch.Tensor:
        """Coil combination sum_c conj(S_c) F^{-1} k_c of (N, coils, H, W, 2) -> (N, 2, H, W), no mask."""
        self._check_measurement(k)
        if not _native_complex(k, self.coil_maps):
            img = complex_mul(complex_conj(self.coil_maps), ifft2c(k)).sum(1)
            return complex_to_chan(img).contiguous()
        img = (as_complex(self.coil_maps).conj() * ifft2c_complex(as_complex(k))).sum(1)  # (N, H, W)
        return torch.stack((img.real, img.imag), 1)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self.sens_expand(x) * self.mask

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self._check_measurement(y)
        return self.sens_reduce(y * self.mask)

    def noise_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Complex Gaussian noise only on sampled entries (sigma per real and imaginary part)."""
        return self.mask

    def _check_measurement(self, y: torch.Tensor) -> None:
        if y.dim() != 5 or tuple(y.shape[1:]) != self.measurement_shape:
            raise MbdlError(f"k-space of shape {tuple(y.shape)} does not fit the mri operator "
                            f"(expects (N, {', '.join(map(str, self.measurement_shape))}))",
                            "check coils and image_size in the operator spec")

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, coils={self.coils}, acceleration={self.acceleration:.2f}, "
                f"num_low_frequencies={self.num_low_frequencies}")


def _native_complex(data: torch.Tensor, maps: torch.Tensor) -> bool:
    """Whether images or k-space and coil maps can take the complex-dtype path (float32/float64,
    the same dtype); other dtypes (half precision) keep the real (re, im) arithmetic."""
    return data.dtype == maps.dtype and data.dtype in (torch.float32, torch.float64)


def simulate_coil_maps(coils: int, height: int, width: int) -> np.ndarray:
    """Smooth birdcage-like sensitivities (coils, H, W, 2) with sum_c |S_c|^2 = 1 at every pixel.

    Coil c sits on a circle of radius 1.5 (half field of view = 1) at angle 2 pi c / coils with a
    Gaussian magnitude profile of width 1 and a phase ramp pointing towards it.
    """
    half = max(height, width) / 2
    yy, xx = np.meshgrid((np.arange(height) - (height - 1) / 2) / half,
                         (np.arange(width) - (width - 1) / 2) / half, indexing="ij")
    theta = 2 * np.pi * np.arange(coils)[:, None, None] / coils
    cx, cy = 1.5 * np.cos(theta), 1.5 * np.sin(theta)
    mag = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 2.0)
    phase = theta + 0.5 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta))
    maps = mag * np.exp(1j * phase)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
    return np.stack((maps.real, maps.imag), -1).astype(np.float32)


def coil_maps_from_array(arr: np.ndarray, height: int, width: int, where: str) -> np.ndarray:
    """Accept (coils, H, W) complex, (coils, H, W, 2) real, (coils, H, W) real or (H, W) maps."""
    if arr.dtype.kind == "c":
        arr = np.stack((arr.real, arr.imag), -1)
    elif not (arr.ndim == 4 and arr.shape[-1] == 2):
        arr = np.stack((arr, np.zeros_like(arr)), -1)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or tuple(arr.shape[1:3]) != (height, width):
        raise ConfigError(f"{where}: coil_maps file has shape {tuple(arr.shape)} (as real/imag), "
                          f"expected (coils, {height}, {width}) complex or (coils, {height}, {width}, 2)",
                          "save maps matching image_size, or change image_size")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{where}: coil_maps file holds NaN or infinite values", "fix the coil maps")
    return arr.astype(np.float32)


def _num_low_frequencies(table: Mapping[str, Any], mask: np.ndarray, default: int | str, width: int,
                         where: str) -> int:
    """``num_low_frequencies``: a count of centre columns, or ``"auto"`` (fastMRI's detection)."""
    value = table.get("num_low_frequencies", default)
    if value == AUTO:
        # fastMRI reads the first row of the mask (mask[:, 0, 0, :, 0])
        return fastmri_low_frequencies(mask if mask.ndim == 1 else mask[0])
    if isinstance(value, str):
        raise ConfigError(f"{where}: num_low_frequencies must be an integer or \"auto\", got {value!r}",
                          'write num_low_frequencies = "auto" (fastMRI\'s detection from the mask) or a count, e.g. 26')
    return get_int({"num_low_frequencies": value}, "num_low_frequencies", None, where, minimum=1, maximum=width)


def _mask_rule(table: Mapping[str, Any], files: SpecFiles, where: str) -> int:
    """``mask_rule``: the version of the generated-mask rules (masks.py). Absent: the current rule
    for a spec the caller gives, the legacy rule for a spec recorded in a model file (files
    written before the key existed)."""
    if "mask_rule" not in table:
        return LEGACY_MASK_RULE if files.from_model_file else MASK_RULE
    value = table["mask_rule"]
    if isinstance(value, bool) or not isinstance(value, int) or value not in MASK_RULES:
        raise ConfigError(f"{where}: mask_rule must be one of {', '.join(map(str, MASK_RULES))}, got {value!r}",
                          f"write mask_rule = {MASK_RULE} (the current rules) or {LEGACY_MASK_RULE} "
                          "(the rules of files written before mask_rule existed), or remove it")
    return int(value)


def _mask_from_spec(table: Mapping[str, Any], files: SpecFiles, hw: tuple[int, int], where: str,
                    spec: dict[str, Any]) -> tuple[np.ndarray, int]:
    h, w = hw
    mask = get_str(table, "mask", "uniform", where)
    rule = _mask_rule(table, files, where) if mask in MASK_TYPES else None
    if rule is not None and mask not in RULE_MASK_TYPES[rule]:
        e = unknown_mask_error(mask, rule)
        raise ConfigError(f"{where}: {e.problem}", e.fix)
    if rule is not None:
        accel = get_float(table, "acceleration", 4, where, minimum=1.0, maximum=float(w))
        seed = get_int(table, "seed", 0, where, minimum=0, maximum=2**63 - 1)
        if "center_fraction" in table:
            cf = get_float(table, "center_fraction", None, where, minimum=0.0, maximum=1.0, max_open=True)
            n_center = fraction_center_lines(w, cf)
            spec["center_fraction"] = cf
        elif mask == "uniform":
            n_center = uniform_center_lines(w, accel, rule)
        else:
            n_center = fraction_center_lines(w, DEFAULT_CENTER_FRACTION)
        try:
            arr = make_mask(mask, w, accel, n_center, seed, rule=rule)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e.problem}", e.fix) from None
        # a legacy spec whose mask and centre the current rules rebuild is recorded under them, so an
        # old model file and one written now compare equal when they describe the same operator
        same = current_equivalent(mask, rule, w, accel, n_center, seed, arr, "center_fraction" in table)
        if same is not None:
            mask, rule = same, MASK_RULE
        spec.update(mask=mask, mask_rule=rule, acceleration=accel, seed=seed)
        # a mask without a centre block: detect, as fastMRI does for num_low_frequencies = 0
        return arr, _num_low_frequencies(table, arr, n_center if n_center > 0 else AUTO, w, where)
    if not (looks_like_path(mask) or is_embedded_ref(mask) or files.from_model_file):
        raise ConfigError(f"{where}: unknown mask {mask!r}",
                          f"use one of {', '.join(MASK_TYPES)} or a path to a .npy/.nii/.nii.gz/.h5 mask")
    arr, ref = files.load(mask, "mask", where, datasets=("mask",))
    reject_with(table, ("acceleration", "center_fraction", "mask_rule"), "with a mask file", where)
    arr = binary_mask(np.squeeze(arr) if arr.ndim > 1 else arr, "mask", where)
    if not (arr.shape == (w,) or arr.shape == (h, w)):
        raise ConfigError(f"{where}: mask file has shape {arr.shape}, expected ({w},) or ({h}, {w})",
                          "save a 1-D mask over the W columns or an H x W mask, or change image_size")
    check_mask_coverage(arr, "mask", where)
    spec["mask"] = ref
    if "seed" in table:
        spec["seed"] = get_int(table, "seed", 0, where, minimum=0, maximum=2**63 - 1)
    return arr, _num_low_frequencies(table, arr, AUTO, w, where)


@register_operator("mri")
def build_mri(table: Mapping[str, Any], files: SpecFiles) -> MRIOperator:
    """Build the MRI operator from an ``[operator]`` table (see docs/operators.md)."""
    where = where_of("mri")
    check_keys(table, MRI_KEYS, where)
    h, w = get_image_size(table, where)
    if get_int(table, "channels", 2, where) != 2:
        raise ConfigError(f"{where}: channels must be 2 (real, imaginary) for mri", "remove channels or set it to 2")
    spec: dict[str, Any] = {"kind": "mri", "image_size": [h, w], "noise_sigma": get_noise_sigma(table, where),
                            "channels": 2}
    mask, n_center = _mask_from_spec(table, files, (h, w), where, spec)
    if "num_low_frequencies" in table or spec["mask"] not in MASK_TYPES:
        # the count chosen, so a reload uses the same centre (a generated mask's own count follows
        # from the keys recorded already, so older files and new ones record the same spec)
        spec["num_low_frequencies"] = n_center
    if "coil_maps" in table:
        arr, ref = files.load(get_str(table, "coil_maps", None, where), "coil_maps", where, datasets=COIL_DATASETS)
        maps = coil_maps_from_array(arr, h, w, where)
        if "coils" in table and get_int(table, "coils", 1, where) != maps.shape[0]:
            raise ConfigError(f"{where}: coils = {table['coils']} but the coil_maps file holds {maps.shape[0]} coils",
                              "remove coils (it is read from the file) or use matching coil maps")
        spec["coil_maps"] = ref
    else:
        coils = get_int(table, "coils", 1, where, minimum=1, maximum=MAX_COILS)
        if coils * h * w > MAX_COIL_PIXELS:
            raise ConfigError(f"{where}: {coils} coils of {h} x {w} are beyond the supported size ({MAX_COIL_PIXELS:,} coil pixels)",
                              "use fewer coils or smaller images")
        maps = simulate_coil_maps(coils, h, w) if coils > 1 else \
            np.stack((np.ones((1, h, w)), np.zeros((1, h, w))), -1).astype(np.float32)
    spec["coils"] = int(maps.shape[0])
    return MRIOperator((h, w), mask, maps, n_center, spec["noise_sigma"], spec)
