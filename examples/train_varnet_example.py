"""Train the multi-coil E2E-VarNet example that ships inside mbdlprune (``varnet_mc4x.safetensors``).

Exact command (from the repository root), as run for the shipped file: 1661 s of training, 1670 s
in all (28 minutes), on one core of a 2-core x86_64 CPU shared with another job, torch 2.13.0
(CPU); needs nilearn for the template (``pip install -e ".[train]"``)::

    python examples/train_varnet_example.py --threads 1 --log examples/train_varnet.log --force

Everything is seeded (torch, the augmentation stream, the coil-array turns and the mask
offsets) and training runs a fixed number of steps, so a rerun on the same torch build gives the
same weights up to floating-point scheduling.

Data: raw multi-coil k-space made from real brain images with the conventions of
``mbdlprune.data.fastmri_files`` (what ``write_fastmri_file`` writes and the demo reads):
  * each magnitude image (96 x 96, largest magnitude 1) is placed in a field of view
    oversampled x2 along the readout (192 x 96, as fastMRI brain's 640 readout for a 320 recon),
    multiplied by 4 smooth complex coil sensitivities (``coil_sensitivities``, the coil array
    turned by a random angle per sample) and Fourier transformed (centred orthonormal FFT):
    k-space (4, 192, 96); the target is the RSS of the coil images cropped to 96 x 96;
  * training images: augmented axial slices of the MNI152 2009a T1 template shipped with
    nilearn, drawn by ``examples/train_examples.py``'s ``Sampler`` (rotation, scale, shift, flip,
    intensity remapping, bias field, blur, noise; imported, not copied);
  * mask: fastMRI's ``equispaced_fraction`` (``EquispacedMaskFractionFunc``) at acceleration 4
    with centre fraction 0.08 (8 ACS columns of 96, spacing 5.5), a new random offset for every
    training sample as fastMRI trains; k-space taken unscaled (fastMRI's VarNet: ``scale="none"``);
  * evaluation (held out): ``mbdlprune.examples.raw_example_data``'s ``eval.h5``, made from the
    8 shipped ``eval_slices.nii.gz`` slices (nibabel's ``example4d.nii.gz``, an EPI scan never
    trained on), scored with fastMRI's protocol (``mbdlprune.data.raw.prepare_eval``: the mask
    drawn with the file's seed, ``tuple(map(ord, "eval.h5"))``; the centre crop; metric
    ``fastmri`` = fastMRI's evaluate.py: PSNR with the volume's max, SSIM 7 x 7, K1 .01, K2 .03),
    and also with the mask the model file records (seed 0); zero-filled = RSS of the inverse FFT
    of the masked k-space, cropped (fastMRI's ``run_zero_filled``).

Model: ``e2e-varnet`` (fastMRI's E2E-VarNet) with 4 cascades, chans 12, pools 2, sens_chans 4,
sens_pools 2, ``output="complex"`` (the coil-combined image sum_c conj(S_c) F^-1 k_c; its
magnitude is what is compared with the RSS target). Loss: fastMRI's SSIM loss (1 - SSIM, 7 x 7
uniform window, sample covariance, data range = the target's maximum) plus L1, both on the
centre-cropped magnitude; Adam with a cosine learning rate, gradient clipping 1.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "examples"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import train_examples as base  # noqa: E402  (template loading, fitting and augmentation)

from mbdlprune.data import raw  # noqa: E402
from mbdlprune.data.fastmri_files import coil_sensitivities, simulate_kspace  # noqa: E402
from mbdlprune.examples import (RAW_COILS, RAW_FILES, RAW_OVERSAMPLE, RAW_PROTOCOL, example_path,  # noqa: E402
                                raw_example_data)
from mbdlprune.io import save_model, sha256_file, versions  # noqa: E402
from mbdlprune.metrics import get_definition, ssim, volume_metrics  # noqa: E402
from mbdlprune.models.user import build_arch  # noqa: E402
from mbdlprune.operators import load_operator  # noqa: E402
from mbdlprune.operators.masks import equispaced_fraction_mask, fraction_center_lines  # noqa: E402

SIZE = base.SIZE  # 96
HEIGHT = RAW_OVERSAMPLE * SIZE  # 192: the readout, oversampled
ARCH = "e2e-varnet"
ARCH_ARGS = {"num_cascades": 4, "chans": 12, "pools": 2, "sens_chans": 4, "sens_pools": 2}
OPERATOR = {"operator": {"kind": "mri", "image_size": [HEIGHT, SIZE], "coils": RAW_COILS, "mask": RAW_PROTOCOL["mask"],
                         "mask_rule": 2, "acceleration": RAW_PROTOCOL["acceleration"],
                         "center_fraction": RAW_PROTOCOL["center_fraction"], "seed": 0}}
OUT_NAME = "varnet_mc4x.safetensors"


# ------------------------------------------------------------------------------ data
class KspaceSampler:
    """Random training batches: masked k-space (B, coils, 192, 96, 2), masks (B, 1, 1, 96, 1), targets (B, 96, 96)."""

    def __init__(self, tpl: torch.Tensor, seed: int):
        self.images = base.Sampler(tpl, seed)
        self.rng = np.random.default_rng(seed + 1)
        self.n_center = fraction_center_lines(SIZE, RAW_PROTOCOL["center_fraction"])
        acc = RAW_PROTOCOL["acceleration"]
        self.spacing = acc * (self.n_center - SIZE) / (self.n_center * acc - SIZE)

    def mask(self) -> np.ndarray:
        """fastMRI's EquispacedMaskFractionFunc with a random offset in [0, round(spacing))."""
        offset = int(self.rng.integers(0, round(self.spacing)))
        return equispaced_fraction_mask(SIZE, RAW_PROTOCOL["acceleration"], self.n_center, offset=offset)

    def batch(self, n: int):
        x = self.images.batch(n)[:, 0].numpy()  # (n, 96, 96) magnitudes, max 1
        ks, ts, ms = [], [], []
        for i in range(n):
            rot = float(self.rng.uniform(0.0, 2 * np.pi / RAW_COILS))
            k, t = simulate_kspace(x[i:i + 1], coils=RAW_COILS, oversample=RAW_OVERSAMPLE, rotation=rot)
            m = self.mask()
            ks.append(raw.undersample(k, m)[0])
            ts.append(t[0])
            ms.append(m)
        y = torch.view_as_real(torch.from_numpy(np.stack(ks))).float()
        mask = torch.from_numpy(np.stack(ms)).reshape(n, 1, 1, SIZE, 1)
        return y, mask, torch.from_numpy(np.stack(ts))


