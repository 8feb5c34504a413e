"""Timing of whole reconstructions: devices, interleaved rounds, latency percentiles, peak memory."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import MbdlError
from ..machine import cpu_name

DEFAULT_WARMUP = 10
DEFAULT_REPEATS = 30


# ------------------------------------------------------------------------------ devices
def device_info(device: str) -> dict[str, Any]:
    """Resolve ``device`` ("auto" included) and describe it: name, threads, fallback note."""
    import torch

    note = None
    requested = device
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        else:
            device = "cpu"
            note = "--device auto: no CUDA device available, fell back to CPU"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise MbdlError(f"--device {device} asked for CUDA, but no CUDA device is available", "use --device cpu or --device auto")
    elif device != "cpu" and not device.startswith("cuda"):
        raise MbdlError(f"unknown --device {device!r}", "use cpu, cuda, cuda:N or auto")
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = cpu_name("cpu")
    return {
        "requested": requested,
        "device": device,
        "name": name,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": _loadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "note": note,
    }


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def busy_note(env: Mapping[str, Any]) -> str | None:
    """A warning when other processes kept the CPUs busy (1-minute load above the core count)."""
    load, cpus = env.get("load_average"), env.get("cpu_count")
    if load is None or not cpus or load <= cpus:
        return None
    return (f"the machine was busy (1-minute load average {load:g} on {cpus} CPUs) before timing: other processes "
            f"share the cores, and multi-threaded CPU timings suffer most; rerun on an idle machine or with --threads 1")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


# ------------------------------------------------------------------------------ memory
class _MemoryProbe:
    """Peak memory around one call: CUDA max allocated, or the process's peak RSS (VmHWM).

    On Linux the RSS high-water mark is reset before each call (``/proc/self/clear_refs``),
    so the CPU figure belongs to that call; elsewhere it is the process lifetime peak.
    ``extra`` is the peak minus what was in use just before the call (the working memory).
    """

    def __init__(self, device: str):
        self.device = device
        self.cuda = device.startswith("cuda")
        self.can_reset = False
        if not self.cuda:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.can_reset = _read_status("VmHWM") is not None
            except OSError:
                self.can_reset = False
        self.kind = (
            "cuda max allocated" if self.cuda
            else "process peak RSS (reset per call)" if self.can_reset
            else "process peak RSS (lifetime)"
        )
        self.peak = 0
        self.extra = 0

    def before(self) -> None:
        import torch

        if self.cuda:
            dev = torch.device(self.device)
            torch.cuda.reset_peak_memory_stats(dev)
            self._base = torch.cuda.memory_allocated(dev)
        elif self.can_reset:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            self._base = (_read_status("VmRSS") or 0)
        else:
            self._base = _maxrss_bytes()

    def after(self) -> None:
        import torch

        if self.cuda:
            peak = torch.cuda.max_memory_allocated(torch.device(self.device))
        elif self.can_reset:
            peak = _read_status("VmHWM") or 0
        else:
            peak = _maxrss_bytes()
        self.peak = max(self.peak, peak)
        self.extra = max(self.extra, peak - self._base)


def _read_status(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _maxrss_bytes() -> int:
    try:
        import resource
    except ImportError:  # Windows: no rusage
        return 0
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


# ------------------------------------------------------------------------------ timing
@dataclass
class TimingResult:
    """Latency of one batched reconstruction over ``repeats`` runs (after ``warmup``)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    throughput: float  # images per second at the median
    batch_size: int
    warmup: int
    repeats: int
    peak_memory_mb: float
    peak_extra_memory_mb: float
    memory_kind: str
    method: str
    iterations_mean: float | None = None
    residual_final: float | None = None
    converged_fraction: float | None = None
    samples_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["samples_ms"] = [round(s, 4) for s in self.samples_ms]
        return d


