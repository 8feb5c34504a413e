"""The raw k-space volume (:class:`RawVolume`) and the names of the targets a file may store.

The one type the reader (:mod:`.raw`), the fastMRI protocol (:mod:`.raw_protocol`), the coil
maps and the fine-tuning dataset share; it has a module of its own so that none of them imports
another for it (:mod:`.raw_reader` takes :data:`TARGET_KEYS` from here too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

TARGET_KEYS = ("reconstruction_rss", "reconstruction_esc")
#: where :attr:`RawVolume.target` came from
TARGET_SOURCES = ("reconstruction_rss", "reconstruction_esc", "rss of fully sampled k-space", None)


@dataclass
class RawVolume:
    """One raw k-space file: k-space, target, scalars and where they came from.

    ``kspace`` (S, coils, H, W) complex64 (H: readout, W: phase-encode columns; single-coil files
    have coils = 1 and ``single_coil=True``). ``target`` (S, h, w) float32 or None. ``maxval``:
    the file's ``max`` attribute, else the target's maximum. ``encoding``: ISMRMRD sizes in
    fastMRI's metadata names (``encoding_size``, ``recon_size``: (x, y, z) with x = readout,
    ``padding_left`` / ``padding_right``). ``slice_index``: indices in the file of the kept slices.
    """

    name: str
    path: str
    sha256: str
    kspace: np.ndarray
    target: np.ndarray | None = None
    target_source: str | None = None
    maxval: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    encoding: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None
    single_coil: bool = False
    slice_index: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def num_slices(self) -> int:
        return int(self.kspace.shape[0])

    @property
    def coils(self) -> int:
        return int(self.kspace.shape[1])

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the k-space (and of the full-FOV images reconstructed from it)."""
        return int(self.kspace.shape[-2]), int(self.kspace.shape[-1])

    @property
    def fully_sampled(self) -> bool:
        """No mask stored in the file (fastMRI stores masks only with undersampled k-space)."""
        return self.mask is None or bool(np.all(self.mask > 0))

    def record(self) -> dict[str, Any]:
        """What a report says about this volume (no arrays)."""
        return {"name": self.name, "sha256": self.sha256, "slices": self.num_slices, "coils": self.coils,
                "kspace_shape": list(self.image_shape), "single_coil": self.single_coil,
                "fully_sampled": self.fully_sampled, "target_source": self.target_source,
                "target_shape": None if self.target is None else list(self.target.shape[-2:]),
                "maxval": self.maxval, "attrs": dict(self.attrs), "encoding": dict(self.encoding),
                "notes": list(self.notes)}
