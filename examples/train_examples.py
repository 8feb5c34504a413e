"""Train the two example models that ship inside mbdlprune (``mbdlprune/examples_data/``).

Exact command (from the repository root, about 40 minutes on 2 CPU cores)::

    python examples/train_examples.py --out mbdlprune/examples_data --model all --seed 0 --force

``--model deq`` or ``--model unrolled`` trains one; ``--data-only`` writes only the data files
and the operator spec. Everything is seeded (torch, the augmentation stream and the measurement
noise), and training runs with a fixed number of steps, so a rerun on the same torch build
gives the same weights up to floating-point scheduling.

Data (no network access needed; both files ship inside PyPI packages)
  * Training: axial slices of the MNI ICBM152 2009a symmetric T1 template shipped with
    nilearn (``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``,
    197 x 233 x 189 at 1 mm). In-plane it is averaged to 2 mm (98 x 116) and fitted to
    96 x 96; training samples are drawn with random rotation, scale, shift, left-right flip,
    intensity remapping (so the network sees contrasts other than T1), a smooth bias field,
    mild blur and noise. ``finetune_slices.nii.gz`` / ``finetune_val_slices.nii.gz`` are
    plain (unaugmented) slices of the same template: training-distribution data for the
    demo's fine-tuning.
  * Evaluation (held out, a different scan and contrast): nibabel's test file
    ``nibabel/tests/data/example4d.nii.gz`` (128 x 96 x 24 x 2, an EPI run at 2 mm); the
    first volume, 8 axial slices, centre-cropped to 96 x 96 -> ``eval_slices.nii.gz``.
    Nothing from this file is used for training, validation or model selection.

Every stored slice is scaled to a largest magnitude of 1 (what ``mbdlprune.data`` does with
``normalize="max"``), so ``read_volumes`` + ``slices_to_images`` give back the exact arrays.

Measurement model: single-coil Cartesian MRI, 96 x 96, equispaced mask at acceleration 4
(8 fully sampled centre columns plus equispaced columns: 23 of 96 phase-encode columns,
effective acceleration 4.17), no added noise; ``operator_mri4x.toml``. (The paper's "uniform"
mask, every 4th column, folds each edge onto exact copies 24 pixels away, which a small
single-coil CNN prior cannot tell apart; equispaced spacing of 5.5 columns spreads them.)

Models (mbdlprune's own registry architectures)
  * ``deq-edsr``: EDSR prior with 32 features and 4 residual blocks; gamma = 1, alpha = 0.5 at
    initialisation (both trained); Anderson solver, tol 1e-3, max_iter 50; trained with
    Jacobian-free backprop (one differentiated iteration at the fixed point).
  * ``unrolled``: 5 steps sharing one DnCNN prior (32 features, depth 8, no batch norm).
Both are first pretrained (stage A) on 48 x 48 patches as one-step de-aliasers: the input is
x - s P_u x (P_u the projection onto the unsampled k-space columns, s uniform in [0, 1]: the
data-consistent image with a random fraction of the aliasing left), the target x. Stage B
trains the whole network end to end on full 96 x 96 slices (the unrolled network with full
backpropagation, the DEQ with JFB plus a Jacobian penalty: a one-sample Hutchinson estimate of
||J||_F^2 / dim at the fixed point, weight 0.03, which keeps the iteration contractive so that
Anderson reaches tol 1e-3 in about 20 iterations and tol 1e-4 in about 40; trained without it,
the map had a Jacobian norm of 0.98 and the solver stalled near a residual of 1e-3).

The shipped files were made with these commands (the two models side by side, on a 2-core
machine shared with other jobs; the DEQ written to a scratch folder and copied in, the data
files there being byte-identical)::

    python examples/train_examples.py --data-only
    python examples/train_examples.py --model unrolled --threads 1 --log examples/train_unrolled.log
    python examples/train_examples.py --model deq --threads 2 --log examples/train_deq.log
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mbdlprune.data import read_volumes, simulate, slices_to_images  # noqa: E402
from mbdlprune.io import save_model, versions  # noqa: E402
from mbdlprune.metrics import compute_metrics  # noqa: E402
from mbdlprune.models.user import build_arch  # noqa: E402
from mbdlprune.operators import load_operator  # noqa: E402

SIZE = 96
OPERATOR_TOML = """\
# Single-coil Cartesian MRI at 96 x 96, fastMRI's equispaced_fraction mask at acceleration 4: 8 fully sampled
# centre columns (round(96 * 0.08)) plus equispaced columns (spacing 5.5, seeded offset),
# 23 of 96 phase-encode columns (effective acceleration 4.17). No added noise.
[operator]
kind = "mri"
image_size = [96, 96]
acceleration = 4
mask = "equispaced_fraction"
center_fraction = 0.08
seed = 0
"""

DEQ_ARGS = {"n_feats": 32, "n_blocks": 4, "gamma": 1.0, "alpha": 0.5, "solver": "anderson", "tol": 1e-3, "max_iter": 50}
UNROLLED_ARGS = {"prior": "dncnn", "steps": 5, "shared": True, "prior_args": {"features": 32, "depth": 8, "batchnorm": False}}

MNI_REL = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
EPI_REL = "nibabel/tests/data/example4d.nii.gz"
#: axial slices (1 mm index into the template) used for training draws
TRAIN_Z = (20, 150)
#: plain template slices for the demo's fine-tuning and its validation (never the evaluation file)
FINETUNE_Z = tuple(range(30, 150, 8))  # 15 slices
FINETUNE_VAL_Z = (44, 76, 108, 132)
#: slices of example4d.nii.gz (first volume) kept for evaluation
EVAL_Z = (3, 6, 8, 11, 13, 16, 18, 21)


# ------------------------------------------------------------------------------ sources
def source_path(rel: str) -> Path:
    import nibabel
    import nilearn

    root = Path(nilearn.__file__).parents[1] if rel.startswith("nilearn") else Path(nibabel.__file__).parents[1]
    p = root / rel
    if not p.is_file():
        raise SystemExit(f"missing source file {p} (install nilearn and nibabel)")
    return p


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_template_2mm() -> torch.Tensor:
    """MNI T1 template, in-plane 2 x 2 averaged to 2 mm: (189 z, 98 x, 116 y), values in [0, 1]."""
    import nibabel as nib

    vol = np.asanyarray(nib.load(str(source_path(MNI_REL))).dataobj).astype(np.float32) / 255.0
    t = torch.from_numpy(vol).permute(2, 0, 1)[:, None]  # (z, 1, x, y)
    return F.avg_pool2d(t, 2)[:, 0].contiguous()


def fit(a: np.ndarray) -> np.ndarray:
    """Centre crop / zero pad the last two dims to SIZE x SIZE."""
    out = a
    for axis in (-2, -1):
        n = out.shape[axis]
        if n > SIZE:
            s = (n - SIZE) // 2
            out = np.take(out, range(s, s + SIZE), axis=axis)
        elif n < SIZE:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((SIZE - n) // 2, SIZE - n - (SIZE - n) // 2)
            out = np.pad(out, pad)
    return out


def normalise(a: np.ndarray) -> np.ndarray:
    peak = np.abs(a).reshape(a.shape[0], -1).max(axis=1)
    return (a / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def write_slices(path: Path, slices: np.ndarray, mm: float, description: str) -> None:
    """(S, H, W) -> NIfTI (H, W, S) float32 so that read_volumes(axis=2) gives the slices back."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(slices, 0, -1)).astype(np.float32), np.diag([mm, mm, mm, 1.0]))
    img.header["descrip"] = description.encode()[:79]
    nib.save(img, str(path))