def sampling(mask: torch.Tensor, n_low: int):
    """What an E2E-VarNet reads from an operator: ``mask`` and ``num_low_frequencies``."""
    return types.SimpleNamespace(mask=mask, num_low_frequencies=int(n_low))


def magnitude_crop(out: torch.Tensor) -> torch.Tensor:
    """(N, 2, 192, 96) complex output -> (N, 96, 96) magnitude, centre-cropped as fastMRI crops."""
    mag = torch.sqrt(out[:, 0] ** 2 + out[:, 1] ** 2 + 1e-12)
    return raw.center_crop(mag, (SIZE, SIZE))


def fastmri_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """fastMRI's SSIMLoss similarity: 7 x 7 uniform window, sample covariance, data range = target max."""
    peak = target.reshape(target.shape[0], -1).amax(1)
    return ssim(pred[:, None], target[:, None], window=7, data_range=peak, sample_covariance=True, weights="uniform")


# ------------------------------------------------------------------------------ evaluation
def zero_filled(ev) -> np.ndarray:
    """fastMRI's zero-filled reconstruction: RSS of the inverse FFT of the masked k-space, cropped."""
    return np.ascontiguousarray(raw.center_crop(raw.rss_target(ev.kspace), ev.crop)) * ev.scale.reshape(-1, 1, 1)


def reconstruct(model, ev) -> np.ndarray:
    y = ev.measurements()
    mask = torch.from_numpy(ev.mask).reshape(1, 1, 1, -1, 1)
    op = sampling(mask, ev.num_low_frequencies)
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(y[i:i + 1], op) for i in range(y.shape[0])])
    return ev.to_target_units(out)


def with_mask(ev, columns: np.ndarray, n_low: int, volume):
    """The same volume undersampled with another mask (the one the model file records)."""
    k, s = raw.scale_kspace(raw.undersample(volume.kspace, columns), RAW_PROTOCOL["scale"])
    rec = {**ev.record, "mask": "the model file's operator mask (seed 0)", "sampled_fraction": float((columns > 0).mean())}
    return raw.EvalSlices(ev.name, k, np.asarray(columns, np.float32), int(n_low), s, ev.target, ev.crop, ev.maxval, rec)


def score(pred: np.ndarray, ev) -> dict:
    m = volume_metrics(torch.from_numpy(pred), torch.from_numpy(ev.target), "fastmri", maxval=ev.maxval)
    return {"psnr": m["psnr"], "ssim": m["ssim"], "nmse": m["nmse"],
            "psnr_slices": [round(float(v), 3) for v in m["per_slice"]["psnr"]],
            "ssim_slices": [round(float(v), 4) for v in m["per_slice"]["ssim"]]}


