"""The fine-tune training state: one file, hostile input, refusals, and runs killed at any moment.

The kill tests run ``python -m mbdlprune.cli finetune`` in subprocesses, SIGKILL them at seeded
random moments (by time, and right after a given epoch's state appears), resume with
``--resume`` until a run completes, and compare the output with an uninterrupted run's, bit
for bit.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mbdlprune import io
from mbdlprune.errors import MbdlError
from mbdlprune.finetuning import finetune
from mbdlprune.finetuning import state as S
from mbdlprune.models.user import build_arch
from mbdlprune.operators import load_operator

REPO = Path(__file__).resolve().parents[1]
SPEC = {"kind": "mri", "image_size": [16, 16], "acceleration": 4, "coils": 2, "noise_sigma": 0.01}
ARGS = {"prior": "dncnn", "steps": 2, "prior_args": {"features": 4, "depth": 2}}
EPOCHS = 3  # in-process runs
CLI_EPOCHS = 8  # subprocess runs: enough saves for kills to land between them


class Stop(Exception):
    """Raised by a callback: the run stops right there, as if killed."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny unrolled network (16x16 MRI, 2 coils) and three .npy image files."""
    root = tmp_path_factory.mktemp("fts")
    torch.manual_seed(0)
    op = load_operator(SPEC)
    model, spec = build_arch("unrolled", ARGS)
    io.save_model(root / "m.safetensors", model, {"arch": spec.to_dict(), "operator": op.spec})
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(root / "data" / f"d{i}.npy", rng.random((3, 16, 16)).astype(np.float32))
    return root


def run(setup, out, **kw):
    args = dict(data=setup / "data", mode="supervised", epochs=EPOCHS, val_fraction=0.34, lr=1e-3, device="cpu")
    args.update(kw)
    return finetune(setup / "m.safetensors", out=out, **args)


@pytest.fixture(scope="module")
def baseline(setup, tmp_path_factory):
    """The weights of an uninterrupted in-process run."""
    out = tmp_path_factory.mktemp("base") / "base.safetensors"
    run(setup, out)
    return load_file(str(out))


def same_weights(a: dict, path: Path) -> bool:
    b = load_file(str(path))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def stop_at(epoch: int):
    def cb(event):
        if event["epoch"] == epoch:
            raise Stop

    return cb


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".state." in p.name or p.name.endswith(".tmp"))


def one_line(e: MbdlError) -> str:
    msg = str(e)
    assert "\n" not in msg and type(e).__module__ == "mbdlprune.errors", msg
    return msg


# ----------------------------------------------------------------------------- the file itself
def _model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model, _ = build_arch("unrolled", ARGS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, opt


def _info(epoch: int = 1) -> dict:
    h = [{"epoch": i + 1, "lr": 1e-3, "train": {"loss": 0.5, "supervised": 0.5}, "time_s": 0.1,
          "val": {"metric": "psnr", "value": 20.0 + i}} for i in range(epoch)]
    return {"epoch": epoch, "config": {"mode": "supervised", "epochs": 3}, "pruned_sha256": "ab", "train_files": {"a": "1"},
            "val_files": {}, "best_value": 20.0 if epoch else None, "best_epoch": 1 if epoch else None, "history": h,
            "before": {"metric": "psnr", "value": 19.0}, "val_metric": "psnr"}


@pytest.fixture()
def saved(tmp_path):
    """A state written by save_state after one optimiser step: (out, model, optimizer, best, next draw)."""
    model, opt = _model_and_optimizer()
    op = load_operator(SPEC)
    y = op.A(torch.rand(1, 2, 16, 16))
    model(y, op).abs().mean().backward()
    opt.step()
    best = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    out = tmp_path / "o.safetensors"
    S.save_state(out, model, opt, best, _info())
    return out, model, opt, best, torch.rand(3)  # the first draw after the saved RNG state


def test_state_is_one_file_and_round_trips(saved):
    out, model, opt, best, next_draw = saved
    assert leftovers(out.parent) == ["o.state.safetensors"]  # one file, no JSON beside it, no temp
    torch.manual_seed(123)
    doc, tensors = S.load_state(out)
    assert doc["version"] == S.STATE_VERSION == 2 and doc["format"] == S.STATE_FORMAT
    assert {k: doc[k] for k in _info()} == _info()
    model2, opt2 = _model_and_optimizer(seed=1)
    got_best = S.restore(doc, tensors, model2, opt2, S.state_path(out))
    assert all(torch.equal(v, model2.state_dict()[k]) for k, v in model.state_dict().items())
    assert got_best.keys() == best.keys() and all(torch.equal(got_best[k], best[k]) for k in best)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])
    assert torch.equal(torch.rand(3), next_draw)  # the RNG is back where save_state found it
    # a later save replaces the file in one step
    S.save_state(out, model, opt, None, {**_info(0)})
    assert S.load_state(out)[0]["epoch"] == 0 and leftovers(out.parent) == ["o.state.safetensors"]
    S.remove_state(out)
    assert leftovers(out.parent) == []