def write_data(out: Path) -> dict:
    """eval / fine-tune / fine-tune-validation NIfTI files and the operator spec."""
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    (out / "operator_mri4x.toml").write_text(OPERATOR_TOML, encoding="utf-8")
    tpl = load_template_2mm().numpy()  # (z, 98, 116)
    ft = normalise(fit(tpl[list(FINETUNE_Z)]))
    fv = normalise(fit(tpl[list(FINETUNE_VAL_Z)]))
    write_slices(out / "finetune_slices.nii.gz", ft, 2.0, "MNI152 2009a T1, 2mm, mbdlprune fine-tune slices")
    write_slices(out / "finetune_val_slices.nii.gz", fv, 2.0, "MNI152 2009a T1, 2mm, mbdlprune fine-tune val")
    epi = np.asanyarray(nib.load(str(source_path(EPI_REL))).dataobj).astype(np.float32)[..., 0]  # (128, 96, 24)
    ev = normalise(fit(np.moveaxis(epi, -1, 0)[list(EVAL_Z)]))
    write_slices(out / "eval_slices.nii.gz", ev, 2.0, "nibabel example4d.nii.gz vol 0, mbdlprune eval slices")
    return data_record()


def data_record() -> dict:
    return {
        "training_source": {"file": MNI_REL, "sha256": sha256(source_path(MNI_REL)), "axial_range_1mm": list(TRAIN_Z)},
        "eval_source": {"file": EPI_REL, "sha256": sha256(source_path(EPI_REL)), "volume": 0, "axial_slices": list(EVAL_Z)},
        "finetune_slices_z_1mm": list(FINETUNE_Z),
        "finetune_val_slices_z_1mm": list(FINETUNE_VAL_Z),
    }


