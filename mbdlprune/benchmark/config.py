"""Benchmark settings: :class:`BenchConfig`, one typed, strict place for every option of a comparison.

The CLI, sweeps, pipelines and the demo all build a BenchConfig, so each setting is spelled,
defaulted and checked once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import StepConfig, expect_number
from ..errors import MbdlError
from .timing import DEFAULT_REPEATS, DEFAULT_WARMUP

#: option: (integer, minimum, may be None)
_NUMBERS = {
    "threads": (True, 1, True), "batch_size": (True, 1, False), "warmup": (True, 0, False),
    "repeats": (True, 1, False), "max_images": (True, 1, True), "seed": (True, 0, False),
    "max_iter": (True, 1, True), "tol": (False, None, True), "min_speedup": (False, None, True),
    "max_psnr_drop": (False, None, True), "check_every": (True, 1, True), "warm_batches": (True, 1, False),
}


@dataclass
class BenchConfig(StepConfig):
    """How models are compared: device, DEQ solver overrides, timing, metric, data and gates.

    ``solver``/``tol``/``max_iter``: None keeps the first (original) model's settings, applied
    to every DEQ alike. ``threads``: torch intra-op threads for the run (restored afterwards).
    ``min_speedup``/``max_psnr_drop``: CI gates evaluated on every pruned model.
    ``metric``: a definition of :data:`mbdlprune.metrics.METRICS`, or ``auto`` (``fastmri`` on raw
    k-space, ``plain`` on images). ``kspace_scale`` and ``coil_maps`` apply to raw k-space data
    (:mod:`.rawdata`): how k-space is scaled for the models, and how coil maps are estimated for
    models that take them from the operator. ``compile`` / ``channels_last`` / ``bf16``: also time
    every model on the fast inference path (:mod:`.fastpath`: priors compiled / channels-last /
    in bfloat16), side by side with the eager timings; with ``bf16`` the fast path's quality is
    scored too, since its outputs differ. ``check_every``: every DEQ's solver reads its residual
    on the host only every k iterations (fewer GPU synchronisations; the same results).
    ``warm_start``: also reconstruct and time every volume's slices in order, each DEQ solve
    started from the previous slice's fixed point (:mod:`.warmstart`), reported apart;
    ``warm_batches``: how many batches of one volume its cold and warm passes time.
    """

    device: str = "auto"
    solver: str | None = None
    tol: float | None = None
    max_iter: int | None = None
    warmup: int = DEFAULT_WARMUP
    repeats: int = DEFAULT_REPEATS
    batch_size: int = 1
    metric: str = "auto"
    seed: int = 0
    max_images: int | None = None
    fit: str = "error"
    interleave: bool = True
    threads: int | None = None
    min_speedup: float | None = None
    max_psnr_drop: float | None = None
    kspace_scale: str = "auto"
    coil_maps: str = "acs"
    compile: bool = False
    channels_last: bool = False
    bf16: bool = False
    check_every: int | None = None
    warm_start: bool = False
    warm_batches: int = 8

    WHERE = "bench settings"

    def validate_file(self, where: str) -> None:
        self.validate(where)  # messages name the file's keys, not the command line's flags

    def validate(self, where: str | None = None) -> None:
        """Refuse, in one line and before any work, settings no benchmark can run with.

        Messages name command-line flags (``--warmup``), or with ``where`` (a file's section)
        the keys as written there.
        """
        from ..data import FITS
        from ..metrics import get_definition

        def name(key: str) -> str:
            return key if where else f"--{key.replace('_', '-')}"

        ctx = where or "bench"
        for key, (integer, minimum, optional) in _NUMBERS.items():
            value = getattr(self, key)
            if value is None and optional:
                continue
            expect_number(value, name(key), ctx, integer=integer, minimum=minimum)
        for key in ("tol", "min_speedup"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise MbdlError(f"{ctx}: {name(key)} must be positive, got {value}", f"set {name(key)} above 0")
        for key in ("device", "metric", "fit", "kspace_scale", "coil_maps") + (("solver",) if self.solver is not None else ()):
            if not isinstance(getattr(self, key), str):
                raise MbdlError(f"{ctx}: {name(key)} must be a string, got {getattr(self, key)!r:.60}", f"fix {name(key)}")
        if self.fit not in FITS:
            raise MbdlError(f"{ctx}: unknown {name('fit')} {self.fit!r}", f"use one of: {', '.join(FITS)}")
        if self.metric != "auto":
            get_definition(self.metric)
        from .rawdata import COIL_MAP_METHODS, KSPACE_SCALES

        for key, allowed in (("kspace_scale", KSPACE_SCALES), ("coil_maps", COIL_MAP_METHODS)):
            if getattr(self, key) not in allowed:
                raise MbdlError(f"{ctx}: unknown {name(key)} {getattr(self, key)!r}", f"use one of: {', '.join(allowed)}")
        for key in ("interleave", "compile", "channels_last", "bf16", "warm_start"):
            if not isinstance(getattr(self, key), bool):
                raise MbdlError(f"{ctx}: {name(key)} must be true or false, got {getattr(self, key)!r}",
                                f"write {key} = true or false")


def check_bench_options(**values: Any) -> None:
    """Check some bench settings by name (those not given keep their defaults)."""
    BenchConfig(**values).validate()