def percentile(xs: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``xs`` with linear interpolation, as numpy's default."""
    s = sorted(xs)
    if not s:
        return math.nan
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class _Timer:
    """Times one call: CUDA events plus synchronize on GPUs, perf_counter on CPUs."""

    def __init__(self, device: str):
        import torch

        self.device = device
        self.cuda = device.startswith("cuda")
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
        self.method = "CUDA events, synchronized" if self.cuda else "time.perf_counter"

    def __call__(self, fn) -> float:
        if self.cuda:
            _sync(self.device)
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            return float(self.start.elapsed_time(self.end))
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def _timing_batch(y, batch_size: int):
    """The first ``batch_size`` measurements, tiled when there are fewer."""
    import torch

    n = y.shape[0]
    if n >= batch_size:
        return y[:batch_size]
    reps = math.ceil(batch_size / n)
    return torch.cat([y] * reps)[:batch_size]


def time_models(models: Sequence[Any], y, op, device: str, warmup: int = DEFAULT_WARMUP,
                repeats: int = DEFAULT_REPEATS, batch_size: int = 1, interleave: bool = True) -> list[TimingResult]:
    """Time several models on the same batch of measurements.

    Each model gets ``warmup`` untimed runs; then ``repeats`` rounds, each running every
    model once (order rotated per round when ``interleave``), so drift is shared. DEQ models
    report the mean iteration count and final residual of their timed runs (``last_info``).
    """
    import torch

    if repeats < 1:
        raise MbdlError(f"--repeats must be >= 1, got {repeats}", "use e.g. --repeats 30")
    if warmup < 0:
        raise MbdlError(f"--warmup must be >= 0, got {warmup}", "use e.g. --warmup 10")
    if batch_size < 1:
        raise MbdlError(f"--batch-size must be >= 1, got {batch_size}", "use e.g. --batch-size 1")
    yb = _timing_batch(y, batch_size).to(device)
    timer = _Timer(device)
    samples: list[list[float]] = [[] for _ in models]
    infos: list[list[dict]] = [[] for _ in models]
    probes = [_MemoryProbe(device) for _ in models]
    with torch.inference_mode():
        for m in models:
            for _ in range(warmup):
                m(yb, op)
            _sync(device)
        order = list(range(len(models)))
        for r in range(repeats):
            if interleave and len(order) > 1:
                k = r % len(order)
                seq = order[k:] + order[:k]
            else:
                seq = order
            for i in seq:
                m = models[i]
                probes[i].before()
                samples[i].append(timer(lambda: m(yb, op)))
                probes[i].after()
                info = getattr(m, "last_info", None)
                if isinstance(info, Mapping) and "residual" in info:
                    infos[i].append(dict(info))
    results = []
    for i in range(len(models)):
        s = samples[i]
        med = statistics.median(s)
        its = [float(d.get("iterations", math.nan)) for d in infos[i]]
        results.append(TimingResult(
            median_ms=med, p10_ms=percentile(s, 0.1), p90_ms=percentile(s, 0.9), mean_ms=statistics.fmean(s),
            min_ms=min(s), throughput=batch_size / (med / 1e3) if med > 0 else math.inf, batch_size=batch_size,
            warmup=warmup, repeats=repeats, peak_memory_mb=probes[i].peak / 2**20,
            peak_extra_memory_mb=probes[i].extra / 2**20, memory_kind=probes[i].kind, method=timer.method,
            iterations_mean=statistics.fmean(its) if its else None,
            residual_final=float(infos[i][-1].get("residual")) if infos[i] else None,
            converged_fraction=statistics.fmean(bool(d.get("converged")) for d in infos[i]) if infos[i] else None,
            samples_ms=s,
        ))
    return results


def time_model(model, y, op, device: str = "cpu", warmup: int = DEFAULT_WARMUP, repeats: int = DEFAULT_REPEATS,
               batch_size: int = 1) -> TimingResult:
    """Time one model (see :func:`time_models`): median/p10/p90 ms, images/s, peak memory, DEQ iterations."""
    return time_models([model], y, op, device, warmup, repeats, batch_size)[0]


