"""A user's model pruned with mbdlprune's defaults against a hand-written torch-pruning script, side by side.

    python benchmarks/vs_torch_pruning.py                      # widths 32 and 48, 128 x 128
    python benchmarks/vs_torch_pruning.py --widths 64 --size 256 --threads 1

The model is the user code of ``examples/custom_factory/my_model.py`` (proximal-gradient
unrolling, one small ResNet prior per step; random weights, timing only). For each width:

* **mbdlprune**: what a user runs — the original saved as a plain checkpoint, then
  ``mbdlprune.prune(ckpt, arch="examples/custom_factory/my_model.py:build", ratio=...)`` with
  every other setting at its default (group L1, uniform, ``round_to`` 16), and the written
  file loaded back; and the same with ``round_to="auto"`` (widths timed on this machine).
  Rounding to the nearest multiple of 16 may remove less than asked (48 channels at 0.5 keep
  32): the prune then prints a note, and the table shows the widths each kept.
* **torch-pruning script**: the few lines a user would write without mbdlprune — for each prior,
  ``tp.pruner.MetaPruner(prior, example_input, GroupMagnitudeImportance(p=1),
  pruning_ratio=ratio, ignored_layers=[prior.tail])`` and ``step()``.

All models (original, mbdlprune's, the script's) are benchmarked in one ``mbdlprune.bench`` run
(interleaved timing rounds, the same measurements). Columns: kept widths, prior-MACs reduction,
speedup against the original, and each model's speed against the script's (≥ 1: at least as
fast).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

import mbdlprune
from mbdlprune.errors import PruningError
from mbdlprune.io import LoadedModel
from mbdlprune.models.user import build_arch
from mbdlprune.operators import load_operator

ROOT = Path(__file__).resolve().parents[1]
ARCH = f"{ROOT / 'examples' / 'custom_factory' / 'my_model.py'}:build"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_vs_ratio import smooth_images  # noqa: E402  (the benchmarks' shared test images)


def script_prune(model: torch.nn.Module, ratio: float, size: int) -> torch.nn.Module:
    """The hand-written torch-pruning script: every prior pruned on its own, output conv kept."""
    import torch_pruning as tp

    for prior in model.denoisers:
        for p in prior.parameters():
            p.requires_grad_(True)
        example = torch.randn(1, 2, size, size)
        pruner = tp.pruner.MetaPruner(prior, example, tp.importance.GroupMagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=[prior.tail])
        pruner.step()
    return model.eval()


def kept_widths(model: torch.nn.Module) -> str:
    widths = sorted({m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels > 2})
    return ",".join(map(str, widths))


def run_width(width: int, args, tmp: Path) -> dict:
    op_spec = {"kind": "mri", "image_size": [args.size, args.size], "acceleration": 4, "mask": "uniform", "coils": 1}
    op = load_operator(op_spec)
    arch_args = {"steps": args.steps, "width": width, "blocks": args.blocks}
    torch.manual_seed(args.seed)
    model, spec = build_arch(ARCH, arch_args)
    ckpt = tmp / f"mine-{width}.pt"
    torch.save(model.state_dict(), ckpt)
    meta = {"arch": spec.to_dict(), "operator": op.spec}
    original = LoadedModel(model.eval(), meta, op, label=f"original (width {width})", role="original")

    mine = []
    for label, extra in (("mbdlprune defaults", {}), ("mbdlprune round-to auto", {"round_to": "auto"})):
        out = tmp / f"mine-{width}-{len(mine)}.safetensors"
        try:
            res = mbdlprune.prune(ckpt, arch=ARCH, arch_args=arch_args, operator=op_spec, ratio=args.ratio, out=out,
                                  force=True, **extra)
        except PruningError as e:  # more held back than rounding explains: refused, never silently less
            print(f"  width {width}, {label}: refused ({str(e)[:160]})", file=sys.stderr)
            continue
        for note in res.report.get("notes") or ():
            print(f"  width {width}, {label}: note: {note}", file=sys.stderr)
        lm = mbdlprune.load_model(out, arch=ARCH)
        lm.label, lm.role = label, "pruned"
        mine.append(lm)

    theirs_model = script_prune(copy.deepcopy(model), args.ratio, args.size)
    theirs = LoadedModel(theirs_model, meta, op, label="torch-pruning script", role="pruned")

    entries = [original, *mine, theirs]
    rep = mbdlprune.bench(entries, smooth_images(args.images, args.size, args.seed), device="cpu",
                          warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    script_ms = rep.models[-1].timing.median_ms
    return {"width": width, "context": rep.context_line(),
            "rows": [(m.label, kept_widths(e.model), m.prior_macs_reduction, m.speedup, m.timing.median_ms,
                      script_ms / m.timing.median_ms) for m, e in zip(rep.models, entries)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="32,48", type=lambda s: [int(v) for v in s.split(",") if v.strip()])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mbdlprune-vs-tp-") as tmp:
        for w in args.widths:
            r = run_width(w, args, Path(tmp))
            print(f"\nwidth {w}, ratio {args.ratio}, {args.steps} steps, {args.size}x{args.size}: {r['context']}")
            print(f"{'model':<24} {'widths':>8} {'MACs↓':>7} {'speedup':>8} {'ms':>8} {'vs script':>9}")
            for label, widths, macs, sp, ms, vs in r["rows"]:
                print(f"{label:<24} {widths:>8} {macs:>6.2f}x {sp:>7.2f}x {ms:>8.2f} {vs:>8.2f}x")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
