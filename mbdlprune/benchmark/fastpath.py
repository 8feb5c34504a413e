"""The fast inference path, applied identically to every model of a comparison, then undone.

Two switches (:class:`~mbdlprune.benchmark.BenchConfig` ``compile`` and ``channels_last``):

* ``channels_last``: each prior's parameters in channels-last memory format (the convolution
  kernels CPUs and tensor cores run fastest); its inputs are converted on entry;
* ``compile``: each prior compiled with ``torch.compile`` (inductor, static shapes). Only the
  priors: the FFTs, data consistency and the DEQ solver stay eager (complex ops compile poorly,
  and they are the same for original and pruned). The first call of each model, which compiles,
  is timed apart (``compile_s``) and never counted in the latency.

A prior is reached by its path (``model.prior_paths()``; a user model without one is compiled
whole). Everything is restored afterwards: the caller gets back eager, contiguous models.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Sequence


def _prior_paths(model) -> list[str]:
    return list(model.prior_paths()) if hasattr(model, "prior_paths") else [""]


def _parent(model, path: str):
    if not path:
        return None, None
    head, _, name = path.rpartition(".")
    return (model.get_submodule(head) if head else model), name


class _ChannelsLastInput:
    """A forward pre-hook giving the prior its 4-D inputs in channels-last format."""

    def __call__(self, module, args):
        import torch

        return tuple(a.contiguous(memory_format=torch.channels_last) if torch.is_tensor(a) and a.dim() == 4 else a
                     for a in args)


@contextlib.contextmanager
def fast_path(models: Sequence[Any], *, compile: bool = False, channels_last: bool = False,
              notes: list[str] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Apply the switches to every model's priors for the block; yields one record per model
    (what was applied, and ``compile_s`` once :func:`first_calls` has run). Undone on exit."""
    import torch

    notes = notes if notes is not None else []
    undo: list = []
    records: list[dict[str, Any]] = []
    try:
        for m in models:
            rec: dict[str, Any] = {"compiled": [], "channels_last": [], "compile_s": None}
            seen: set[int] = set()
            for path in _prior_paths(m):
                prior = m.get_submodule(path) if path else m
                if id(prior) in seen:  # a prior shared across steps is prepared once
                    continue
                seen.add(id(prior))
                if channels_last:
                    prior.to(memory_format=torch.channels_last)
                    handle = prior.register_forward_pre_hook(_ChannelsLastInput())
                    undo.append(lambda prior=prior, handle=handle: (handle.remove(), _contiguous(prior)))
                    rec["channels_last"].append(path or "(whole model)")
                if compile:
                    parent, name = _parent(m, path)
                    compiled = torch.compile(prior, dynamic=False)
                    if parent is None:
                        m.forward, old = compiled.forward, m.forward  # a user model compiled whole
                        undo.append(lambda m=m, old=old: setattr(m, "forward", old))
                    else:
                        for owner, attr in _owners(m, prior):  # every place that holds the shared prior
                            setattr(owner, attr, compiled)
                            undo.append(lambda owner=owner, attr=attr, prior=prior: setattr(owner, attr, prior))
                    rec["compiled"].append(path or "(whole model)")
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
