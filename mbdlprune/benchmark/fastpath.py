"""The fast inference path, applied identically to every model of a comparison, then undone.

Three switches (:class:`~mbdlprune.benchmark.BenchConfig` ``compile``, ``channels_last`` and ``bf16``):

* ``channels_last``: each prior's parameters in channels-last memory format (the convolution
  kernels CPUs and tensor cores run fastest); its inputs are converted on entry;
* ``compile``: each prior compiled with ``torch.compile`` (inductor, static shapes). Only the
  priors: the FFTs, data consistency and the DEQ solver stay eager (complex ops compile poorly,
  and they are the same for original and pruned). The first call of each model, which compiles,
  is timed apart (``compile_s``) and never counted in the latency;
* ``bf16``: each prior runs under ``torch.autocast`` in bfloat16 (convolutions in bf16 where the
  device has native kernels: AVX512-BF16/AMX CPUs, Ampere and later GPUs) and hands float32 back,
  so the data consistency and the solver keep float32. Its outputs differ from the eager ones,
  so the comparison scores the fast path's quality as well. Models without ``prior_paths()``
  keep float32 (a note says so): autocast of a whole model would reach its complex FFTs.

A prior is reached by its path (``model.prior_paths()``, and any network pruned besides them:
:func:`.costs.pruned_networks`; a user model without one is compiled whole). Everything is
restored afterwards: the caller gets back eager, contiguous models.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Sequence


def _parent(model, path: str):
    if not path:
        return None, None
    head, _, name = path.rpartition(".")
    return (model.get_submodule(head) if head else model), name


def _bf16_prior(prior, device_type: str):
    """A module running ``prior`` under bfloat16 autocast and handing float32 back, installed where
    the prior sits while the fast path is active (torch is imported here, on use)."""
    import torch
    from torch import nn

    class Bf16Prior(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            with torch.autocast(device_type, dtype=torch.bfloat16):
                out = self.inner(*args, **kwargs)
            return out.float() if torch.is_tensor(out) and out.is_floating_point() else out

    return Bf16Prior(prior)


def native_bf16(device: str) -> bool:
    """Whether ``device`` has native bfloat16 kernels (CUDA: ``is_bf16_supported``; CPU: AMX or
    AVX512-BF16, as torch reports its CPU capability)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        return bool(torch.backends.mkldnn.is_available() and (torch.cpu._is_amx_tile_supported()
                                                              or torch.cpu._is_avx512_bf16_supported()))
    except AttributeError:  # an older torch without these probes: say nothing is native
        return False


class _ChannelsLastInput:
    """A forward pre-hook giving the prior its 4-D inputs in channels-last format."""

    def __call__(self, module, args):
        import torch

        return tuple(a.contiguous(memory_format=torch.channels_last) if torch.is_tensor(a) and a.dim() == 4 else a
                     for a in args)


@contextlib.contextmanager
def fast_path(models: Sequence[Any], *, compile: bool = False, channels_last: bool = False, bf16: bool = False,
              device: str = "cpu", notes: list[str] | None = None,
              extra_paths: Sequence[str] = ()) -> Iterator[list[dict[str, Any]]]:
    """Apply the switches to every model's priors (and ``extra_paths``, the networks pruned besides
    them: :func:`.costs.pruned_networks`) for the block; yields one record per model (what was
    applied, and ``compile_s`` once :func:`first_calls` has run). Undone on exit."""
    import torch

    from .costs import network_paths

    notes = notes if notes is not None else []
    undo: list = []
    records: list[dict[str, Any]] = []
    try:
        for m in models:
            rec: dict[str, Any] = {"compiled": [], "channels_last": [], "bf16": [], "compile_s": None}
            seen: set[int] = set()
            for path in network_paths(m, extra_paths):
                prior = m.get_submodule(path) if path else m
                if id(prior) in seen:  # a prior shared across steps is prepared once
                    continue
                seen.add(id(prior))
                if channels_last:
                    prior.to(memory_format=torch.channels_last)
                    handle = prior.register_forward_pre_hook(_ChannelsLastInput())
                    undo.append(lambda prior=prior, handle=handle: (handle.remove(), _contiguous(prior)))
                    rec["channels_last"].append(path or "(whole model)")
                parent, name = _parent(m, path)
                installed = prior
                if bf16 and parent is None:
                    notes.append(f"{type(m).__name__} names no prior (prior_paths()): it keeps float32 on the bf16 path")
                elif bf16:
                    installed = _bf16_prior(prior, torch.device(device).type)
                    rec["bf16"].append(path)
                if compile:
                    installed = torch.compile(installed, dynamic=False)
                    rec["compiled"].append(path or "(whole model)")
                if installed is not prior and parent is None:
                    m.forward, old = installed.forward, m.forward  # a user model compiled whole
                    undo.append(lambda m=m, old=old: setattr(m, "forward", old))
                elif installed is not prior:
                    for owner, attr in _owners(m, prior):  # every place that holds the shared prior
                        setattr(owner, attr, installed)
                        undo.append(lambda owner=owner, attr=attr, prior=prior: setattr(owner, attr, prior))
            records.append(rec)
        yield records
    finally:
        for fn in reversed(undo):
            fn()


def _owners(model, module) -> list[tuple[Any, str]]:
    """(parent, attribute) of every reference to ``module`` inside ``model`` (shared priors)."""
    out = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if child is module:
                out.append((parent, name))
    return out


def _contiguous(module) -> None:
    import torch

    module.to(memory_format=torch.contiguous_format)


def first_calls(models: Sequence[Any], y, op, records: list[dict[str, Any]], device: str, notes: list[str]) -> bool:
    """Run every model once (compiling its priors) and record how long that took; False, with a
    note, when compilation fails on this machine (the comparison then stays eager)."""
    import torch

    from .timing import _sync

    with torch.inference_mode():
        for m, rec in zip(models, records):
            t = time.perf_counter()
            try:
                m(y, op)
                _sync(device)
            except Exception as e:  # inductor needs a C++ compiler (CPU) or triton (CUDA); any failure: eager only
                notes.append(f"torch.compile failed on this machine ({type(e).__name__}: {str(e).splitlines()[0][:160]}): "
                             "only eager timings are reported")
                return False
            rec["compile_s"] = round(time.perf_counter() - t, 3)
    return True