def _rewrite(out: Path, *, doc=None, header=None, tensors=None, edit=None):
    """Rewrite the state beside ``out`` with a changed document, header or tensors."""
    p = S.state_path(out)
    t = load_file(str(p))
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        h = dict(f.metadata())
    d = json.loads(h["state"])
    if edit:
        edit(d, t)
    if doc is not None:
        d = doc
    h["state"] = json.dumps(d) if not isinstance(d, str) else d
    if header is not None:
        h = header(h)
    save_file(tensors(t) if tensors else t, str(p), metadata=h)


def _truncate(p: Path):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


HOSTILE = {
    "truncated": (lambda out: _truncate(S.state_path(out)), "not a readable training state"),
    "empty": (lambda out: S.state_path(out).write_bytes(b""), "not a readable training state"),
    "random bytes": (lambda out: S.state_path(out).write_bytes(os.urandom(4096)), "not a readable training state"),
    "huge header length": (lambda out: S.state_path(out).write_bytes(struct.pack("<Q", 1 << 60) + b"{}"), "not a readable training state"),
    "garbage JSON": (lambda out: _rewrite(out, doc='{"epoch": 1, "config": {'), "damaged state document (not JSON)"),
    "JSON not an object": (lambda out: _rewrite(out, doc=[1, 2]), "not a JSON object"),
    "wrong format name": (lambda out: _rewrite(out, header=lambda h: {**h, "format": "something-else"}), "not an mbdlprune training state"),
    "no format": (lambda out: _rewrite(out, header=lambda h: {"state": h["state"]}), "not an mbdlprune training state"),
    "newer version": (lambda out: _rewrite(out, edit=lambda d, t: d.update(version=99)), "newer mbdlprune (state version 99"),
    "version not a number": (lambda out: _rewrite(out, edit=lambda d, t: d.update(version="2")), "version is missing or malformed"),
    "old layout (no document in the header)": (lambda out: _rewrite(out, header=lambda h: {"format": S.STATE_FORMAT}), "older mbdlprune"),
    "missing history": (lambda out: _rewrite(out, edit=lambda d, t: d.pop("history")), "history is missing or malformed"),
    "history of another epoch": (lambda out: _rewrite(out, edit=lambda d, t: d.update(epoch=2)), "history is missing or malformed"),
    "epoch is a string": (lambda out: _rewrite(out, edit=lambda d, t: d.update(epoch="1")), "epoch is missing or malformed"),
    "negative epoch": (lambda out: _rewrite(out, edit=lambda d, t: d.update(epoch=-1)), "epoch is missing or malformed"),
    "config not an object": (lambda out: _rewrite(out, edit=lambda d, t: d.update(config=[])), "config is missing or malformed"),
    "history entry malformed": (lambda out: _rewrite(out, edit=lambda d, t: d["history"][0].update(train=None)), "history[0]"),
    "optimizer missing": (lambda out: _rewrite(out, edit=lambda d, t: d.pop("optimizer")), "optimizer is missing"),
    "param groups malformed": (lambda out: _rewrite(out, edit=lambda d, t: d["optimizer"].update(param_groups=[{"params": "x"}])), "optimizer.param_groups"),
    "unexpected tensor": (lambda out: _rewrite(out, tensors=lambda t: {**t, "evil": torch.zeros(1)}), "unexpected tensor 'evil'"),
    "RNG state wrong dtype": (lambda out: _rewrite(out, tensors=lambda t: {**t, "rng.torch": torch.zeros(4)}), "RNG state"),
    "no model tensors": (lambda out: _rewrite(out, tensors=lambda t: {k: v for k, v in t.items() if not k.startswith("model.")}), "no model tensors"),
    "best weights of another shape": (lambda out: _rewrite(out, tensors=lambda t: {**t, next(k for k in t if k.startswith("best.")): torch.zeros(1)}),
                                      "best weights do not match"),
    "legacy JSON beside, no state": (lambda out: (S.state_path(out).unlink(), S.legacy_state_path(out).write_text("{}")), "older mbdlprune"),
    "no state at all": (lambda out: S.state_path(out).unlink(), "no training state beside"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_state_files_are_one_line_errors(case, saved):
    out = saved[0]
    damage, needle = HOSTILE[case]
    damage(out)
    with pytest.raises(MbdlError) as e:
        S.load_state(out)
    assert needle in one_line(e.value)


FIT = {
    "optimizer tensor of another shape": (lambda d, t: t.update({"optim.0.exp_avg": torch.zeros(3)}), "optimiser tensor exp_avg of parameter 0 is (3,)"),
    "optimizer tensor not floating point": (lambda d, t: t.update({"optim.0.exp_avg": t["optim.0.exp_avg"].long()}), "optimiser tensor exp_avg"),
    "optimizer state for a parameter that does not exist": (lambda d, t: t.update({"optim.99.exp_avg": torch.zeros(3)}), "optimiser state for parameter 99"),
    "optimizer state missing a tensor": (lambda d, t: t.pop("optim.0.exp_avg_sq"), "optimiser state of parameter 0 holds exp_avg, step"),
    "optimizer step of another shape": (lambda d, t: t.update({"optim.0.step": torch.zeros(2)}), "step count of parameter 0"),
    "optimizer scalar where a tensor belongs": (lambda d, t: (t.pop("optim.1.exp_avg"), d["optimizer"]["scalars"].update({"1": {"exp_avg": 5}})),
                                                "optimiser tensor exp_avg of parameter 1 is int"),
    "model tensor of another shape": (lambda d, t: [t.update({k: torch.zeros(2, 2), "best." + k[6:]: torch.zeros(2, 2)})
                                                    for k in [next(k for k in t if k.startswith("model.") and k.endswith("weight"))]],
                                      "does not fit this model: o.state.safetensors does not match"),
    "param group of another size": (lambda d, t: d["optimizer"]["param_groups"][0].update(params=[0]), "other parameter groups"),
}


@pytest.mark.parametrize("case", list(FIT))
def test_a_state_that_does_not_fit_the_model_is_one_line(case, saved):
    out = saved[0]
    edit, needle = FIT[case]
    _rewrite(out, edit=edit)
    doc, tensors = S.load_state(out)
    model, opt = _model_and_optimizer()
    with pytest.raises(MbdlError) as e:
        S.restore(doc, tensors, model, opt, S.state_path(out))
    assert needle in one_line(e.value)


def test_saved_optimiser_settings_are_not_trusted(saved):
    """Settings in the file (a hostile fused=True, lr as text) are ignored: this run's own apply."""
    out = saved[0]
    _rewrite(out, edit=lambda d, t: d["optimizer"]["param_groups"][0].update(fused=True, lr="x", foreach="yes"))
    doc, tensors = S.load_state(out)
    model, opt = _model_and_optimizer()
    S.restore(doc, tensors, model, opt, S.state_path(out))
    g = opt.param_groups[0]
    assert g["lr"] == 1e-3 and not g["fused"] and g["foreach"] is None


def test_hostile_state_through_the_cli_exits_2_with_one_line(setup, tmp_path):
    from typer.testing import CliRunner

    from mbdlprune.cli import app

    out = tmp_path / "c.safetensors"
    with pytest.raises(Stop):
        run(setup, out, callback=stop_at(1))
    _rewrite(out, edit=lambda d, t: d.update(best_epoch="1"))
    res = CliRunner().invoke(app, ["finetune", str(setup / "m.safetensors"), "--mode", "supervised", "--data", str(setup / "data"),
                                   "--epochs", str(EPOCHS), "--val-fraction", "0.34", "--lr", "1e-3", "-o", str(out), "--resume"])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "best_epoch is missing or malformed" in err and "--force" in err and "Traceback" not in res.output


# ----------------------------------------------------------------------------- refusals and finishing
def test_start_without_resume_beside_a_state_is_refused_unless_force(setup, baseline, tmp_path):
    out = tmp_path / "r.safetensors"
    with pytest.raises(Stop):
        run(setup, out, callback=stop_at(2))
    before = S.state_path(out).read_bytes()
    with pytest.raises(MbdlError) as e:
        run(setup, out)
    msg = one_line(e.value)
    assert "r.state.safetensors" in msg and "--resume to continue, or --force to start over" in msg
    assert S.state_path(out).read_bytes() == before  # nothing touched
    r = run(setup, out, force=True)  # starts over: the old state is overwritten at the first save
    assert r.record["resumed_from_epoch"] is None and len(r.record["history"]) == EPOCHS
    assert same_weights(baseline, out) and leftovers(tmp_path) == []


def test_a_legacy_two_file_state_is_refused_and_force_discards_it(setup, baseline, tmp_path):
    out = tmp_path / "l.safetensors"
    save_file({"model.x": torch.zeros(1)}, str(S.state_path(out)), metadata={"format": S.STATE_FORMAT})
    S.legacy_state_path(out).write_text(json.dumps({"format": S.STATE_FORMAT, "version": 1, "epoch": 1}))
    for kw in ({"resume": True}, {"resume": True, "force": True}):
        with pytest.raises(MbdlError) as e:
            run(setup, out, **kw)
        assert "older mbdlprune" in one_line(e.value) and "--force" in str(e.value)
    with pytest.raises(MbdlError, match="--resume to continue, or --force to start over"):
        run(setup, out)
    run(setup, out, force=True)
    assert same_weights(baseline, out) and leftovers(tmp_path) == []


def test_killed_after_the_final_state_resume_only_writes_the_output(setup, baseline, tmp_path):
    out = tmp_path / "f.safetensors"
    with pytest.raises(Stop):  # the callback runs after the last epoch's state is saved, before the output
        run(setup, out, callback=stop_at(EPOCHS))
    assert not out.exists() and S.load_state(out)[0]["epoch"] == EPOCHS
    events = []
    r = run(setup, out, resume=True, callback=events.append)
    assert events == [] and r.record["resumed_from_epoch"] == EPOCHS  # no more training
    assert len(r.record["history"]) == EPOCHS and r.record["validation"]["best_epoch"] is not None
    assert same_weights(baseline, out) and leftovers(tmp_path) == []
    for kw in ({}, {"force": True}):  # a finished run is never silently trained again
        with pytest.raises(MbdlError) as e:
            run(setup, out, resume=True, **kw)
        assert "already finished, output f.safetensors exists" in one_line(e.value)
    with pytest.raises(MbdlError, match="already exists"):
        run(setup, out)


def test_killed_after_the_output_before_the_state_is_removed(setup, baseline, tmp_path, monkeypatch):
    out = tmp_path / "g.safetensors"

    def killed(_out):
        raise Stop

    monkeypatch.setattr(S, "remove_state", killed)
    with pytest.raises(Stop):
        run(setup, out)
    assert out.exists() and S.state_path(out).exists()
    monkeypatch.undo()
    r = run(setup, out, resume=True)  # writes the same output again from the saved state
    assert r.record["resumed_from_epoch"] == EPOCHS
    assert same_weights(baseline, out) and leftovers(tmp_path) == []


def test_resume_before_the_first_save_starts_from_the_beginning(setup, baseline, tmp_path):
    out = tmp_path / "n.safetensors"
    (tmp_path / ".n.state.safetensors.abc123.tmp").write_bytes(b"half a save")  # what a SIGKILL mid-save leaves
    r = run(setup, out, resume=True)
    assert any("stopped before its first save" in w for w in r.warnings)
    assert same_weights(baseline, out) and leftovers(tmp_path) == []


def test_resume_with_fewer_epochs_than_saved_is_refused(setup, tmp_path):
    out = tmp_path / "e.safetensors"
    with pytest.raises(Stop):
        run(setup, out, callback=stop_at(2))
    with pytest.raises(MbdlError) as e:
        run(setup, out, resume=True, epochs=1)
    assert "finished 2 epochs, more than the 1 asked for" in one_line(e.value) and "--epochs 2" in str(e.value)


# ----------------------------------------------------------------------------- SIGKILL at random moments
# Two kinds of child process run the CLI: `python -m mbdlprune.cli finetune ...` (the real entry
# point, ~3 s of startup each), and children of a forkserver that has torch and mbdlprune
# imported already (the same CLI main(), well under a second each), so that many kills fit.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _argv(setup, out: Path, resume: bool) -> list[str]:
    return ["finetune", str(setup / "m.safetensors"), "--mode", "supervised", "--data", str(setup / "data"),
            "--epochs", str(CLI_EPOCHS), "--val-fraction", "0.34", "--lr", "1e-3", "--device", "cpu", "--json",
            "-o", str(out)] + (["--resume"] if resume else [])


def _cli_child(argv: list[str], err_path: str) -> None:
    """A forkserver child: the CLI's main() on ``argv``; stdout discarded, stderr to ``err_path``."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)
    torch.set_num_threads(1)
    sys.argv = ["mbdlprune", *argv]
    from mbdlprune.cli import main

    main()


_FORK = None


def _forkserver():
    global _FORK
    if _FORK is None:
        import multiprocessing as mp

        _FORK = mp.get_context("forkserver")
        # what a run imports, torch._dynamo (pulled in by the optimiser) most of all: children start warm
        _FORK.set_forkserver_preload(["torch", "torch._dynamo", "torch.utils.data", "torch_pruning", "safetensors.torch", "numpy.random",
                                      "mbdlprune.cli", "mbdlprune.api", "mbdlprune.io", "mbdlprune.data", "mbdlprune.metrics",
                                      "mbdlprune.models.builtin", "mbdlprune.models.unrolled", "mbdlprune.operators.mri",
                                      "pydantic", "typer._adapters", "mbdlprune.finetuning.trainer",
                                      "mbdlprune.finetuning.losses", "mbdlprune.finetuning.state", Path(__file__).stem])
        warm = _FORK.Process(target=os.getpid)  # the server preloads before its first child: not in a timed run
        warm.start()
        warm.join()
    return _FORK


class _Child:
    """One CLI run in a child process (``cli``: a new interpreter; ``fork``: a forkserver child)."""

    def __init__(self, kind: str, argv: list[str], err: Path):
        self.kind, self.err = kind, err
        err.touch()  # a child killed at once never opens it
        if kind == "cli":
            with open(err, "ab") as f:
                self.p = subprocess.Popen([sys.executable, "-m", "mbdlprune.cli", *argv], cwd=REPO, env=ENV,
                                          stdout=subprocess.DEVNULL, stderr=f)
        else:
            self.p = _forkserver().Process(target=_cli_child, args=(argv, str(err)))
            self.p.start()

    def running(self) -> bool:
        return self.p.poll() is None if self.kind == "cli" else self.p.is_alive()

    def wait(self, timeout: float) -> bool:
        """True if the child exited within ``timeout`` seconds."""
        if self.kind == "cli":
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        self.p.join(timeout)
        return not self.p.is_alive()

    def kill(self) -> None:
        self.p.kill()

    def finish(self) -> int:
        assert self.wait(120), "the run hung"
        rc = self.p.returncode if self.kind == "cli" else self.p.exitcode
        err = self.err.read_text()
        assert rc in (0, -9), err  # completed, or our SIGKILL; never an error
        assert "Traceback" not in err and "error:" not in err, err
        return rc


def _state_epoch(out: Path) -> int | None:
    """The epoch count of the state beside ``out`` (from the safetensors header), or None."""
    try:
        with open(S.state_path(out), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            return json.loads(json.loads(f.read(n))["__metadata__"]["state"])["epoch"]
    except (OSError, ValueError, KeyError, struct.error):
        return None


def _kill_when(c: _Child, out: Path, epoch: int, jitter: float) -> bool:
    """SIGKILL ``c`` ``jitter`` s after the state beside ``out`` reaches ``epoch``; False if it exited first."""
    t_end = time.monotonic() + 120
    while c.running() and time.monotonic() < t_end:
        e = _state_epoch(out)
        if e is not None and e >= epoch:
            if jitter:
                time.sleep(jitter)
            c.kill()
            return True
        time.sleep(0.002)
    return False


def _kill_and_resume(setup, kind: str, out: Path, seed: int, run_s: float, max_kills: int) -> list[str]:
    """Launch, SIGKILL at seeded random moments (up to ``max_kills``), resume until a run completes."""
    rng = random.Random(seed)
    log, resume, kills = [], False, 0
    for _ in range(max_kills + 2):
        if out.exists() and not S.state_path(out).exists():
            log.append("the killed run had finished")
            break
        c = _Child(kind, _argv(setup, out, resume), out.with_name("stderr.txt"))
        now = _state_epoch(out)
        if kills >= max_kills:
            what = "ran to the end"
        elif rng.random() < 0.5 or now == CLI_EPOCHS:  # by time: startup, training, saving, writing the output
            delay = rng.uniform(0, 1.1 * run_s)
            if not c.wait(delay):
                c.kill()
            what = f"killed at {delay:.2f}s"
        else:  # right after a given epoch's state is written (0: before training), or a little later
            target = rng.randint(0 if now is None else now + 1, CLI_EPOCHS)
            jitter = rng.choice([0.0, rng.uniform(0, 0.05)])
            _kill_when(c, out, target, jitter)
            what = f"killed after state {target} + {jitter * 1000:.0f}ms"
        if c.finish() == 0:
            log.append(what if what == "ran to the end" else f"{what}: completed first")
            break
        kills += 1
        log.append(what)
        resume = True
    else:
        raise AssertionError(f"no run completed: {log}")
    return log


def _uninterrupted(setup, kind: str, folder: Path) -> tuple[dict, dict, float]:
    out = folder / "o.safetensors"
    if kind == "fork":
        _forkserver()  # started (seconds) before the clock starts
    t0 = time.monotonic()
    assert _Child(kind, _argv(setup, out, False), folder / "stderr.txt").finish() == 0
    return load_file(str(out)), io.read_checkpoint(out)[1]["finetune"], time.monotonic() - t0


@pytest.fixture(scope="module")
def baseline_run(setup, tmp_path_factory):
    """An uninterrupted run of the CLI (in a forkserver child): its weights, its record, its seconds."""
    return _uninterrupted(setup, "fork", tmp_path_factory.mktemp("runbase"))


def _same_run(baseline, out: Path) -> None:
    weights, record, _ = baseline
    assert same_weights(weights, out), "weights differ from the uninterrupted run"
    rec = io.read_checkpoint(out)[1]["finetune"]

    def strip(h):
        return [{k: v for k, v in e.items() if k != "time_s"} for e in h]

    assert strip(rec["history"]) == strip(record["history"])
    assert rec["validation"]["best"] == record["validation"]["best"]
    assert leftovers(out.parent) == []


def _sweep(setup, kind, baseline, run_s, tmp_path, seeds, max_kills):
    outs = {s: tmp_path / f"{kind}{s}" / "o.safetensors" for s in seeds}
    for o in outs.values():
        o.parent.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:  # two single-threaded runs at a time on 2 cores
        logs = list(pool.map(lambda s: _kill_and_resume(setup, kind, outs[s], s, run_s, max_kills), seeds))
    for o in outs.values():
        _same_run(baseline, o)
    kills = sum(x.startswith("killed") and "completed" not in x for log in logs for x in log)
    return kills, logs


def test_cli_sigkill_at_random_moments_then_resume_is_bit_identical(setup, baseline_run, tmp_path):
    """`python -m mbdlprune.cli finetune`, killed once per run (by time: mostly while starting; or after a state)."""
    startup_s = 3.0  # a new interpreter imports torch and mbdlprune first
    kills, logs = _sweep(setup, "cli", baseline_run, startup_s + baseline_run[2], tmp_path, seeds=[0, 1], max_kills=1)
    assert kills >= 1, logs
    print(f"\ncli: {kills} SIGKILLs in 2 runs, outputs bit-identical to the uninterrupted run: {logs}")


def test_many_sigkills_at_random_moments_then_resume_is_bit_identical(setup, baseline_run, tmp_path):
    kills, logs = _sweep(setup, "fork", baseline_run, baseline_run[2], tmp_path, seeds=list(range(100, 108)), max_kills=3)
    assert kills >= 8, logs
    print(f"\nforkserver: {kills} SIGKILLs in 8 runs, outputs bit-identical to the uninterrupted run: {logs}")


def test_sigkill_right_after_the_final_state_then_resume_writes_the_output(setup, baseline_run, tmp_path):
    out = tmp_path / "o.safetensors"
    err = tmp_path / "stderr.txt"
    for _ in range(5):  # the window between the last state and the output is short: retry if the run wins it
        c = _Child("fork", _argv(setup, out, False), err)
        caught = _kill_when(c, out, CLI_EPOCHS, 0.0)
        c.finish()
        if caught and not out.exists():
            break
        for f in [out, S.state_path(out)]:
            if f.exists():
                f.unlink()
    else:
        pytest.fail("never killed between the final state and the output")
    assert _state_epoch(out) == CLI_EPOCHS
    assert _Child("fork", _argv(setup, out, True), err).finish() == 0
    assert io.read_checkpoint(out)[1]["finetune"]["resumed_from_epoch"] == CLI_EPOCHS  # wrote the output, trained nothing
    _same_run(baseline_run, out)
