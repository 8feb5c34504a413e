"""``round_to="auto"``: kept widths chosen by timing the prior's real layer shapes on the device.

For every group of coupled channels, the convolutions (and linear layers) whose input or output
channels the group sets are timed at the input size they really see (each prior's recorded
input, followed through the layers on the meta device), at candidate kept widths up to what the
requested ratio allows (never more: the removal is at least the request). The group keeps the
candidate the device runs most efficiently: the fewest milliseconds per multiply-accumulate
(the highest GMAC/s), ties within :data:`TIE` going to the wider width. Candidates lie between
:data:`MIN_KEEP` of the allowed width and the allowed width: the lowest time alone always
picks the narrowest width (fewer channels, fewer MACs), which would remove far more than asked.

Timings are medians of :data:`REPEATS` runs after :data:`WARMUP` warm-up runs, a group's
candidates timed in turn (one run each per round), under ``torch.inference_mode`` (CUDA: events
and synchronize), float32, cached as JSON per device
name, dtype, torch version and layer signature in ``$XDG_CACHE_HOME/mbdlprune/widths`` (or
``~/.cache/mbdlprune/widths``). A cache file is untrusted input: one that fails any check is
ignored with a note and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..machine import cpu_name

#: Candidates per group at most (multiples of 32, 16 and 8 in the range are always among them).
MAX_CANDIDATES = 12
#: Two widths whose milliseconds per MAC differ by less than this fraction are a tie: the wider wins.
TIE = 0.03
#: Candidates are no narrower than this fraction of the width the ratio allows.
MIN_KEEP = 0.75
WARMUP = 3
REPEATS = 5
#: Coordinate passes over the groups (each group's choice depends on its neighbours' widths).
PASSES = 3

CACHE_FORMAT = "mbdlprune-widths"
CACHE_VERSION = 1
#: A cache file larger than this, or with more entries, is not read.
MAX_CACHE_BYTES = 8 << 20
MAX_CACHE_ENTRIES = 50_000
_MAX_KEY_CHARS = 2000
_MAX_MS = 1e7

_DEFAULT = "default"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mbdlprune/widths`` (:func:`mbdlprune.io.user_cache_dir`)."""
    from ..io.writer import user_cache_dir

    return user_cache_dir("widths")


def resolve_device(device: str | None = None) -> torch.device:
    """The device widths are measured on: ``device``, or CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_info(device: torch.device) -> dict[str, Any]:
    """What timings depend on besides the layer: device name (CPU: model and threads), dtype, torch version."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        name = f"cuda: {torch.cuda.get_device_name(idx)} (sm_{major}{minor}, tf32 {bool(torch.backends.cudnn.allow_tf32)})"
    else:
        name = f"{device.type}: {cpu_name()} ({torch.get_num_threads()} threads)"
    return {"device": device.type, "name": name, "dtype": "float32", "torch": torch.__version__}


# -- layer signatures ---------------------------------------------------------------------------
def _ints(v) -> list[int]:
    return [int(i) for i in (v if isinstance(v, (tuple, list)) else (v,))]


