"""Validation during fine-tuning: PSNR on held-out images, or measurement consistency without ground truth."""

from __future__ import annotations

from dataclasses import dataclass

from .config import FinetuneConfig
from .distributed import _Dist, _all_reduce_sum
from .inputs import _autocast, _collate


@dataclass
class _ValResult:
    metric: str  # "psnr" or "measurement-consistency"
    value: float
    extra: dict[str, float]

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "psnr"

    def better_than(self, other: float | None) -> bool:
        if other is None:
            return True
        return self.value > other if self.higher_is_better else self.value < other


def _validate(model, ds, op, cfg: FinetuneConfig, device: str, d: _Dist) -> _ValResult | None:
    """Mean PSNR/SSIM over validation images; mean L1 measurement consistency without ground truth."""
    if ds is None:
        return None
    import torch

    from .. import metrics
    from ..data.raw_dataset import batch_operator
    from .losses import match_target

    model.eval()
    raw = "mask" in ds.extra
    metric = cfg.metric_for(raw)
    idx = list(range(d.rank, len(ds), d.world))
    sums = [0.0, 0.0, 0.0, 0.0]  # psnr|mc, ssim, iterations, count
    with torch.no_grad():
        for start in range(0, len(idx), cfg.batch_size):
            batch = _collate([ds[i] for i in idx[start:start + cfg.batch_size]])
            y = batch["y"].to(device)
            op_b = batch_operator(op, batch, device)
            with _autocast(device, cfg.bf16):
                x_net = model(y, op_b)
            x_net = x_net.float()
            n = y.shape[0]
            if ds.has_ground_truth:
                x = batch["x"].to(device)
                maxval = batch["maxval"].to(device) if (raw and metrics.get_definition(metric).per_volume) else None
                m = metrics.compute_metrics(match_target(x_net, x), x, metric, maxval=maxval)
                sums[0] += float(m["psnr"].clamp(max=200).sum())
                sums[1] += float(m["ssim"].sum())
            else:
                r = (op_b.A(x_net) - y).abs().reshape(n, -1).mean(dim=1)
                sums[0] += float(r.sum())
            info = getattr(model, "last_info", None) or {}
            sums[2] += float(info.get("iterations", 0)) * n
            sums[3] += n
    sums = _all_reduce_sum(sums, d, device)
    count = max(sums[3], 1.0)
    if ds.has_ground_truth:
        extra = {"ssim": sums[1] / count}
        res = _ValResult("psnr", sums[0] / count, extra)
    else:
        res = _ValResult("measurement-consistency", sums[0] / count, {})
    if sums[2] > 0:
        res.extra["deq_iterations"] = sums[2] / count
    return res


def _fmt_val(v: _ValResult | None) -> str:
    if v is None:
        return "-"
    return f"{v.value:.2f} dB" if v.metric == "psnr" else f"MC {v.value:.3g}"


def _norm_text(normalize: str, kind: str) -> str:
    what = "k-space" if kind == "kspace" else "image"
    return {
        "max": f"each slice's {what} divided by its largest magnitude",
        "volume": f"each volume's {what} divided by its largest magnitude",
        "none": f"{what} values as stored",
    }[normalize]


def _val_definition(metric: str | None, cfg: FinetuneConfig, raw: bool = False) -> str | None:
    if metric == "psnr":
        from ..metrics import get_definition

        return get_definition(cfg.metric_for(raw)).describe()
    if metric == "measurement-consistency":
        return ("no ground truth in the validation data: mean |A x_hat - y| (L1) over the validation measurements, "
                "lower is better; this checks data fidelity only, not image quality")
    return None
