"""Prune a model at several ratios and print latency ratio vs prior-MACs ratio, measured in one run.

    python benchmarks/speed_vs_ratio.py --arch deq-edsr --ratios 0.3,0.5
    python benchmarks/speed_vs_ratio.py --arch unrolled --ratios 0.3,0.5 --image-size 64

For each architecture the original and every pruned copy are timed side by side (interleaved
rounds, identical solver settings) on the same measurements, twice:

* whole reconstruction (operator + prior + solver), as ``mbdlprune bench`` does;
* the prior alone on its real input shape, which isolates what pruning changes.

"efficiency" = realised speedup / prior-MACs reduction: 1.0 means every MAC removed was time
saved. Weights are random (the timing of a convolution does not depend on its values); DEQs
run a fixed number of iterations by default (``--iterations``, tol 0) so that iteration counts of
random-weight models do not blur the per-iteration comparison; pass ``--iterations 0`` to use
the model's own tol and max_iter instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
from torch import nn

import mbdlprune
from mbdlprune.api import prune_model
from mbdlprune.benchmark import time_models
from mbdlprune.io import LoadedModel
from mbdlprune.models.user import build_arch
from mbdlprune.operators import load_operator


class PriorOnly(nn.Module):
    """Calls a model's prior on the measurement slot, so time_models can time priors alone."""

    def __init__(self, prior: nn.Module):
        super().__init__()
        self.prior = prior

    def forward(self, x, op):
        return self.prior(x)


def operator_spec(kind: str, size: int) -> dict:
    if kind == "mri":
        return {"kind": "mri", "image_size": [size, size], "acceleration": 6, "mask": "uniform", "coils": 4, "noise_sigma": 0.01}
    return {"kind": "denoise", "image_size": [size, size], "channels": 2, "noise_sigma": 0.05}


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth complex test images (values matter little: the weights are random)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 2, max(size // 8, 2), max(size // 8, 2), generator=g)
    x = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    x[:, 1] *= 0.2
    return x / x.abs().amax(dim=(1, 2, 3), keepdim=True)


def run_arch(arch: str, args: argparse.Namespace) -> list[dict]:
    op = load_operator(operator_spec(args.operator, args.image_size))
    torch.manual_seed(args.seed)
    arch_args = json.loads(args.arch_args) if args.arch_args else {}
    model, spec = build_arch(arch, arch_args)
    model.eval()
    meta = {"arch": spec.to_dict(), "operator": op.spec, "pruning": None}
    entries = [LoadedModel(model, meta, op, label=f"{arch}", role="original")]
    for r in args.ratios:
        res = prune_model(copy.deepcopy(model), spec, op, ratio=r, round_to=args.round_to)
        entries.append(LoadedModel(res.model, res.meta, op, label=f"{arch}-r{r:g}", role="pruned"))
    tol = max_iter = None
    if args.iterations and hasattr(model, "max_iter"):
        tol, max_iter = 1e-30, args.iterations
    images = smooth_images(args.images, args.image_size, args.seed)
    rep = mbdlprune.bench(entries, images, device=args.device, tol=tol, max_iter=max_iter, warmup=args.warmup,
                repeats=args.repeats, batch_size=args.batch_size,
                progress=(lambda m: print(f"  {m}", file=sys.stderr)) if args.verbose else None)

    # the priors alone, on the input shape they see inside the model
    dev = rep.environment["device"]
    paths = model.prior_paths()
    c = op.channels
    x = torch.randn(args.batch_size, c, args.image_size, args.image_size)
    prior_times = time_models([PriorOnly(e.model.get_submodule(paths[0])).to(dev) for e in entries], x, None, dev,
                              args.warmup, args.repeats, args.batch_size)

    rows = []
    for e, m, pt in zip(entries, rep.models, prior_times):
        widths = sorted({w[1] for p in ((e.meta.get("pruning") or {}).get("priors") or {}).values() for w in p["widths"].values()})
        rows.append({
            "model": m.label,
            "widths": widths or "original",
            "prior_macs_reduction": m.prior_macs_reduction,
            "recon_ms": m.timing.median_ms,
            "recon_speedup": m.speedup,
            "recon_efficiency": m.speedup_per_macs_reduction,
            "prior_ms": pt.median_ms,
            "prior_speedup": prior_times[0].median_ms / pt.median_ms,
            "prior_efficiency": (prior_times[0].median_ms / pt.median_ms) / m.prior_macs_reduction if m.prior_macs_reduction else None,
            "iterations": m.deq["iterations_mean"] if m.deq else m.prior_calls_per_reconstruction,
            "psnr_drop": m.psnr_drop,
        })
    print(f"\n{arch}: {rep.context_line()}")
    if rep.solver_line():
        print(rep.solver_line())
    hdr = f"{'model':<18} {'widths':<14} {'MACs↓':>7} {'recon ms':>9} {'speedup':>8} {'eff.':>6} {'prior ms':>9} {'speedup':>8} {'eff.':>6} {'iters':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        w = ",".join(map(str, r["widths"])) if isinstance(r["widths"], list) else r["widths"]
        print(f"{r['model']:<18} {w:<14} {r['prior_macs_reduction']:>6.2f}x {r['recon_ms']:>9.1f} {r['recon_speedup']:>7.2f}x "
              f"{r['recon_efficiency']:>6.2f} {r['prior_ms']:>9.1f} {r['prior_speedup']:>7.2f}x {r['prior_efficiency']:>6.2f} "
              f"{r['iterations']:>6.1f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="deq-edsr,unrolled", help="comma-separated architectures")
    ap.add_argument("--arch-args", default=None, help="JSON architecture arguments (applied to every --arch)")
    ap.add_argument("--ratios", default="0.3,0.5", type=lambda s: [float(v) for v in s.split(",")])
    ap.add_argument("--operator", default="mri", choices=["mri", "denoise"])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=2, help="evaluation images for the quality columns")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=5, help="DEQ: run exactly this many iterations (0: model's tol)")
    ap.add_argument("--round-to", type=int, default=None, help="width multiple (default: the pruner's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {a: run_arch(a, args) for a in args.arch.split(",") if a}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