# ------------------------------------------------------------------------------ augmentation
class Sampler:
    """Random augmented training images (B, 2, 96, 96) from the 2 mm template, seeded."""

    def __init__(self, tpl: torch.Tensor, seed: int, z_range=TRAIN_Z):
        self.tpl = tpl
        self.g = torch.Generator().manual_seed(seed)
        self.z = torch.arange(z_range[0], z_range[1])
        yy, xx = torch.meshgrid(torch.arange(SIZE) - (SIZE - 1) / 2, torch.arange(SIZE) - (SIZE - 1) / 2, indexing="ij")
        self.grid = torch.stack([xx, yy], -1)  # (H, W, 2): (w, h) offsets in output pixels

    def u(self, *shape) -> torch.Tensor:
        return torch.rand(shape, generator=self.g)

    def batch(self, n: int) -> torch.Tensor:
        z = self.z[torch.randint(len(self.z), (n,), generator=self.g)]
        src = self.tpl[z][:, None]  # (n, 1, 98, 116)
        hs, ws = src.shape[-2:]
        theta = (self.u(n) * 2 - 1) * math.radians(15)
        scale = 0.9 + 0.4 * self.u(n)  # source pixels per output pixel
        flip = torch.where(self.u(n) < 0.5, -1.0, 1.0)
        shift = (self.u(n, 2) * 2 - 1) * 4
        c, s = torch.cos(theta), torch.sin(theta)
        gw, gh = self.grid[..., 0][None], self.grid[..., 1][None]
        gw = gw * flip[:, None, None]
        sw = scale[:, None, None] * (c[:, None, None] * gw - s[:, None, None] * gh) + (ws - 1) / 2 + shift[:, 0, None, None]
        sh = scale[:, None, None] * (s[:, None, None] * gw + c[:, None, None] * gh) + (hs - 1) / 2 + shift[:, 1, None, None]
        grid = torch.stack([(2 * sw + 1) / ws - 1, (2 * sh + 1) / hs - 1], -1)
        img = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
        return self.intensity(img)

    def intensity(self, img: torch.Tensor) -> torch.Tensor:
        n = img.shape[0]
        brain = img > 0.02
        out = img.clone()
        # random piecewise-linear intensity remapping (T1 -> other contrasts) for 70% of the draws
        knots = torch.linspace(0, 1, 6)
        for i in range(n):
            if float(self.u(1)) < 0.7:
                vals = 0.05 + 0.95 * self.u(6)
                vals[0] = 0.0
                t = img[i].clamp(0, 1)
                idx = (t * 5).floor().clamp(max=4).long()
                frac = t * 5 - idx
                out[i] = torch.where(brain[i], vals[idx] * (1 - frac) + vals[idx + 1] * frac, torch.zeros_like(t))
        # smooth multiplicative bias field
        coarse = torch.randn((n, 1, 4, 4), generator=self.g) * 0.25
        bias = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[:, 0].exp()
        out = out * bias
        # mild blur for half of the draws
        sig = 0.3 + 0.7 * self.u(n)
        blur = self.u(n) < 0.5
        if blur.any():
            r = torch.arange(-2, 3, dtype=torch.float32)
            for i in torch.nonzero(blur).flatten().tolist():
                k = torch.exp(-r ** 2 / (2 * sig[i] ** 2))
                k = k / k.sum()
                x = out[i][None, None]
                x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
                x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))
                out[i] = x[0, 0] * brain[i]
        out = out / out.reshape(n, -1).amax(1).clamp_min(1e-6)[:, None, None]
        # noise inside the head (the evaluation scans are noisy too), then per-slice max = 1
        sigma = 0.04 * self.u(n)
        out = (out + sigma[:, None, None] * torch.randn(out.shape, generator=self.g) * brain).clamp_min(0)
        out = out / out.reshape(n, -1).amax(1).clamp_min(1e-6)[:, None, None]
        return torch.stack([out, torch.zeros_like(out)], 1)


