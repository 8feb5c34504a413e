"""Sweep points fine-tuned side by side: one worker process per device, results merged by the caller.

A fine-tuned sweep spends nearly all its time fine-tuning, one ratio after another. With
several devices each ratio's prune + fine-tune runs in its own worker process (``spawn``, so
CUDA initialises cleanly in each) bound to one device; each worker takes the next ratio when it
is done. The workers only write files (the pruned and fine-tuned models); the sweep then loads
them and benchmarks every model in one interleaved run on one device, exactly as a sequential
sweep does, so the timings stay side by side. A point's files and results are those of the
same point run sequentially on that device (same seeds, same settings).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

from ..errors import ConfigError, MbdlError

#: ``--finetune-devices auto``: every visible CUDA device when there are at least this many
AUTO_MIN_DEVICES = 2


def resolve_finetune_devices(spec: str | Sequence[str] | None) -> list[str]:
    """The devices to fine-tune sweep points on in parallel; ``[]``: one after another in this process.

    ``auto`` (default): every visible CUDA device when there are two or more, else ``[]``;
    ``none``: ``[]``; a comma-separated list (``cuda:0,cuda:1``, or ``cpu,cpu`` to split a CPU)
    names them, each checked to exist.
    """
    if spec is None:
        return []
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if items in (["auto"], []):
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] if n >= AUTO_MIN_DEVICES else []
    if items == ["none"]:
        return []
    import re

    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out = []
    for item in items:
        m = re.fullmatch(r"cuda(?::(\d+))?", item)
        if item == "cpu":
            out.append(item)
        elif m is None:
            raise ConfigError(f"unknown device {item!r} in --finetune-devices", "give auto, none, or a list such as cuda:0,cuda:1")
        elif int(m.group(1) or 0) >= visible:
            raise MbdlError(f"--finetune-devices names {item}, and this machine has {visible} CUDA device(s)",
                            "name devices that exist (cuda:0 to cuda:N-1), or use auto")
        else:
            out.append(f"cuda:{int(m.group(1) or 0)}")
    return out


def _init_worker(queue, threads: int | None) -> None:
    """Bind this worker process to the next device of ``queue`` (and split a CPU's threads)."""
    import torch

    global _DEVICE
    _DEVICE = queue.get()
    if _DEVICE.startswith("cuda"):
        torch.cuda.set_device(torch.device(_DEVICE))
    elif threads:
        torch.set_num_threads(threads)


_DEVICE = "cpu"


def _run_point(task: Mapping[str, Any]) -> dict[str, Any]:
    """One sweep point in a worker: load the original, prune at the task's ratio, fine-tune on this
    worker's device; returns the files written and the seconds each step took."""
    from .chain import load_original, prune_and_finetune

    t0 = time.perf_counter()
    original = load_original(**task["original"])
    finetune = {**task["finetune"], "device": _DEVICE, "progress": False}
    step = prune_and_finetune(original, task["prune"], label=task["label"], pruned_out=task["pruned_out"],
                              finetune=finetune, finetuned_out=task["finetuned_out"], arch=task["arch"],
                              eval_data=task["eval_data"], force=task["force"])
    return {"label": task["label"], "device": _DEVICE, "pruned": str(step.pruned.out), "finetuned": str(step.finetuned.out),
            "seconds": {**step.seconds, "total": time.perf_counter() - t0}}


def run_points(tasks: Sequence[Mapping[str, Any]], devices: Sequence[str],
               say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run every task (a sweep point: ``original`` load arguments, ``prune``, ``finetune``, output
    paths, ``label``) on a pool of one worker per device; results in task order.

    A worker's error is raised here as a one-line :class:`~mbdlprune.errors.MbdlError` naming the
    point; the points still running are cancelled.
    """
    import concurrent.futures as cf
    import multiprocessing as mp
    import os

    say = say or (lambda msg: None)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    for dev in devices:
        queue.put(dev)
    cpu_workers = sum(1 for d in devices if d == "cpu")
    threads = max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers else None
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    with cf.ProcessPoolExecutor(max_workers=len(devices), mp_context=ctx, initializer=_init_worker,
                                initargs=(queue, threads)) as pool:
        futures = {pool.submit(_run_point, dict(t)): i for i, t in enumerate(tasks)}
        try:
            for fut in cf.as_completed(futures):
                i = futures[fut]
                try:
                    res = fut.result()
                except MbdlError as e:
                    raise MbdlError(f"sweep point {tasks[i]['label']}: {e}") from None
                except cf.process.BrokenProcessPool:
                    raise MbdlError(f"a fine-tuning worker died while running {tasks[i]['label']} (out of memory?)",
                                    "run with fewer --finetune-devices, or --finetune-devices none") from None
                say(f"{res['label']}: pruned and fine-tuned on {res['device']} in {res['seconds']['total']:.1f} s")
                results[i] = res
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return [r for r in results if r is not None]
