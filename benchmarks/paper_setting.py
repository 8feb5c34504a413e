"""The reference paper's setting in one command: multi-coil brain MRI at R = 6 with the uniform mask,
paper-size DEQ-EDSR and E2E-VarNet, pruned, fine-tuned and benchmarked on raw k-space the fastMRI way.

    python benchmarks/paper_setting.py --out paper-out
    python benchmarks/paper_setting.py --out paper-out --train-data TRAIN_DIR --eval-data EVAL_DIR \\
        --deq deq.pt --deq-key-map mbdl-pruning --varnet varnet.ckpt --size 320

What runs, per model (DEQ-EDSR, then E2E-VarNet), with the paper's settings (docs/architectures.md):

1. the original: a checkpoint you pass (``--deq``, ``--varnet``; e.g. the paper's own through the
   ``mbdl-pruning`` key map, fastMRI's VarNet), or, without one, the paper's architecture with
   random weights (timing and the chain only: its PSNR then means nothing, and the output says so);
2. ``mbdlprune.prune`` at the paper's kind of ratio (``--deq-ratio``, ``--varnet-ratio``; L1, uniform);
3. ``mbdlprune.finetune``, supervised on the RSS of the fully sampled k-space (DEQ: SmoothL1, Adam
   1e-4; VarNet: 1 - SSIM, Adam 1e-3, weight decay 1e-8; batch 1; best validation epoch kept);
4. ``mbdlprune.bench`` of original, pruned and fine-tuned side by side on the evaluation files:
   retrospective undersampling with the uniform mask at R = 6, per-slice k-space scaled by its
   maximum for the DEQ (the paper's) and raw units for the VarNet (fastMRI's), ESPIRiT coil maps
   for the DEQ (the paper's; ``--coil-maps acs`` is faster), fastMRI's metric per volume, identical
   solver settings for every DEQ.

Data: fastMRI brain multi-coil ``.h5`` files (``--train-data``, ``--val-data``, ``--eval-data``;
split by file), or, without them, fastMRI-layout files written here from the real brain slices
that ship with mbdlprune (MNI152 template slices for training and validation, nibabel's EPI for
evaluation; readout oversampled x2, ``--coils`` smooth coil maps) at ``--size`` (default 64, the
reduced size this needs on a CPU; the paper's is 320 x 320 from 640 x 320 k-space). Every
reduction from the paper's setting is printed and written to ``OUT/paper_setting.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import mbdlprune
from mbdlprune.examples import example_path

PAPER = {
    "deq-edsr": {"n_feats": 64, "n_blocks": 13, "gamma": 5.0, "alpha": 0.2, "solver": "anderson", "tol": 1e-4,
                 "max_iter": 100},
    "e2e-varnet": {"num_cascades": 8, "chans": 18, "pools": 4, "sens_chans": 8, "sens_pools": 4},
}
FINETUNE = {
    "deq-edsr": {"mode": "supervised", "loss": "smoothl1", "lr": 1e-4},
    "e2e-varnet": {"mode": "supervised", "loss": "ssim", "lr": 1e-3, "weight_decay": 1e-8},
}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist, or --force)")
    p.add_argument("--train-data", type=Path, help="fastMRI brain multi-coil training files (default: written from shipped slices)")
    p.add_argument("--val-data", type=Path, help="validation files (default: written from shipped slices)")
    p.add_argument("--eval-data", type=Path, help="evaluation files, never trained on (default: written from shipped slices)")
    p.add_argument("--deq", type=Path, help="a trained DEQ-EDSR checkpoint (default: random weights, timing only)")
    p.add_argument("--deq-key-map", help="key map for --deq, e.g. mbdl-pruning (the paper's checkpoints)")
    p.add_argument("--varnet", type=Path, help="a trained E2E-VarNet checkpoint (default: random weights, timing only)")
    p.add_argument("--models", default="deq-edsr,e2e-varnet", help="which models, comma-separated")
    p.add_argument("--size", type=int, default=64, help="reconstruction size of the written data (paper: 320)")
    p.add_argument("--coils", type=int, default=8, help="coils of the written data")
    p.add_argument("--deq-ratio", type=float, default=0.3, help="channel ratio removed from the DEQ prior")
    p.add_argument("--varnet-ratio", type=float, default=0.3, help="channel ratio removed from every cascade U-Net")
    p.add_argument("--max-iter", type=int, default=20, help="DEQ iteration cap for every DEQ (paper: 100)")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    p.add_argument("--coil-maps", default="auto", choices=("auto", "espirit", "acs"),
                   help="DEQ coil maps: espirit (the paper's), acs; auto: espirit when the mask's centre block has the "
                        "12 columns ESPIRiT's 6x6 kernel needs, else acs")
    p.add_argument("--warmup", type=int, default=2, help="timing warm-up runs (paper: 10)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs (paper: 30 DEQ, 100 VarNet)")
    p.add_argument("--max-images", type=int, default=4, help="evaluation slices")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    return p.parse_args(argv)


def shipped_data(out: Path, size: int, coils: int, force: bool) -> dict[str, Path]:
    """fastMRI-layout files from the shipped real brain slices, resampled to ``size`` (split by file)."""
    import torch
    import torch.nn.functional as F

    from mbdlprune.data.fastmri_files import images_from_nifti, write_fastmri_file

    def resized(name: str) -> np.ndarray:
        x = torch.from_numpy(images_from_nifti(example_path(name)))[:, None]
        x = F.interpolate(x, size=(size, size), mode="area")[:, 0].numpy()
        return x / x.reshape(len(x), -1).max(1).reshape(-1, 1, 1)

    folders = {k: out / "data" / k for k in ("train", "val", "eval")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    train, val, ev = resized("finetune"), resized("finetune-val"), resized("eval")
    for i, part in enumerate(np.array_split(train, 3)):
        write_fastmri_file(folders["train"] / f"file_brain_AXT1_train_{i}.h5", part, coils=coils, seed=10 + i, force=force)
    write_fastmri_file(folders["val"] / "file_brain_AXT1_val_0.h5", val, coils=coils, seed=20, force=force)
    for i, part in enumerate(np.array_split(ev, 2)):
        write_fastmri_file(folders["eval"] / f"file_brain_EPI_eval_{i}.h5", part, coils=coils, seed=30 + i, force=force,
                           acquisition="EPI")
    return folders


def original_model(arch: str, args, op, out: Path) -> tuple[Path, bool]:
    """The original as an mbdlprune file: the given checkpoint (converted), or the paper's architecture, random."""
    import torch

    from mbdlprune.models.user import build_arch

    given = args.deq if arch == "deq-edsr" else args.varnet
    path = out / f"{arch}-original.safetensors"
    arch_args = dict(PAPER[arch])
    if arch == "deq-edsr":
        arch_args["max_iter"] = args.max_iter
    if given is not None:
        key_map = args.deq_key_map if arch == "deq-edsr" else None
        mbdlprune.convert(given, arch=arch, arch_args=arch_args, operator=op.spec and {"operator": op.spec},
                          key_map=key_map, out=path, force=args.force)
        return path, True
    torch.manual_seed(args.seed)
    model, spec = build_arch(arch, arch_args)
    mbdlprune.save_model(path, model, {"arch": spec.to_dict(), "operator": op.spec}, force=args.force, operator=op)
    return path, False