def layer_signature(m: nn.Module, cin: int, cout: int, groups: int, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """What a layer's time depends on, at ``cin``/``cout`` channels and an input shaped ``shape``
    (channels included). None for a layer that cannot be timed so."""
    if isinstance(m, nn.Linear):
        return {"op": "linear", "in": cin, "out": cout, "bias": m.bias is not None, "shape": [*shape[:-1], cin]}
    if not isinstance(m, nn.modules.conv._ConvNd):
        return None
    nd = len(m.kernel_size)
    if nd not in (1, 2, 3) or len(shape) != nd + 2 or groups < 1 or cin % groups or cout % groups:
        return None
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    sig = {"op": f"conv_transpose{nd}d" if transposed else f"conv{nd}d", "in": cin, "out": cout,
           "kernel": _ints(m.kernel_size), "stride": _ints(m.stride),
           "padding": m.padding if isinstance(m.padding, str) else _ints(m.padding),
           "dilation": _ints(m.dilation), "groups": groups, "bias": m.bias is not None,
           "shape": [int(shape[0]), cin, *(int(s) for s in shape[2:])]}
    if transposed:
        sig["output_padding"] = _ints(m.output_padding)
    return sig


def signature_key(sig: dict[str, Any]) -> str:
    return json.dumps(sig, sort_keys=True, separators=(",", ":"))


def _tensors(sig: dict[str, Any], device, dtype=torch.float32, make=torch.randn):
    x = make(sig["shape"], device=device, dtype=dtype)
    if sig["op"] == "linear":
        w = make((sig["out"], sig["in"]), device=device, dtype=dtype)
    elif sig["op"].startswith("conv_transpose"):
        w = make((sig["in"], sig["out"] // sig["groups"], *sig["kernel"]), device=device, dtype=dtype)
    else:
        w = make((sig["out"], sig["in"] // sig["groups"], *sig["kernel"]), device=device, dtype=dtype)
    b = make((sig["out"],), device=device, dtype=dtype) if sig["bias"] else None
    return x, w, b


def _call(sig: dict[str, Any], x, w, b):
    op = sig["op"]
    if op == "linear":
        return torch.nn.functional.linear(x, w, b)
    fn = getattr(torch.nn.functional, op)
    kw = dict(stride=sig["stride"], padding=sig["padding"], dilation=sig["dilation"], groups=sig["groups"])
    if op.startswith("conv_transpose"):
        return fn(x, w, b, output_padding=sig["output_padding"], **kw)
    return fn(x, w, b, **kw)


_MACS: dict[str, int] = {}


def signature_macs(sig: dict[str, Any]) -> int:
    """Multiply-accumulates of one call (computed on the meta device: no compute)."""
    key = signature_key(sig)
    if key not in _MACS:
        _MACS[key] = _macs(sig)
    return _MACS[key]


def _macs(sig: dict[str, Any]) -> int:
    with torch.no_grad():
        out = _call(sig, *_tensors(sig, "meta", make=torch.empty))
    if sig["op"] == "linear":
        return int(out.numel() * sig["in"])
    k = math.prod(sig["kernel"])
    if sig["op"].startswith("conv_transpose"):
        return int(math.prod(sig["shape"]) * sig["out"] // sig["groups"] * k)
    return int(out.numel() * (sig["in"] // sig["groups"]) * k)


def measure_ms(sig: dict[str, Any], device: torch.device, warmup: int = WARMUP, repeats: int = REPEATS) -> float:
    """Median milliseconds of one call of the layer ``sig`` on ``device`` (float32, inference mode)."""
    return measure_many([sig], device, warmup, repeats)[0]


#: Tensors of one interleaved round at most (bytes); more signatures are timed in several rounds.
ROUND_BYTES = 512 << 20


def _bytes(sig: dict[str, Any]) -> int:
    return 4 * (math.prod(sig["shape"]) * 3 + sig["in"] * sig["out"] * math.prod(sig.get("kernel", [1])))


def measure_many(sigs: list[dict[str, Any]], device: torch.device, warmup: int = WARMUP, repeats: int = REPEATS) -> list[float]:
    """Median milliseconds of each layer of ``sigs`` on ``device`` (float32, inference mode).

    The layers are timed in turn, one run each per round (after their warm-up runs), so that a
    burst of load from other processes slows every candidate alike instead of one of them.
    """
    out: list[float] = []
    chunk: list[dict[str, Any]] = []
    size = 0
    for sig in sigs:
        if chunk and size + _bytes(sig) > ROUND_BYTES:
            out += _interleaved(chunk, device, warmup, repeats)
            chunk, size = [], 0
        chunk.append(sig)
        size += _bytes(sig)
    if chunk:
        out += _interleaved(chunk, device, warmup, repeats)
    return out


def _interleaved(sigs: list[dict[str, Any]], device: torch.device, warmup: int, repeats: int) -> list[float]:
    gen_state = torch.random.get_rng_state()  # timing must not move the pruning's random stream
    cuda = device.type == "cuda"
    try:
        with torch.inference_mode():
            data = [_tensors(sig, device) for sig in sigs]
            for sig, args in zip(sigs, data):
                for _ in range(max(int(warmup), 0)):
                    _call(sig, *args)
            times: list[list[float]] = [[] for _ in sigs]
            if cuda:
                torch.cuda.synchronize(device)
            for _ in range(max(int(repeats), 1)):
                for i, (sig, args) in enumerate(zip(sigs, data)):
                    if cuda:
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        _call(sig, *args)
                        end.record()
                        torch.cuda.synchronize(device)
                        times[i].append(float(start.elapsed_time(end)))
                    else:
                        t0 = time.perf_counter()
                        _call(sig, *args)
                        times[i].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.random.set_rng_state(gen_state)
    return [float(statistics.median(t)) for t in times]


# -- the timer and its cache --------------------------------------------------------------------
class WidthTimer:
    """Milliseconds per layer signature on one device, from memory, the cache file, or measured.

    ``cache_dir``: the folder of cache files (default :func:`default_cache_dir`; None: no file,
    memory only). ``measure``: a function ``sig -> ms`` replacing the real timing (tests).
    ``notes`` lists cache files that were ignored.
    """

    def __init__(self, device: str | torch.device | None = None, cache_dir: str | Path | None = _DEFAULT,
                 measure: Callable[[dict[str, Any]], float] | None = None, warmup: int = WARMUP, repeats: int = REPEATS):
        self.device = resolve_device(str(device) if device is not None else None)
        self.info = device_info(self.device)
        self.cache_dir = default_cache_dir() if cache_dir == _DEFAULT else (Path(cache_dir).expanduser() if cache_dir is not None else None)
        self._measure = measure
        self.warmup, self.repeats = warmup, repeats
        self.notes: list[str] = []
        self.measured = 0
        self.from_cache = 0
        self._memory: dict[str, float] = {}
        self._new: dict[str, float] = {}
        self._file_keys: set[str] = set()
        self._loaded = False
        self._rewrite = False

    @property
    def cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(self.info, sort_keys=True).encode()).hexdigest()[:24]
        return self.cache_dir / f"{digest}.json"

    def ms(self, sig: dict[str, Any]) -> float:
        """Milliseconds of one call of the layer ``sig``."""
        return self.ms_many([sig])[0]

    def ms_many(self, sigs: list[dict[str, Any]]) -> list[float]:
        """Milliseconds of each layer of ``sigs``; those not known yet are measured together (interleaved)."""
        if not self._loaded:
            self._loaded = True
            self._memory.update(self._read())
            self._file_keys = set(self._memory)
        keys = [signature_key(sig) for sig in sigs]
        missing: dict[str, dict[str, Any]] = {}
        for key, sig in zip(keys, sigs):
            if key in self._memory:
                if key in self._file_keys:  # counted once per signature
                    self.from_cache += 1
                    self._file_keys.discard(key)
            else:
                missing.setdefault(key, sig)
        if missing:
            todo = list(missing.values())
            if self._measure is not None:
                got = [float(self._measure(sig)) for sig in todo]
            else:
                got = measure_many(todo, self.device, self.warmup, self.repeats)
            for key, ms in zip(missing, got):
                if not (math.isfinite(ms) and ms >= 0):
                    raise ValueError(f"timing of {key} gave {ms!r}")
                self.measured += 1
                self._memory[key] = self._new[key] = ms
        return [self._memory[k] for k in keys]

    def _read(self) -> dict[str, float]:
        """The entries of the cache file, checked; {} (with a note) for a file that fails a check."""
        p = self.cache_path
        if p is None or not p.is_file():
            return {}
        try:
            entries = _checked_entries(p, self.info)
        except _Unusable as e:
            self.notes.append(f"ignored widths cache file {p.name}: {e}; it is rewritten")
            self._rewrite = True
            return {}
        return entries

    def flush(self) -> None:
        """Write the new timings to the cache file (atomically, merged with what it holds now)."""
        p = self.cache_path
        if p is None or not (self._new or self._rewrite):
            return
        from ..io import write_file

        try:
            current = _checked_entries(p, self.info) if p.is_file() else {}
        except _Unusable:
            current = {}
        entries = {**current, **self._new}
        if len(entries) > MAX_CACHE_ENTRIES:  # keep the newest
            entries = dict(list(entries.items())[-MAX_CACHE_ENTRIES:])
        doc = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "header": self.info, "entries": entries}
        text = json.dumps(doc, sort_keys=True, indent=0)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            write_file(p, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), force=True)
        except Exception as e:  # noqa: BLE001 - a cache that cannot be written costs a re-measurement, not the prune
            self.notes.append(f"could not write widths cache {str(p)!r}: {e}")
            return
        self._new = {}
        self._rewrite = False


class _Unusable(Exception):
    """A cache file that cannot be used (the reason is its message)."""


def _checked_entries(p: Path, info: dict[str, Any]) -> dict[str, float]:
    try:
        size = p.stat().st_size
        if size > MAX_CACHE_BYTES:
            raise _Unusable(f"{size} bytes, more than {MAX_CACHE_BYTES}")
        doc = json.loads(p.read_text(encoding="utf-8"))
    except _Unusable:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _Unusable(f"not readable JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT or doc.get("version") != CACHE_VERSION:
        raise _Unusable("not an mbdlprune widths cache of this version")
    if doc.get("header") != info:
        raise _Unusable("recorded for another device, dtype or torch version")
    entries = doc.get("entries")
    if not isinstance(entries, dict) or len(entries) > MAX_CACHE_ENTRIES:
        raise _Unusable("entries are not a table of timings")
    out = {}
    for k, v in entries.items():
        if not isinstance(k, str) or len(k) > _MAX_KEY_CHARS or not k.startswith("{"):
            raise _Unusable("an entry is not a layer signature")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v < _MAX_MS:
            raise _Unusable(f"an entry's time is not a number of milliseconds in [0, {_MAX_MS:g})")
        out[k] = float(v)
    return out


# -- real input shapes --------------------------------------------------------------------------
def layer_input_shapes(prior: nn.Module, inputs: tuple) -> dict[nn.Module, list[tuple[int, ...]]]:
    """The input shape of every call of each conv/linear layer of ``prior`` on ``inputs`` (the
    prior's real input), followed on the meta device; on real tensors where a layer has no meta kernel."""
    from .discovery import meta_copy

    names = {n: m for n, m in prior.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}

    def run(module, args):
        seen: dict[str, list] = {}
        hs = []
        for n, m in module.named_modules():
            if n in names or (n == "" and "" in names):
                hs.append(m.register_forward_pre_hook(
                    lambda _m, a, _n=n: seen.setdefault(_n, []).append(tuple(int(s) for s in a[0].shape))))
        try:
            with torch.no_grad():
                module(*args)
        finally:
            for h in hs:
                h.remove()
        return seen

    try:
        seen = run(meta_copy(prior), tuple(t.to("meta") if torch.is_tensor(t) else t for t in inputs))
    except Exception:  # a layer without a meta kernel: follow the real tensors
        seen = run(prior, inputs)
    return {names[n]: shapes for n, shapes in seen.items() if n in names}


# -- candidates and the choice ------------------------------------------------------------------
def candidate_widths(lo: int, hi: int, multiple: int = 1, max_n: int = MAX_CANDIDATES) -> list[int]:
    """Widths from ``lo`` to ``hi`` in steps of ``multiple`` (ascending), at most ``max_n``: the
    widest first, then multiples of 32, 16, 8, 4, 2, then the others, widest first in each tier."""
    multiple = max(int(multiple), 1)
    lo = multiple * max(1, math.ceil(lo / multiple - 1e-9))
    all_ = list(range(lo, hi + 1, multiple))
    if len(all_) <= max_n:
        return all_
    picked: list[int] = [all_[-1]]
    for tier in (32, 16, 8, 4, 2, 1):
        for w in reversed(all_):
            if len(picked) >= max_n:
                break
            if w % tier == 0 and w not in picked:
                picked.append(w)
    return sorted(picked)


def choose_width(candidates: list[int], ms: list[float], macs: list[int], tie: float = TIE) -> int:
    """The candidate with the fewest milliseconds per MAC (the device's best GMAC/s); candidates
    within ``tie`` of the best are ties, and the widest of them wins (more capacity for the time)."""
    if not candidates:
        raise ValueError("no candidate widths")
    cost = [m / c if c > 0 else math.inf for m, c in zip(ms, macs)]
    best = min(cost)
    if not math.isfinite(best):  # nothing measurable: keep the widest allowed
        return max(candidates)
    return max(w for w, c in zip(candidates, cost) if c <= best * (1 + tie) + 1e-15)


@dataclass
class WidthGroup:
    """One group to choose a width for: its current width, the widths allowed and the layers it sets."""

    key: Any  # the GroupPlan
    width: int
    candidates: list[int]
    touches: list[tuple[nn.Module, str, int]]  # (layer, "in" | "out", channels of the group it holds)
    table: dict[str, Any] = field(default_factory=dict)


def choose_widths(groups: list[WidthGroup], shapes: dict[nn.Module, list[tuple[int, ...]]], timer: WidthTimer,
                  names: dict[nn.Module, str] | None = None, passes: int = PASSES, tie: float = TIE) -> list[int]:
    """The kept width of each group (in order), by measurement; each group's ``table`` records the timings.

    A layer's other channel dimension follows the width chosen so far for the group that sets
    it (first: the widest allowed), and the groups are visited again until no choice changes.
    """
    names = names or {}
    chosen = {id(g): max(g.candidates) for g in groups}
    by_layer: dict[int, list[tuple[WidthGroup, str, int]]] = {}
    for g in groups:
        for m, axis, k in g.touches:
            by_layer.setdefault(id(m), []).append((g, axis, k))

    def dims(m: nn.Module, override: tuple[WidthGroup, int] | None):
        is_conv = isinstance(m, nn.modules.conv._ConvNd)
        cin = int(m.in_channels if is_conv else m.in_features)
        cout = int(m.out_channels if is_conv else m.out_features)
        depthwise = is_conv and m.groups > 1 and m.groups == m.in_channels == m.out_channels
        new = {"in": cin, "out": cout}
        for g, axis, k in by_layer.get(id(m), []):
            w = override[1] if override is not None and g is override[0] else chosen[id(g)]
            new[axis] -= int(round((g.width - w) * k / g.width)) if g.width else 0
        if depthwise:
            c = min(new["in"], new["out"])
            return c, c, c
        return new["in"], new["out"], int(m.groups) if is_conv else 1

    def layer_sigs(g: WidthGroup, w: int) -> tuple[list[dict[str, Any]], list[str]]:
        sigs, timed = [], []
        for m, _axis, _k in g.touches:
            cin, cout, groups = dims(m, (g, w))
            for shape in shapes.get(m, []):
                sig = layer_signature(m, cin, cout, groups, shape)
                if sig is None or cin < 1 or cout < 1:
                    continue
                sigs.append(sig)
                if names.get(m, type(m).__name__) not in timed:
                    timed.append(names.get(m, type(m).__name__))
        return sigs, timed

    def costs(g: WidthGroup) -> list[tuple[float, int, list[str]]]:
        per = [layer_sigs(g, w) for w in g.candidates]
        ms = timer.ms_many([sig for sigs, _ in per for sig in sigs])  # every candidate's layers, interleaved
        rows, i = [], 0
        for sigs, timed in per:
            rows.append((float(sum(ms[i:i + len(sigs)])), sum(signature_macs(sig) for sig in sigs), timed))
            i += len(sigs)
        return rows

    for _ in range(max(int(passes), 1)):
        changed = False
        for g in groups:
            rows = costs(g)
            pick = choose_width(g.candidates, [r[0] for r in rows], [r[1] for r in rows], tie)
            if not any(r[1] for r in rows):
                pick = max(g.candidates)
            g.table = {"candidates": list(g.candidates), "ms": [round(r[0], 4) for r in rows],
                       "gmac_per_s": [round(r[1] / r[0] / 1e6, 2) if r[0] > 0 else None for r in rows],
                       "layers": rows[-1][2] if rows else [], "chosen": pick}
            if pick != chosen[id(g)]:
                chosen[id(g)], changed = pick, True
        if not changed:
            break
    return [chosen[id(g)] for g in groups]