# ------------------------------------------------------------------------------ training
def unsampled_part(x: torch.Tensor, op) -> torch.Tensor:
    """P_u x: the part of x in the unsampled k-space columns (single coil: x - A^H A x)."""
    return x - op.A_adjoint(op.A(x))


def pretrain_batch(sampler: Sampler, op, n: int, patch: int, g: torch.Generator):
    """Stage A inputs x - s P_u x (s ~ U[0, 1]) and targets x, as random patches."""
    x = sampler.batch(n)
    s = torch.rand((n, 1, 1, 1), generator=g)
    z = x - s * unsampled_part(x, op)
    i, j = torch.randint(0, SIZE - patch + 1, (2,), generator=g).tolist()
    return z[..., i:i + patch, j:j + patch], x[..., i:i + patch, j:j + patch]


def step_output(model, kind: str, z: torch.Tensor) -> torch.Tensor:
    """What one model iteration makes of a data-consistent image z (no data step: z already is)."""
    if kind == "deq":
        return model.alpha * model.prior(z) + (1 - model.alpha) * z
    return model.prior(z)


def deq_jfb_loss(model, x: torch.Tensor, y: torch.Tensor, op, jac_reg: float):
    """Jacobian-free backprop: solve for x* without gradients, differentiate one iteration f(x*).

    Also returns a Hutchinson estimate of ||J||_F^2 / dim at x* (J = df/dx): penalising it keeps
    the iteration contractive, so the solver converges in few iterations at inference.
    """
    from mbdlprune.models.solvers import get_solver

    with torch.no_grad():
        x_star, info = get_solver(model.solver)(lambda v: model.step(v, y, op), op.A_adjoint(y), model.max_iter, model.tol)
    model.last_info = info
    xs = x_star.detach().requires_grad_(jac_reg > 0)
    fx = model.step(xs, y, op)
    loss = F.l1_loss(fx, x)
    if jac_reg <= 0:
        return loss, torch.zeros(())
    eps = torch.randn_like(xs)
    (vjp,) = torch.autograd.grad(fx, xs, eps, create_graph=True)
    return loss, vjp.pow(2).sum() / eps.numel()


