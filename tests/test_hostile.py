"""Hostile inputs: every file is hostile, only the command line is trusted.

Each case of ``hostile_corpus`` is fed to every command (inspect, prune, convert, bench,
finetune --teacher, run). A command handles it correctly when no code from the file ran
(marker file absent, no process spawned, no module imported), no path named inside the file
was opened, the exit code is 2 with ONE line on stderr starting ``error:`` that names the
problem and the fix, nothing was left in the output folder (no output, no ``.*.tmp``), no
input changed, and it took under ``TIME_LIMIT_S`` seconds within a bounded address space.

Only the (case, command) pairs handled correctly today are listed in ``PASSING``; the others
live in an uncommitted pending file until the product handles them.
Also here: output safety (no overwrite without --force, output never an input, report paths
checked before any work) and a race of two processes through ``io.write_file``.
"""

from __future__ import annotations

import multiprocessing
import shutil
import threading
from pathlib import Path

import pytest

import hostile_corpus as H


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return H.build_assets(tmp_path_factory.mktemp("assets"))


ALL = "inspect prune convert bench finetune run"
#: case -> the commands that handle it correctly today (all pairs of the corpus: see hostile_corpus)
PASSING: dict[str, str] = {
    # PASSING-BEGIN (generated from a run of every pair; edit by moving pairs in, never out)
    "arch-os-system-nosource": "inspect prune convert bench finetune run sweep",
    "arch-os-system-builtin": "inspect prune convert bench finetune run sweep",
    "arch-os-system-factory": "inspect prune convert bench finetune run sweep",
    "arch-subprocess-getoutput": "inspect prune convert bench finetune run sweep",
    "arch-runpy-run-path": "inspect prune convert bench finetune run sweep",
    "arch-evil-py-builtin": "inspect prune convert bench finetune run sweep",
    "arch-evil-py-nosource": "inspect prune convert bench finetune run sweep",
    "arch-evil-py-factory": "inspect prune convert bench finetune run sweep",
    "arch-evil-py-relative": "inspect prune convert bench finetune run sweep",
    "arch-evil-pkg-builtin": "inspect prune convert bench finetune run sweep",
    "arch-evil-pkg-nosource": "inspect prune convert bench finetune run sweep",
    "arch-evil-pkg-factory": "inspect prune convert bench finetune run sweep",
    "model-attrs-forward": "inspect prune convert bench finetune run sweep",
    "model-attrs-class": "inspect prune convert bench finetune run sweep",
    "model-attrs-modules": "inspect prune convert bench finetune run sweep",
    "model-attrs-prior": "inspect prune convert bench finetune run sweep",
    "model-attrs-max-iter": "inspect prune convert bench finetune run sweep",
    "model-attrs-list": "inspect prune convert bench finetune run sweep",
    "op-mask-abs": "inspect prune convert bench finetune run sweep",
    "op-mask-abs-secret": "inspect prune convert bench finetune run sweep",
    "op-mask-dotdot": "inspect prune convert bench finetune run sweep",
    "op-coil-maps-abs": "inspect prune convert bench finetune run sweep",
    "op-blur-kernel-abs": "inspect prune convert bench finetune run sweep",
    "op-inpaint-mask-abs": "inspect prune convert bench finetune run sweep",
    "op-string-path": "inspect prune convert bench finetune run sweep",
    "op-list": "inspect prune convert bench finetune run sweep",
    "op-kind-int": "inspect prune convert bench finetune run sweep",
    "op-image-size-huge": "inspect prune convert bench finetune run sweep",
    "op-noise-nan": "inspect prune convert bench finetune run sweep",
    "norm-widths-unknown": "inspect prune convert bench finetune run sweep",
    "norm-widths-conv": "inspect prune convert bench finetune run sweep",
    "norm-widths-root": "inspect prune convert bench finetune run sweep",
    "norm-widths-string": "inspect prune convert bench finetune run sweep",
    "norm-widths-list": "inspect prune convert bench finetune run sweep",
    "arch-args-huge-feats": "inspect prune convert bench finetune run sweep",
    "arch-args-huge-blocks": "inspect prune convert bench finetune run sweep",
    "arch-args-negative": "inspect prune convert bench finetune run sweep",
    "arch-args-string": "inspect prune convert bench finetune run sweep",
    "arch-args-nan": "inspect prune convert bench finetune run sweep",
    "arch-args-unknown": "inspect prune convert bench finetune run sweep",
    "arch-args-list": "inspect prune convert bench finetune run sweep",
    "meta-not-json": "inspect prune convert bench finetune run sweep",
    "meta-list": "inspect prune convert bench finetune run sweep",
    "meta-number": "inspect prune convert bench finetune run sweep",
    "meta-null": "inspect prune convert bench finetune run sweep",
    "meta-string": "inspect prune convert bench finetune run sweep",
    "meta-empty": "inspect prune convert bench finetune run sweep",
    "meta-deep": "inspect prune convert bench finetune run sweep",
    "meta-missing-arch": "inspect prune convert bench finetune run sweep",
    "meta-arch-string": "inspect prune convert bench finetune run sweep",
    "meta-arch-no-name": "inspect prune convert bench finetune run sweep",
    "meta-arch-name-int": "inspect prune convert bench finetune run sweep",
    "meta-arch-version-str": "inspect prune convert bench finetune run sweep",
    "meta-format-999": "inspect prune convert bench finetune run sweep",
    "meta-format-str": "inspect prune convert bench finetune run sweep",
    "meta-format-nan": "inspect prune convert bench finetune run sweep",
    "meta-format-inf": "inspect prune convert bench finetune run sweep",
    "weights-nan": "inspect prune convert bench finetune run sweep",
    "weights-inf": "inspect prune convert bench finetune run sweep",
    "weights-nan-plain-pt": "inspect prune convert bench finetune run sweep",
    "pickle-zip-pt": "inspect prune convert bench finetune run sweep",
    "pickle-zip-pth": "inspect prune convert bench finetune run sweep",
    "pickle-zip-ckpt": "inspect prune convert bench finetune run sweep",
    "pickle-zip-bin": "inspect prune convert bench finetune run sweep",
    "pickle-zip-tar": "inspect prune convert bench finetune run sweep",
    "pickle-zip-nested-state-dict": "inspect prune convert bench finetune run sweep",
    "pickle-legacy-pt": "inspect prune convert bench finetune run sweep",
    "pickle-raw-pt": "inspect prune convert bench finetune run sweep",
    "pickle-raw-safetensors": "inspect prune convert bench finetune run sweep",
    "pickle-object-pth": "inspect prune convert bench finetune run sweep",
    "st-truncated-header": "inspect prune convert bench finetune run sweep",
    "st-truncated-data": "inspect prune convert bench finetune run sweep",
    "pt-truncated": "inspect prune convert bench finetune run sweep",
    "pt-empty": "inspect prune convert bench finetune run sweep",
    "st-empty": "inspect prune convert bench finetune run sweep",
    "st-random": "inspect prune convert bench finetune run sweep",
    "pt-random": "inspect prune convert bench finetune run sweep",
    "pt-zip-not-torch": "inspect prune convert bench finetune run sweep",
    "st-huge-header-len": "inspect prune convert bench finetune run sweep",
    "st-header-len-beyond-file": "inspect prune convert bench finetune run sweep",
    "st-tensor-beyond-file": "inspect prune convert bench finetune run sweep",
    "st-tensor-beyond-file-meta": "inspect prune convert bench finetune run sweep",
    "st-header-not-json": "inspect prune convert bench finetune run sweep",
    "st-header-list": "inspect prune convert bench finetune run sweep",
    "st-metadata-not-str": "inspect prune convert bench finetune run sweep",
    "dir-model-pt": "inspect prune convert bench finetune run sweep",
    "dir-model-safetensors": "inspect prune convert bench finetune run sweep",
    "spec-binary": "inspect prune convert bench finetune run",
    "spec-binary-json": "inspect prune convert bench finetune run",
    "spec-invalid-toml": "inspect prune convert bench finetune run",
    "spec-invalid-json": "inspect prune convert bench finetune run",
    "spec-json-list": "inspect prune convert bench finetune run",
    "spec-deep-toml": "inspect prune convert bench finetune run",
    "spec-deep-json": "inspect prune convert bench finetune run",
    "spec-accel-inf": "inspect prune convert bench finetune run",
    "spec-accel-nan": "inspect prune convert bench finetune run",
    "spec-noise-nan": "inspect prune convert bench finetune run",
    "spec-noise-inf": "inspect prune convert bench finetune run",
    "spec-center-nan": "inspect prune convert bench finetune run",
    "spec-mask-zeros": "inspect prune convert bench finetune run",
    "spec-mask-ones": "inspect prune convert bench finetune run",
    "spec-image-huge": "inspect prune convert bench finetune run",
    "spec-image-huge-denoise": "inspect prune convert bench finetune run",
    "spec-coils-huge": "inspect prune convert bench finetune run",
    "spec-dir": "inspect prune convert bench finetune run",
    "pipe-arch-evil-py": "run",
    "pipe-arch-evil-py-abs": "run",
    "pipe-arch-evil-pkg": "run",
    "pipe-arch-os-system": "run",
    "pipe-unsafe-pickle": "run",
    "pipe-key-map-redos": "run",
    "pipe-binary": "run",
    "pipe-deep": "run",
    "pipe-output-is-a-file": "run",
    "pipe-operator-nan": "run",
    "pipe-finetune-mode-list": "run",
    "pipe-ratio-nan": "run",
    "km-redos": "bench run",
    "km-redos-rename": "bench run",
    "km-bad-regex": "bench run",
    "km-bad-group": "bench run",
    "km-collide": "bench run",
    "km-binary": "bench run",
    "km-deep": "bench run",
    "km-rules-huge": "bench run",
    "km-not-table": "bench run",
    "data-npy-object": "bench finetune run",
    "data-npz-object": "bench finetune run",
    "data-npy-truncated": "bench finetune run",
    "data-npy-huge-header": "bench finetune run",
    "data-npy-empty": "bench finetune run",
    "data-npy-random": "bench finetune run",
    "data-h5-external-link": "bench finetune run",
    "data-h5-external-dataset": "bench finetune run",
    "data-h5-random": "bench finetune run",
    "data-nii-huge": "bench finetune run",
    "data-niigz-random": "bench finetune run",
    "data-npy-nan": "bench finetune run",
    # PASSING-END
}


