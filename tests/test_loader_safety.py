"""The one loader and the one writer: names from files, embedded operator data, no-replace writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mbdlprune.api import prune
from mbdlprune.errors import CheckpointError, ConfigError, MbdlError
from mbdlprune.io import EMBED_PREFIX, load_model, read_checkpoint, save_model, write_file, write_json
from mbdlprune.models.small import SMALL_IMAGE_SIZE, small_args
from mbdlprune.models.user import build_arch

H, W = SMALL_IMAGE_SIZE


def _mask_spec(tmp_path: Path) -> Path:
    mask = np.zeros(W, dtype=np.float32)
    mask[::3] = 1
    mask[W // 2 - 2: W // 2 + 2] = 1
    np.save(tmp_path / "mask.npy", mask)
    spec = tmp_path / "op.toml"
    spec.write_text(f'[operator]\nkind = "mri"\nimage_size = [{H}, {W}]\nmask = "mask.npy"\ncoils = 2\n')
    return spec


def _plain_checkpoint(tmp_path: Path, arch: str = "deq-edsr") -> Path:
    model, _ = build_arch(arch, small_args(arch))
    path = tmp_path / "orig.pt"
    torch.save(model.state_dict(), path)
    return path


def _rewrite_meta(src: Path, dst: Path, change) -> Path:
    state = load_file(str(src))
    _, meta = read_checkpoint(src)
    change(meta)
    save_file(state, str(dst), metadata={"format": "mbdlprune", "mbdlprune": json.dumps(meta)})
    return dst


@pytest.fixture()
def pruned(tmp_path):
    ckpt = _plain_checkpoint(tmp_path)
    out = tmp_path / "pruned.safetensors"
    prune(ckpt, arch="deq-edsr", arch_args=small_args("deq-edsr"), operator=_mask_spec(tmp_path), out=out,
          ratio=0.5, round_to=1, image_size=SMALL_IMAGE_SIZE)
    return out


# -- self-contained model files ------------------------------------------------------------
def test_mask_file_is_embedded_and_reloads_without_the_file(pruned, tmp_path):
    mask = np.load(tmp_path / "mask.npy")
    (tmp_path / "mask.npy").unlink()
    state = load_file(str(pruned))
    assert np.array_equal(state[EMBED_PREFIX + "mask"].numpy(), mask)
    lm = load_model(pruned)
    assert lm.operator.spec["mask"].startswith("embedded:mask@")
    assert torch.equal(lm.operator.mask.flatten(), torch.from_numpy(mask))
    assert EMBED_PREFIX + "mask" not in lm.model.state_dict()
    # a file written from the loaded model embeds the data again
    again = save_model(tmp_path / "again.safetensors", lm.model, lm.meta, operator=lm.operator)
    assert torch.equal(load_model(again).operator.mask, lm.operator.mask)


def test_a_path_inside_a_model_file_is_never_opened(pruned, tmp_path):
    secret = tmp_path / "secret.npy"
    np.save(secret, np.array([0.0, 1.0, 0.0, 31337.0]))
    for value in (str(secret), "../secret.npy", "secret.npy"):
        bad = _rewrite_meta(pruned, tmp_path / "bad.safetensors", lambda m: m["operator"].update(mask=value))
        with pytest.raises(ConfigError, match="never opened") as e:
            load_model(bad)
        assert "31337" not in str(e.value)
    # a given operator spec (the caller's) is fine
    assert load_model(bad, operator=_mask_spec(tmp_path)).operator is not None


def test_embedded_data_that_does_not_match_its_checksum_is_refused(pruned, tmp_path):
    state = load_file(str(pruned))
    state[EMBED_PREFIX + "mask"] = 1 - state[EMBED_PREFIX + "mask"]
    _, meta = read_checkpoint(pruned)
    bad = tmp_path / "tampered.safetensors"
    save_file(state, str(bad), metadata={"format": "mbdlprune", "mbdlprune": json.dumps(meta)})
    with pytest.raises(ConfigError, match="checksum"):
        load_model(bad)


# -- names from files --------------------------------------------------------------------
EVIL = textwrap.dedent('''
    from pathlib import Path
    Path(__file__).with_name("PWNED").touch()
    def build(**kw):
        Path(__file__).with_name("PWNED").touch()
''')


@pytest.mark.parametrize("source", [None, "builtin", "factory"])
@pytest.mark.parametrize("name", ["os:system", "evil.py:build", "evil:build", "os.system"])
def test_code_named_by_a_file_never_runs(pruned, tmp_path, monkeypatch, name, source):
    (tmp_path / "evil.py").write_text(EVIL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    def change(m):
        m["arch"] = {"name": name, "args": {"command": "touch PWNED"}}
        if source:
            m["arch"]["source"] = source

    bad = _rewrite_meta(pruned, tmp_path / "bad.safetensors", change)
    with pytest.raises(MbdlError, match="--arch|not a built-in"):
        load_model(bad)
    assert not (tmp_path / "PWNED").exists()
    assert "evil" not in " ".join(sys.modules)


def test_a_recorded_factory_runs_only_when_the_command_line_names_it(tmp_path, monkeypatch):
    src = Path(__file__).resolve().parents[1] / "examples" / "custom_factory" / "my_model.py"
    (tmp_path / "my_model.py").write_text(src.read_text())
    (tmp_path / "other.py").write_text(src.read_text())
    monkeypatch.chdir(tmp_path)
    model, _ = build_arch("my_model.py:build", {})
    torch.save(model.state_dict(), tmp_path / "orig.pt")
    spec = _mask_spec(tmp_path)
    out = tmp_path / "p.safetensors"
    prune(tmp_path / "orig.pt", arch="my_model.py:build", operator=spec, out=out, ratio=0.5, round_to=1)
    with pytest.raises(MbdlError, match="--arch my_model.py:build"):
        load_model(out)
    with pytest.raises(MbdlError, match="not the code"):
        load_model(out, arch="other.py:build")
    assert load_model(out, arch="my_model.py:build").model is not None
    assert load_model(out, arch=str(tmp_path / "my_model.py") + ":build").model is not None


@pytest.mark.parametrize("attrs", [{"forward": "os.system"}, {"__class__": 1}, {"prune_sensitivity": "yes"}, [1]])
def test_only_allowlisted_plain_attributes_are_restored(pruned, tmp_path, attrs):
    bad = _rewrite_meta(pruned, tmp_path / "bad.safetensors", lambda m: m.update(model_attrs=attrs))
    with pytest.raises(CheckpointError, match="attribute|model_attrs"):
        load_model(bad)


def test_recorded_arguments_that_build_a_huge_model_are_refused_without_allocating(pruned, tmp_path):
    bad = _rewrite_meta(pruned, tmp_path / "bad.safetensors", lambda m: m["arch"]["args"].update(n_feats=10**7))
    with pytest.raises(CheckpointError, match="n_feats"):
        load_model(bad)
    # within the integer bound, but too many elements in all: measured on the meta device
    bad = _rewrite_meta(pruned, tmp_path / "bad.safetensors", lambda m: m["arch"]["args"].update(n_feats=50_000, n_blocks=100))
    with pytest.raises(CheckpointError, match="elements"):
        load_model(bad)


def test_non_finite_weights_are_refused_naming_the_tensor(pruned, tmp_path):
    state = load_file(str(pruned))
    key = next(k for k in state if k.endswith("weight"))
    state[key][0] = float("nan")
    _, meta = read_checkpoint(pruned)
    bad = tmp_path / "nan.safetensors"
    save_file(state, str(bad), metadata={"format": "mbdlprune", "mbdlprune": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_model(bad)


def test_a_teacher_or_original_is_built_like_the_pruned_file(pruned, tmp_path):
    _, meta = read_checkpoint(pruned)
    lm = load_model(tmp_path / "orig.pt", like=meta)
    assert lm.arch.name == "deq-edsr" and lm.file_meta is None
    with pytest.raises(MbdlError, match="does not say which architecture"):
        load_model(tmp_path / "orig.pt")


# -- the one writer ----------------------------------------------------------------------
def test_write_file_never_replaces_without_force_and_cleans_up(tmp_path):
    p = tmp_path / "r.json"
    write_json(p, {"a": float("inf"), "b": [1.5]})
    assert json.loads(p.read_text()) == {"a": None, "b": [1.5]}
    with pytest.raises(MbdlError, match="already exists"):
        write_json(p, {"a": 2})
    assert json.loads(p.read_text())["b"] == [1.5]
    write_json(p, {"a": 2}, force=True)
    assert json.loads(p.read_text()) == {"a": 2}

    def boom(tmp):
        Path(tmp).write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_file(tmp_path / "new.txt", boom)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]
    with pytest.raises(MbdlError, match="does not exist"):
        write_json(tmp_path / "missing" / "r.json", {})


def test_sigterm_during_a_write_leaves_no_temp_file(tmp_path):
    code = textwrap.dedent(f'''
        import sys, time
        from pathlib import Path
        from mbdlprune.cli.common import handle_errors
        from mbdlprune.io import write_file

        def slow(tmp):
            Path(tmp).write_text("partial")
            print("writing", flush=True)
            time.sleep(30)

        @handle_errors
        def main(debug=False):
            write_file({str(tmp_path / "out.bin")!r}, slow)

        main()
    ''')
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert os.listdir(tmp_path) == []


@pytest.fixture()
def full_disk(tmp_path):
    """A 64 KiB tmpfs: a real file system that fills up (needs root and mount; skipped elsewhere)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    (mnt / "filler").write_bytes(b"\0" * (60 << 10))  # leave about 4 KiB
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(full_disk, pruned):
    lm = load_model(pruned)
    big = {"w": torch.zeros(200_000)}
    with pytest.raises(MbdlError, match="No space left"):
        write_file(full_disk / "x.safetensors", lambda tmp: save_file(big, tmp))
    with pytest.raises(MbdlError, match="No space left|failed"):
        write_json(full_disk / "r.json", {"x": "y" * 200_000})
    assert os.listdir(full_disk) == ["filler"]
    from typer.testing import CliRunner

    from mbdlprune.cli import app

    r = CliRunner().invoke(app, ["prune", str(pruned), "--ratio", "0.3", "--round-to", "1", "-o", str(full_disk / "p.safetensors")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "error:" in r.output, r.output
    assert os.listdir(full_disk) == ["filler"] and lm is not None


@pytest.mark.parametrize("link", ["external", "soft"])
def test_hdf5_operator_files_never_follow_links_to_other_data(tmp_path, link):
    """A mask file whose dataset is a link is refused: the linked data (here a valid mask, which
    would load if followed) is never read, whatever file or path the link names."""
    import h5py
    import numpy as np

    from mbdlprune.errors import MbdlError
    from mbdlprune.operators import load_operator

    target = tmp_path / "elsewhere.h5"
    with h5py.File(target, "w") as f:
        f["mask"] = np.ones(32, np.float32)
        f["other"] = np.ones(32, np.float32)
    evil = tmp_path / "mask.h5"
    with h5py.File(evil, "w") as f:
        f["mask"] = h5py.ExternalLink(str(target), "/mask") if link == "external" else h5py.SoftLink("/nowhere")
    with pytest.raises(MbdlError, match="link|holds datasets"):
        load_operator({"operator": {"kind": "mri", "image_size": [32, 32], "mask": str(evil)}})