def evaluate(model, volume, op=None) -> dict:
    """fastMRI-protocol scores of the model and of zero filling on one raw volume."""
    ev = raw.prepare_eval(volume, RAW_PROTOCOL["mask"], RAW_PROTOCOL["acceleration"], RAW_PROTOCOL["center_fraction"],
                          RAW_PROTOCOL["scale"])
    runs = {"fastmri_protocol": ev}
    if op is not None:
        runs["operator_mask"] = with_mask(ev, op.mask.reshape(-1).numpy(), op.num_low_frequencies, volume)
    out: dict = {}
    for key, e in runs.items():
        m, z = score(reconstruct(model, e), e), score(zero_filled(e), e)
        out[key] = {"file": volume.name, "sha256": volume.sha256, "protocol": e.record, "model": m, "zero_filled": z,
                    "psnr_gain_min": float(min(a - b for a, b in zip(m["psnr_slices"], z["psnr_slices"])))}
    return out


def flat_evaluation(ev: dict, pruned: dict | None) -> dict:
    """The recorded ``evaluation``: the fastMRI-protocol volume scores at the top (what
    ``mbdlprune examples`` lists), every run below."""
    fm = ev["fastmri_protocol"]
    rec = {
        "metric": "fastmri", "metric_definition": get_definition("fastmri").to_dict(),
        "n_slices": len(fm["model"]["psnr_slices"]),
        "psnr_mean": fm["model"]["psnr"], "ssim_mean": fm["model"]["ssim"],
        "zero_filled_psnr_mean": fm["zero_filled"]["psnr"], "zero_filled_ssim_mean": fm["zero_filled"]["ssim"],
        "psnr_gain_min": fm["psnr_gain_min"],
        "note": "psnr_mean / ssim_mean are fastMRI's per-volume PSNR and SSIM of eval.h5 (one volume of 8 slices)",
        **ev,
    }
    if pruned is not None:
        rec["pruned_0.5_no_finetuning"] = pruned
    return rec


def prune_check(model, spec, op, volume, ratio: float, round_to: int) -> dict | None:
    """Score of the model pruned at ``ratio`` with no fine-tuning (cheap; informative only)."""
    import copy

    from mbdlprune.api import prune_model

    try:
        res = prune_model(copy.deepcopy(model), spec, op, ratio=ratio, round_to=round_to)
    except Exception as e:  # noqa: BLE001  (optional: report why, do not fail the run)
        return {"error": f"{type(e).__name__}: {e}"}
    ev = evaluate(res.model, volume)["fastmri_protocol"]
    params = int(sum(p.numel() for p in res.model.parameters()))
    return {"ratio": ratio, "round_to": round_to, "params": params, "psnr": ev["model"]["psnr"], "ssim": ev["model"]["ssim"]}