def _pairs() -> list:
    return [pytest.param(cid, cmd, id=f"{cid}-{cmd}") for cid, (_, cmds) in H.ALL_CASES.items()
            for cmd in cmds if cmd in PASSING.get(cid, "").split()]


@pytest.mark.parametrize("cid,cmd", [pytest.param(c, m, id=f"{c}-{m}") for c in H.GOOD_CASES
                                     for m in (*H.COMMANDS, *(("sweep",) if c != "good-spec" else ()))])
def test_valid_inputs_succeed(cid, cmd, assets, tmp_path, monkeypatch):
    """The harness is not vacuous: the same command lines with valid files succeed and write their outputs."""
    f = H.Folder(tmp_path)
    case = H.GOOD_CASES[cid](f, assets)
    monkeypatch.chdir(f.cwd)
    o = H.invoke(H.command_args(cmd, case, assets, f))
    assert o.exit_code == 0 and o.exception is None, (o.exit_code, o.stderr, o.exception)
    for name in H.OUTPUTS[cmd]:
        assert (f.out / name).is_file(), name
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("cid,cmd", _pairs())
def test_hostile_input_is_refused_cleanly(cid, cmd, assets, tmp_path, monkeypatch):
    bad, line = H.run_case(H.BUILDERS, cid, cmd, assets, tmp_path, monkeypatch)
    assert not bad, line