def cosine(lr: float, step: int, total: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def log(fh, msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh:
        fh.write(line + "\n")
        fh.flush()


def val_psnr(model, x: torch.Tensor, y: torch.Tensor, op) -> float:
    model.eval()
    with torch.no_grad():
        xh = torch.cat([model(y[i:i + 4], op) for i in range(0, y.shape[0], 4)])
    model.train()
    return float(compute_metrics(xh, x, "plain")["psnr"].mean())


def train(kind: str, args, op, tpl: torch.Tensor, fh) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(args.seed + (0 if kind == "deq" else 1))
    name, arch_args = ("deq-edsr", DEQ_ARGS) if kind == "deq" else ("unrolled", UNROLLED_ARGS)
    model, spec = build_arch(name, json.loads(json.dumps(arch_args)))
    model.train()
    sampler = Sampler(tpl, args.seed * 1000 + (11 if kind == "deq" else 12))
    g = torch.Generator().manual_seed(args.seed * 1000 + 7)
    # validation: plain template slices between the fine-tune slices (monitoring only)
    val_x = torch.from_numpy(normalise(fit(tpl[[z + 4 for z in FINETUNE_VAL_Z]].numpy())))
    val_x = torch.stack([val_x, torch.zeros_like(val_x)], 1)
    val_y = simulate(val_x, op, seed=args.seed, stream=5)
    t0 = time.perf_counter()
    rec = {"stage_a": {}, "stage_b": {}}

    # stage A: one-step de-aliasing on patches
    steps_a = args.steps_a
    opt = torch.optim.Adam(model.parameters(), lr=args.lr_a)
    ta = time.perf_counter()
    for it in range(steps_a):
        for grp in opt.param_groups:
            grp["lr"] = cosine(args.lr_a, it, steps_a)
        z, x = pretrain_batch(sampler, op, args.batch_a, args.patch, g)
        loss = F.l1_loss(step_output(model, kind, z), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 50 == 0 or it == steps_a - 1:
            log(fh, f"{kind} A {it + 1}/{steps_a} loss {loss.item():.4f} ({time.perf_counter() - ta:.0f}s)")
    rec["stage_a"] = {"steps": steps_a, "batch": args.batch_a, "patch": args.patch, "lr": args.lr_a, "schedule": "cosine",
                      "loss": "l1", "seconds": round(time.perf_counter() - ta, 1)}
    log(fh, f"{kind} after stage A: val PSNR {val_psnr(model, val_x, val_y, op):.2f} dB")

    # stage B: end to end on full slices
    steps_b = args.steps_b_deq if kind == "deq" else args.steps_b_unrolled
    opt = torch.optim.Adam(model.parameters(), lr=args.lr_b)
    if kind == "deq":
        model.max_iter = args.train_max_iter
    tb = time.perf_counter()
    its = []
    for it in range(steps_b):
        for grp in opt.param_groups:
            grp["lr"] = cosine(args.lr_b, it, steps_b)
        x = sampler.batch(args.batch_b)
        y = op.measure(x)
        if kind == "deq":
            loss, jr = deq_jfb_loss(model, x, y, op, args.jac_reg)
        else:
            loss, jr = F.l1_loss(model(y, op), x), None
        opt.zero_grad(set_to_none=True)
        (loss if jr is None else loss + args.jac_reg * jr).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if kind == "deq":
            its.append(model.last_info["iterations"])
        if it % 25 == 0 or it == steps_b - 1:
            extra = f" jr {jr.item():.3f} iters {np.mean(its[-25:]):.1f} res {model.last_info['residual']:.1e}" if kind == "deq" else ""
            extra += f" gamma {model.gamma.item():.3f} alpha {model.alpha.item():.3f}" if kind == "deq" else ""
            log(fh, f"{kind} B {it + 1}/{steps_b} loss {loss.item():.4f}{extra} ({time.perf_counter() - tb:.0f}s)")
        if (it + 1) % 100 == 0:
            log(fh, f"{kind} B {it + 1}: val PSNR {val_psnr(model, val_x, val_y, op):.2f} dB")
    if kind == "deq":
        model.max_iter = DEQ_ARGS["max_iter"]
    rec["stage_b"] = {"steps": steps_b, "batch": args.batch_b, "lr": args.lr_b, "schedule": "cosine", "loss": "l1",
                      "grad_clip": 1.0, "seconds": round(time.perf_counter() - tb, 1)}
    if kind == "deq":
        rec["stage_b"].update(backward="jfb", train_max_iter=args.train_max_iter, train_iterations_mean=float(np.mean(its)),
                              jacobian_regularisation=args.jac_reg,
                              jacobian_regularisation_definition="weight x ||e^T J||^2 / dim, e ~ N(0, I), J = df/dx at the fixed point (one Hutchinson sample)")
    model.eval()
    rec["val_psnr_template"] = val_psnr(model, val_x, val_y, op)
    model.eval()
    rec["wall_time_s"] = round(time.perf_counter() - t0, 1)
    log(fh, f"{kind} done in {rec['wall_time_s']:.0f}s, template val PSNR {rec['val_psnr_template']:.2f} dB")
    return model, {"arch_spec": spec, "record": rec}


# ------------------------------------------------------------------------------ evaluation
def evaluate(model, op, eval_file: Path, seed: int = 0) -> dict:
    """PSNR/SSIM ('plain' metric) of the model and of zero filling on the evaluation slices."""
    vols = read_volumes(eval_file)
    x = torch.cat([slices_to_images(v, op) for v in vols])
    y = simulate(x, op, seed=seed)
    model.eval()
    outs, iters, res = [], [], []
    with torch.no_grad():
        for i in range(x.shape[0]):
            outs.append(model(y[i:i + 1], op))
            info = getattr(model, "last_info", {})
            if "residual" in info:
                iters.append(info["iterations"])
                res.append(info["residual"])
        zf = op.A_adjoint(y)
    m = compute_metrics(torch.cat(outs), x, "plain")
    z = compute_metrics(zf, x, "plain")
    out = {
        "n_slices": int(x.shape[0]),
        "psnr": [round(float(v), 3) for v in m["psnr"]],
        "ssim": [round(float(v), 4) for v in m["ssim"]],
        "psnr_mean": float(m["psnr"].mean()), "ssim_mean": float(m["ssim"].mean()),
        "zero_filled_psnr": [round(float(v), 3) for v in z["psnr"]],
        "zero_filled_ssim": [round(float(v), 4) for v in z["ssim"]],
        "zero_filled_psnr_mean": float(z["psnr"].mean()), "zero_filled_ssim_mean": float(z["ssim"].mean()),
    }
    out["psnr_gain_min"] = float((m["psnr"] - z["psnr"]).min())
    out["psnr_gain_mean"] = out["psnr_mean"] - out["zero_filled_psnr_mean"]
    if iters:
        out["deq"] = {"tol": model.tol, "max_iter": model.max_iter, "iterations_mean": float(np.mean(iters)),
                      "iterations_max": int(max(iters)), "residual_max": float(max(res))}
        tol0, it0 = model.tol, model.max_iter
        model.tol, model.max_iter = 1e-4, 100
        its, rs = [], []
        with torch.no_grad():
            for i in range(x.shape[0]):
                model(y[i:i + 1], op)
                its.append(model.last_info["iterations"])
                rs.append(model.last_info["residual"])
        model.tol, model.max_iter = tol0, it0
        out["deq_tol_1e-4"] = {"iterations_mean": float(np.mean(its)), "iterations_max": int(max(its)),
                               "residual_max": float(max(rs))}
    return out


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "mbdlprune" / "examples_data")
    ap.add_argument("--model", choices=("deq", "unrolled", "all"), default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-only", action="store_true")
    ap.add_argument("--steps-a", type=int, default=700)
    ap.add_argument("--batch-a", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--lr-a", type=float, default=2e-3)
    ap.add_argument("--steps-b-unrolled", type=int, default=220)
    ap.add_argument("--steps-b-deq", type=int, default=500)
    ap.add_argument("--batch-b", type=int, default=4)
    ap.add_argument("--lr-b", type=float, default=5e-4)
    ap.add_argument("--train-max-iter", type=int, default=25)
    ap.add_argument("--jac-reg", type=float, default=0.03, help="DEQ: weight of the Jacobian (contraction) penalty")
    ap.add_argument("--log", type=Path, default=None)
    ap.add_argument("--report-dir", type=Path, default=None, help="where train_report_<model>.json goes (default: examples/)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    fh = open(args.log, "a", encoding="utf-8") if args.log else None
    command = "python examples/train_examples.py " + " ".join(argv if argv is not None else sys.argv[1:])
    log(fh, f"command: {command}")
    names = ("operator_mri4x.toml", "eval_slices.nii.gz", "finetune_slices.nii.gz", "finetune_val_slices.nii.gz")
    if args.data_only or args.model == "all" or not all((args.out / n).exists() for n in names):
        data_rec = write_data(args.out)
    else:  # a second process training the other model in parallel reuses the files
        data_rec = data_record()
    op = load_operator(args.out / "operator_mri4x.toml")
    log(fh, f"operator: {op}")
    if args.data_only:
        return 0
    tpl = load_template_2mm()
    kinds = ("unrolled", "deq") if args.model == "all" else (args.model,)
    report_dir = args.report_dir or (REPO / "examples")
    for kind in kinds:
        model, info = train(kind, args, op, tpl, fh)
        ev = evaluate(model, op, args.out / "eval_slices.nii.gz", seed=0)
        log(fh, f"{kind} eval: PSNR {ev['psnr_mean']:.2f} dB (zero-filled {ev['zero_filled_psnr_mean']:.2f}), "
                f"SSIM {ev['ssim_mean']:.4f} (zero-filled {ev['zero_filled_ssim_mean']:.4f}), "
                f"min gain {ev['psnr_gain_min']:.2f} dB" + (f", DEQ iters {ev['deq']['iterations_mean']:.1f}" if "deq" in ev else ""))
        fname = "deq_edsr_mri4x.safetensors" if kind == "deq" else "unrolled_dncnn_mri4x.safetensors"
        training = {
            "script": "examples/train_examples.py", "command": command, "seed": args.seed, "threads": args.threads,
            **info["record"], "data": data_rec,
            "augmentation": "rotation +-15 deg, scale 0.9-1.3, shift +-4 px, LR flip, intensity remap (70%), bias field, blur (50%), noise sigma <= 0.04",
            "machine": platform.processor() or platform.machine(),
        }
        meta = {"arch": info["arch_spec"].to_dict(), "operator": op.spec, "training": training, "evaluation": ev,
                "example": kind, "versions": versions()}
        save_model(args.out / fname, model, meta, force=args.force)
        report = {"file": fname, "params": int(sum(p.numel() for p in model.parameters())), "arch": info["arch_spec"].to_dict(),
                  "training": training, "evaluation": ev}
        (report_dir / f"train_report_{kind}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        log(fh, f"wrote {args.out / fname}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