def run(args) -> dict:
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    reductions = []
    if args.train_data is None or args.eval_data is None:
        data = shipped_data(args.out, args.size, args.coils, args.force)
        reductions.append(f"data: fastMRI-layout files written from shipped real brain slices at {args.size} x {args.size} "
                          f"(k-space {2 * args.size} x {args.size}, {args.coils} coils), not fastMRI brain at 320 x 320")
    else:
        data = {"train": args.train_data, "val": args.val_data, "eval": args.eval_data}
    import h5py

    first = sorted(Path(data["eval"]).glob("*.h5"))[0] if Path(data["eval"]).is_dir() else Path(data["eval"])
    with h5py.File(first, "r") as f:
        _, coils, h, w = f["kspace"].shape
    op = mbdlprune.load_operator({"operator": {"kind": "mri", "image_size": [h, w], "coils": int(coils), "mask": "uniform",
                                               "acceleration": 6}})
    centre = int(w * 0.2 * 2 / 6)  # the uniform mask's fully sampled centre columns at R = 6
    if args.coil_maps == "auto":
        args.coil_maps = "espirit" if centre >= 12 else "acs"
        if args.coil_maps == "acs":
            reductions.append(f"coil maps: ACS estimate (the {centre}-column centre block at width {w} is too narrow for "
                              "ESPIRiT's 6x6 kernel; the paper's 320 columns give 21)")
    if args.max_iter != 100:
        reductions.append(f"DEQ iteration cap {args.max_iter} (paper: 100)")
    if args.warmup != 10 or args.repeats < 30:
        reductions.append(f"timing: {args.warmup} warm-up + {args.repeats} runs (paper: 10 + 30/100)")
    results = {}
    for arch in args.models.split(","):
        t = time.perf_counter()
        original, trained = original_model(arch, args, op, args.out)
        if not trained:
            reductions.append(f"{arch}: random weights (no checkpoint given): timing and the chain only, PSNR meaningless")
        ratio = args.deq_ratio if arch == "deq-edsr" else args.varnet_ratio
        print(f"[{arch}] pruning at ratio {ratio}", file=sys.stderr)
        pruned = args.out / f"{arch}-pruned.safetensors"
        pr = mbdlprune.prune(original, ratio=ratio, seed=args.seed, out=pruned, force=args.force)
        print(f"[{arch}] fine-tuning ({FINETUNE[arch]['loss']}, {args.epochs} epoch(s))", file=sys.stderr)
        tuned = args.out / f"{arch}-finetuned.safetensors"
        cfg = mbdlprune.FinetuneConfig(epochs=args.epochs, batch_size=1, seed=args.seed, device=args.device,
                                       coil_maps=args.coil_maps, **FINETUNE[arch])
        ft = mbdlprune.finetune(pruned, cfg, data=str(data["train"]), val_data=str(data["val"]) if data.get("val") else None,
                                eval_data=str(data["eval"]), out=tuned, force=args.force)
        print(f"[{arch}] benchmarking on {data['eval']}", file=sys.stderr)
        report = mbdlprune.bench([original, pruned, tuned], str(data["eval"]), warmup=args.warmup, repeats=args.repeats,
                                 max_images=args.max_images, device=args.device, coil_maps=args.coil_maps, seed=args.seed)
        report.write_json(args.out / f"{arch}-bench.json", force=args.force)
        report.write_markdown(args.out / f"{arch}-bench.md", force=args.force)
        results[arch] = {
            "trained_original": trained, "ratio": ratio, "params": [m.params for m in report.models],
            "prior_macs_reduction": [m.prior_macs_reduction for m in report.models],
            "speedup": [m.speedup for m in report.models], "psnr": [m.psnr_mean for m in report.models],
            "ssim": [m.ssim_mean for m in report.models], "median_ms": [m.timing.median_ms for m in report.models],
            "deq_iterations": [(m.deq or {}).get("iterations_mean") for m in report.models],
            "finetune_best": ft.record["validation"]["best"], "seconds": round(time.perf_counter() - t, 1),
            "prune_report": {k: pr.report[k] for k in ("params_before", "params_after")},
        }
    summary = {"setting": {"mask": "uniform", "acceleration": 6, "kspace": [h, w], "coils": int(coils),
                           "metric": "fastmri", "coil_maps": args.coil_maps},
               "reductions": reductions, "results": results, "seconds": round(time.perf_counter() - t0, 1),
               "environment": {"torch": __import__("torch").__version__}}
    from mbdlprune.io import write_json

    write_json(args.out / "paper_setting.json", summary, force=True)  # the run's own summary, rewritten each run
    return summary


def main(argv=None) -> int:
    args = parse(argv)
    s = run(args)
    print(f"paper setting: uniform mask, R = 6, k-space {s['setting']['kspace']}, {s['setting']['coils']} coils, "
          f"fastMRI metric; {s['seconds']:.0f} s in all")
    for r in s["reductions"]:
        print(f"  reduced: {r}")
    for arch, r in s["results"].items():
        for label, i in (("original", 0), ("pruned", 1), ("fine-tuned", 2)):
            sp = r["speedup"][i]
            print(f"  {arch:10s} {label:10s} params {r['params'][i]:>9,}  MACs↓ {r['prior_macs_reduction'][i]:.2f}x  "
                  f"speedup {sp:.2f}x  PSNR {r['psnr'][i]:.2f}  SSIM {r['ssim'][i]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