def test_every_case_is_known():
    """Every case of the corpus is either passing for some command or pending (no case silently dropped)."""
    assert not set(PASSING) - set(H.ALL_CASES)
    for cid, cmds in PASSING.items():
        assert set(cmds.split()) <= set(H.ALL_CASES[cid][1])


# ------------------------------------------------------------------------------ output safety
def _one_line_error(o: H.Outcome, needle: str) -> None:
    lines = o.stderr.strip().splitlines()
    assert o.exit_code == 2 and o.exception is None, (o.exit_code, o.stderr, o.exception)
    assert len(lines) == 1 and lines[0].startswith("error:") and " — " in lines[0], o.stderr
    assert needle.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in o.stderr + o.stdout


def _no_tmp(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _writer_args(cmd: str, a: H.Assets, src: Path, out: Path) -> list:
    return {
        "prune": ["prune", src, "--ratio", "0.5", "--round-to", "1", "-o", out],
        "convert": ["convert", src, "--arch", H.ARCH, "-o", out],
        "finetune": ["finetune", src, "--mode", "supervised", "--data", a.train, "--epochs", "1", "--val-fraction", "0",
                     "--device", "cpu", "-o", out],
    }[cmd]


@pytest.mark.parametrize("cmd", ["prune", "convert", "finetune"])
def test_existing_output_is_kept_without_force(cmd, assets, tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    src = assets.pruned if cmd == "finetune" else assets.model
    o = H.invoke(_writer_args(cmd, assets, src, out))
    _one_line_error(o, "already exists")
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]


@pytest.mark.parametrize("cmd", ["prune", "convert", "finetune"])
def test_output_equal_to_input_is_refused_even_with_force(cmd, assets, tmp_path):
    src = tmp_path / "m.safetensors"
    shutil.copyfile(assets.pruned if cmd == "finetune" else assets.model, src)
    before = src.read_bytes()
    o = H.invoke(_writer_args(cmd, assets, src, src) + ["--force"])
    assert o.exit_code == 2, (o.exit_code, o.stderr)
    _one_line_error(o, "")
    assert src.read_bytes() == before
    _no_tmp(tmp_path)


def test_dangling_symlink_output_is_kept_without_force(assets, tmp_path):
    link = tmp_path / "o.safetensors"
    link.symlink_to(tmp_path / "elsewhere.safetensors")
    o = H.invoke(_writer_args("prune", assets, assets.model, link))
    _one_line_error(o, "exists")
    assert link.is_symlink() and not (tmp_path / "elsewhere.safetensors").exists()


def test_output_that_is_a_folder_is_refused(assets, tmp_path):
    d = tmp_path / "o.safetensors"
    d.mkdir()
    o = H.invoke(_writer_args("prune", assets, assets.model, d) + ["--force"])
    _one_line_error(o, "o.safetensors")
    assert d.is_dir() and not list(d.iterdir())


BENCH_REPORTS = {"--json": "r.json", "--markdown": "r.md", "--figure": "r.png"}


def _bench_args(a: H.Assets) -> list:
    return ["bench", a.model, a.pruned, "--data", a.eval, *H.BENCH_FAST]


@pytest.fixture()
def no_benchmark(monkeypatch):
    """The benchmark must not start: any model loading raises (so a late check shows as exit 1)."""
    import mbdlprune.benchmark as B

    def refuse(*args, **kwargs):
        raise RuntimeError("the benchmark started before the report paths were checked")

    monkeypatch.setattr(B, "load_bench_models", refuse)


@pytest.mark.parametrize("opt", list(BENCH_REPORTS))
def test_bench_keeps_existing_report_without_force(opt, assets, tmp_path, no_benchmark):
    target = tmp_path / BENCH_REPORTS[opt]
    target.write_bytes(b"keep me")
    o = H.invoke(_bench_args(assets) + [opt, target])
    _one_line_error(o, "exists")
    assert target.read_bytes() == b"keep me"
    _no_tmp(tmp_path)


@pytest.mark.parametrize("opt", list(BENCH_REPORTS))
def test_bench_report_in_missing_folder_is_refused_before_the_benchmark(opt, assets, tmp_path, no_benchmark):
    target = tmp_path / "missing" / BENCH_REPORTS[opt]
    o = H.invoke(_bench_args(assets) + [opt, target])
    _one_line_error(o, "missing")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("opt", list(BENCH_REPORTS))
def test_bench_report_onto_an_input_is_refused_even_with_force(opt, assets, tmp_path, no_benchmark):
    model = tmp_path / "m.safetensors"
    shutil.copyfile(assets.model, model)
    before = model.read_bytes()
    o = H.invoke(["bench", model, assets.pruned, "--data", assets.eval, *H.BENCH_FAST, opt, model, "--force"])
    assert o.exit_code == 2, (o.exit_code, o.stderr)
    _one_line_error(o, "")
    assert model.read_bytes() == before


def test_sweep_over_an_earlier_sweep_is_refused(assets, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", assets.model, "--ratios", "0.5", "--round-to", "1", "--eval-data", assets.eval, "--out-dir", out, *H.BENCH_FAST]
    first = H.invoke(args)
    assert first.exit_code == 0, first.stderr
    before = H.tree(out)
    assert any(name.endswith(".safetensors") for name in before) and "sweep.json" in before
    second = H.invoke(args)
    _one_line_error(second, "already")
    assert H.tree(out) == before


def _pipeline(a: H.Assets, path: Path, out: Path) -> Path:
    return H.write_pipeline(path, a.model, out, a, plain=False, operator=None)


def test_run_keeps_the_users_pipeline_file_in_the_output_folder(assets, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "pipeline.toml"
    mine.write_text("# my own pipeline, not the one being run\n")
    p = _pipeline(assets, tmp_path / "other.toml", out)
    o = H.invoke(["run", p, "--quiet"])
    _one_line_error(o, "pipeline.toml")
    assert mine.read_text() == "# my own pipeline, not the one being run\n"
    assert sorted(x.name for x in out.iterdir()) == ["pipeline.toml"]


def test_run_with_its_pipeline_inside_the_output_folder_keeps_it(assets, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    p = _pipeline(assets, out / "pipeline.toml", out)
    text = p.read_bytes()
    o = H.invoke(["run", p, "--quiet"])
    assert o.exit_code == 0, o.stderr
    assert p.read_bytes() == text
    again = H.invoke(["run", p, "--quiet"])
    _one_line_error(again, "already")
    assert p.read_bytes() == text


def test_run_on_a_bad_checkpoint_creates_no_output_folder(assets, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint " * 64)
    out = tmp_path / "new-out"
    p = H.write_pipeline(tmp_path / "p.toml", bad, out, assets, plain=True, operator=assets.op)
    o = H.invoke(["run", p, "--quiet"])
    assert o.exit_code == 2, o.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------ the real command line

def test_real_cli_does_not_import_a_module_named_by_a_file_from_cwd(assets, tmp_path):
    """`python -m mbdlprune.cli` puts the working directory on sys.path: a file naming evil_pkg.mod:build must not import it."""
    import json as _json
    import subprocess
    import sys

    f = H.Folder(tmp_path)
    meta = _json.loads(_json.dumps(assets.meta))
    H.write_evil_pkg(f)
    meta["arch"] = {"name": "evil_pkg.mod:build", "args": {}, "source": "builtin"}
    model = H.write_model(f.inp / "model.safetensors", assets.state, _json.dumps(meta))
    r = subprocess.run([sys.executable, "-m", "mbdlprune.cli", "inspect", str(model)], cwd=f.cwd, capture_output=True, text=True,
                       timeout=120)
    assert not f.marker.exists()
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "evil_pkg" in lines[0], r.stderr


def test_sigterm_during_finetune_leaves_no_temp_file_and_no_output(assets, tmp_path):
    """SIGTERM while fine-tuning (many epochs, a state write each epoch): exit 143, one line, no .tmp, no output model."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "f.safetensors"
    args = [sys.executable, "-m", "mbdlprune.cli", "finetune", str(assets.pruned), "--mode", "supervised", "--data", str(assets.train),
            "--epochs", "100000", "--val-fraction", "0", "--device", "cpu", "-o", str(out), "--json"]
    p = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 60 and not any(x.name.startswith("f.") for x in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, (p.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert not [x.name for x in tmp_path.iterdir() if x.name.endswith(".tmp")]
    assert not out.exists()


# ------------------------------------------------------------------------------ the writer under a race
ROUNDS = 20
PAYLOAD = 1 << 18


def _payload(worker: int, rnd: int) -> bytes:
    return (f"worker {worker} round {rnd} ".encode() * (PAYLOAD // 16 + 1))[:PAYLOAD]


def _race_worker(worker: int, folder: str, start, inner, results) -> None:
    """One racer: each round, wait for the other, then write the same new path through io.write_file."""
    from mbdlprune.errors import MbdlError
    from mbdlprune.io import write_file

    for rnd in range(ROUNDS):
        force = rnd % 5 == 4  # every fifth round both pass force=True: both succeed, no torn file
        payload = _payload(worker, rnd)

        def write(tmp, payload=payload, rnd=rnd):
            Path(tmp).write_bytes(payload)
            if rnd % 2:  # odd rounds: both temp files are complete before either moves into place
                try:
                    inner.wait(timeout=10)
                except threading.BrokenBarrierError:
                    pass

        start.wait(timeout=60)
        try:
            write_file(Path(folder) / f"r{rnd}.bin", write, force=force)
            results.put((rnd, worker, "won", ""))
        except MbdlError as e:
            results.put((rnd, worker, "error", str(e)))
        except BaseException as e:  # noqa: BLE001 - reported, not swallowed
            results.put((rnd, worker, "other", f"{type(e).__name__}: {e}"))


def test_two_writers_racing_for_one_path(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start, inner, results = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(w, str(tmp_path), start, inner, results)) for w in (0, 1)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in range(2 * ROUNDS)]
    for p in procs:
        p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    by_round: dict[int, dict[int, tuple]] = {}
    for rnd, worker, outcome, msg in got:
        by_round.setdefault(rnd, {})[worker] = (outcome, msg)
    for rnd in range(ROUNDS):
        r = by_round[rnd]
        content = (tmp_path / f"r{rnd}.bin").read_bytes()
        if rnd % 5 == 4:
            assert [r[0][0], r[1][0]] == ["won", "won"], r
            assert content in (_payload(0, rnd), _payload(1, rnd)), f"round {rnd}: torn file"
            continue
        winners = [w for w in (0, 1) if r[w][0] == "won"]
        assert len(winners) == 1, f"round {rnd}: {r}"
        loser = 1 - winners[0]
        assert r[loser][0] == "error" and "exists" in r[loser][1], f"round {rnd}: {r}"
        assert content == _payload(winners[0], rnd), f"round {rnd}: the file is not the winner's"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"r{i}.bin" for i in range(ROUNDS))
