"""sweep --figure: the speed-vs-PSNR frontier (data, drawing, PNG, refusals, matplotlib missing)."""

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mbdlprune.errors import MbdlError

from blob_images import blob_images

SIZE = 16
UNROLLED_ARGS = {"prior": "dncnn", "steps": 2, "prior_args": {"features": 8, "depth": 3}}
FAST = {"warmup": 0, "repeats": 3, "device": "cpu"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _images(n=3):
    return blob_images(n, SIZE)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mbdlprune.models.user import build_arch

    d = tmp_path_factory.mktemp("sweepfig")
    torch.manual_seed(0)
    m, _ = build_arch("unrolled", UNROLLED_ARGS)
    torch.save(m.state_dict(), d / "unrolled.pt")
    np.save(d / "eval.npy", _images()[:, 0].numpy())
    (d / "op.toml").write_text('[operator]\nkind = "denoise"\nimage_size = [16, 16]\nnoise_sigma = 0.05\nchannels = 2\n')
    return d


def _sweep(d, **kw):
    from mbdlprune.workflows.sweep import sweep

    return sweep(d / "unrolled.pt", arch="unrolled", arch_args=UNROLLED_ARGS, operator=d / "op.toml",
                 eval_data=_images(), round_to=1, **FAST, **kw)


def _cli(args):
    from mbdlprune.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _cli_sweep(d, *extra):
    return _cli(["sweep", d / "unrolled.pt", "--arch", "unrolled", "--arch-args", json.dumps(UNROLLED_ARGS),
                 "--operator", d / "op.toml", "--eval-data", d / "eval.npy", "--ratios", "0.5", "--round-to", "1",
                 "--warmup", "0", "--repeats", "2", "--device", "cpu", "--quiet", *extra])


def test_sweep_figure_png_and_data(setup, tmp_path):
    from mbdlprune.workflows.sweep_figure import frontier_data, frontier_figure

    out = tmp_path / "sw"
    fig_path = out / "sweep.png"  # inside an --out-dir the sweep creates
    sr = _sweep(setup, ratios="0.25,0.5", max_psnr_drop=1e6, out_dir=out, figure=fig_path)
    assert fig_path.read_bytes()[:8] == PNG_MAGIC
    assert sr.files["figure"] == str(fig_path)
    assert json.loads((out / "sweep.json").read_text())["files"]["figure"] == str(fig_path)
    assert sr.files["best"] == sr.best_path

    data = frontier_data(sr)
    pts = data["points"]
    assert [q["ratio"] for q in pts] == [0.0, 0.25, 0.5] and data["left_out"] == []
    ref = pts[0]
    assert ref["original"] and ref["x"] == 1.0 and ref["y"] == sr.points[0].psnr_mean and ref["y_err"] == 0.0
    assert data["reference"] == {"x": 1.0, "y": ref["y"]}
    for q, p in zip(pts, sr.points):
        assert q["x_low"] <= q["x"] <= q["x_high"]
        assert q["on_front"] == p.on_front and q["text"] == ("original" if p.ratio == 0 else f"r={p.ratio:g}")
    for q, m, p in zip(pts[1:], sr.bench.models[1:], sr.points[1:]):
        assert q["x"] == pytest.approx(m.speedup)
        lo = sr.bench.models[0].timing.p10_ms / m.timing.p90_ms
        assert q["x_low"] == pytest.approx(lo) and p.speedup_low == pytest.approx(lo)
        assert q["y_err"] == pytest.approx(m.psnr_drop_paired_std or 0.0)
    assert sorted(data["front"]) == sorted([q["x"], q["y"]] for q in pts if q["on_front"])
    assert data["best"] == sr.best.label and [q["label"] for q in pts if q["best"]] == [sr.best.label]
    assert data["budget_y"] == pytest.approx(ref["y"] - 1e6)

    fig = frontier_figure(data)
    try:
        ax = fig.axes[0]
        scatter = {c.get_gid(): c for c in ax.collections}
        assert len(scatter["points"].get_offsets()) == 3
        assert len(scatter["best"].get_offsets()) == 1
        lines = {ln.get_gid(): ln for ln in ax.lines}
        if len(data["front"]) > 1:
            assert len(lines["front"].get_xdata()) == len(data["front"])
        assert "budget" in lines and "reference" in lines
        assert {t.get_text() for t in ax.texts} == {"original", "r=0.25", "r=0.5"}
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_sweep_figure_refuses_existing_file(setup, tmp_path):
    fig_path = tmp_path / "f.png"
    fig_path.write_bytes(b"keep")
    said = []
    with pytest.raises(MbdlError, match="already exists"):
        _sweep(setup, ratios=[0.5], figure=fig_path, progress=said.append)
    assert said == [] and fig_path.read_bytes() == b"keep"  # refused before any pruning
    with pytest.raises(MbdlError, match="writes itself"):
        _sweep(setup, ratios=[0.5], out_dir=tmp_path / "o", figure=tmp_path / "o" / "sweep.json")

    r = _cli_sweep(setup, "--figure", fig_path)
    assert r.exit_code == 2 and "already exists" in r.output and len(r.output.strip().splitlines()) == 1
    assert fig_path.read_bytes() == b"keep"
    ok = _cli_sweep(setup, "--figure", fig_path, "--force", "--json", tmp_path / "s.json")
    assert ok.exit_code == 0, ok.output
    assert fig_path.read_bytes()[:8] == PNG_MAGIC
    assert json.loads((tmp_path / "s.json").read_text())["files"] == {"figure": str(fig_path)}


def test_sweep_figure_without_matplotlib(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    said = []
    with pytest.raises(MbdlError, match=r'pip install "mbdlprune\[plot\]"'):
        _sweep(setup, ratios=[0.5], figure=tmp_path / "f.png", progress=said.append)
    assert said == [] and not (tmp_path / "f.png").exists()
    r = _cli_sweep(setup, "--figure", tmp_path / "f.png")
    assert r.exit_code == 2 and 'pip install "mbdlprune[plot]"' in r.output
    assert len(r.output.strip().splitlines()) == 1