# ------------------------------------------------------------------------------ training
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "mbdlprune" / "examples_data" / OUT_NAME)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1300)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--l1-weight", type=float, default=1.0)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--prune-ratio", type=float, default=0.5, help="also score the model pruned at this ratio (0: skip)")
    ap.add_argument("--prune-round-to", type=int, default=2)
    ap.add_argument("--log", type=Path, default=None)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    fh = open(args.log, "a", encoding="utf-8") if args.log else None
    command = "python examples/train_varnet_example.py " + " ".join(argv if argv is not None else sys.argv[1:])
    log = lambda msg: base.log(fh, msg)  # noqa: E731
    log(f"command: {command}")
    if args.out.exists() and not args.force:
        raise SystemExit(f"{args.out} exists; pass --force to replace it")

    op = load_operator(OPERATOR)
    log(f"operator: {op}")
    data_dir = Path(tempfile.mkdtemp(prefix="varnet-example-"))
    files = raw_example_data(data_dir)
    vols = {name: raw.read_raw_file(p) for name, p in files.items()}
    tpl = base.load_template_2mm()

    model, spec = build_arch(ARCH, json.loads(json.dumps(ARCH_ARGS)))
    params = int(sum(p.numel() for p in model.parameters()))
    log(f"{ARCH} {ARCH_ARGS}: {params:,} parameters")
    sampler = KspaceSampler(tpl, args.seed * 1000 + 21)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    val_hist = []
    model.train()
    for it in range(args.steps):
        for grp in opt.param_groups:
            grp["lr"] = base.cosine(args.lr, it, args.steps)
        y, mask, target = sampler.batch(args.batch)
        pred = magnitude_crop(model(y, sampling(mask, sampler.n_center)))
        s = fastmri_ssim(pred, target).mean()
        l1 = (pred - target).abs().mean()
        loss = (1 - s) + args.l1_weight * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if it % 25 == 0 or it == args.steps - 1:
            log(f"step {it + 1}/{args.steps} loss {loss.item():.4f} ssim {s.item():.4f} l1 {l1.item():.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
        if (it + 1) % args.val_every == 0 or it == args.steps - 1:
            v = evaluate(model, vols["finetune-val"])["fastmri_protocol"]
            val_hist.append({"step": it + 1, "psnr": v["model"]["psnr"], "ssim": v["model"]["ssim"]})
            log(f"step {it + 1}: template validation (finetune_val.h5) PSNR {v['model']['psnr']:.2f} dB, "
                f"SSIM {v['model']['ssim']:.4f} (zero-filled {v['zero_filled']['psnr']:.2f} / {v['zero_filled']['ssim']:.4f})")
            model.train()
    train_s = time.perf_counter() - t0
    model.eval()
    log(f"trained in {train_s:.0f}s")

    ev = evaluate(model, vols["eval"], op)
    for key, e in ev.items():
        log(f"eval ({key}): PSNR {e['model']['psnr']:.2f} dB, SSIM {e['model']['ssim']:.4f} "
            f"(zero-filled {e['zero_filled']['psnr']:.2f} / {e['zero_filled']['ssim']:.4f}); "
            f"min per-slice gain {e['psnr_gain_min']:.2f} dB")
    pruned = None
    if args.prune_ratio > 0:
        pruned = prune_check(model, spec, op, vols["eval"], args.prune_ratio, args.prune_round_to)
        log(f"pruned at {args.prune_ratio} (round_to {args.prune_round_to}, no fine-tuning): {pruned}")

    data = base.data_record()
    training = {
        "script": "examples/train_varnet_example.py", "command": command, "seed": args.seed, "threads": args.threads,
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "schedule": "cosine", "optimizer": "adam", "grad_clip": 1.0,
        "loss": f"(1 - SSIM) + {args.l1_weight} * L1 on the centre-cropped magnitude vs the RSS target; SSIM as fastMRI's "
                "SSIMLoss (7x7 uniform window, sample covariance, K1 0.01, K2 0.03, data range = target max)",
        "seconds": round(train_s, 1), "params": params,
        "data": {
            "training_source": data["training_source"],
            "augmentation": "examples/train_examples.py Sampler: rotation +-15 deg, scale 0.9-1.3, shift +-4 px, LR flip, "
                            "intensity remap (70%), bias field, blur (50%), noise sigma <= 0.04; per-slice max 1",
            "kspace": f"image zero padded to {HEIGHT} x {SIZE} (readout oversampled x{RAW_OVERSAMPLE}), {RAW_COILS} coil "
                      "sensitivities (mbdlprune.data.fastmri_files.coil_sensitivities, array turned by U[0, 2 pi / coils) "
                      "per sample), centred orthonormal FFT, unscaled; target = RSS of the coil images cropped to 96 x 96",
            "mask": f"{RAW_PROTOCOL['mask']}, acceleration {RAW_PROTOCOL['acceleration']}, centre fraction "
                    f"{RAW_PROTOCOL['center_fraction']} ({sampler.n_center} ACS columns), random offset per sample",
            "eval_source": {**data["eval_source"], "slices_file": "eval_slices.nii.gz",
                            "slices_sha256": sha256_file(example_path("eval"))},
            "eval_file": {"name": RAW_FILES["eval"][0], "coil_seed": RAW_FILES["eval"][2], "coils": RAW_COILS,
                          "oversample": RAW_OVERSAMPLE, "sha256": vols["eval"].sha256,
                          "made_by": "mbdlprune.examples.raw_example_data"},
            "validation": {"file": RAW_FILES["finetune-val"][0], "history": val_hist, "use": "monitoring only"},
        },
        "machine": platform.processor() or platform.machine(),
    }
    meta = {"arch": spec.to_dict(), "operator": op.spec, "training": training,
            "evaluation": flat_evaluation(ev, pruned), "raw_protocol": dict(RAW_PROTOCOL),
            "example": "varnet", "versions": versions()}
    save_model(args.out, model, meta, force=args.force, operator=op)
    log(f"wrote {args.out} ({args.out.stat().st_size:,} bytes); total {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
