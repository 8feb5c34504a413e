"""Bad input gets one line naming the problem and the fix: data files, configs, pruning options,
JSON output, metrics on degenerate targets, OS errors and SIGTERM in the CLI."""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from mbdlprune import data
from mbdlprune.errors import ConfigError, DataError, MbdlError, PruningError
from mbdlprune.operators import load_operator


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and text.strip(), repr(text)
    return text


def denoise_op(size=(8, 8), channels=1):
    return load_operator({"kind": "denoise", "image_size": list(size), "channels": channels})


def stack(n=6, size=(8, 8), seed=0):
    return np.random.default_rng(seed).random((n, *size)).astype(np.float32) + 0.5


# ---------------------------------------------------------------------------------------- data
def test_nan_inf_and_zero_slices_are_dropped_with_a_note(tmp_path):
    a = stack(6)
    a[0] = 0
    a[1] = 0
    a[2, 3, 4] = np.nan
    np.save(tmp_path / "brain.npy", a)
    (vol,) = data.read_volumes(tmp_path / "brain.npy")
    assert vol.num_slices == 3 and np.isfinite(vol.array).all()
    note = "dropped 3 of 6 slices of brain.npy: 2 all-zero, 1 with NaN/Inf values"
    assert data.volume_notes([vol]) == [note]
    assert vol.meta["slice_index"] == [3, 4, 5]
    pd = data.build_dataset([vol], denoise_op())
    rec = pd.record()
    assert rec["notes"] == [note] and rec["nonfinite_slices"] == 1 and rec["skipped_empty_slices"] == 2
    assert pd.slices == 3 and torch.isfinite(pd.dataset.x).all() and torch.isfinite(pd.dataset.y).all()


def test_values_that_overflow_float32_count_as_inf(tmp_path):
    a = stack(3).astype(np.float64)
    a[1, 0, 0] = 1e300  # finite in float64, inf once stored as float32
    np.save(tmp_path / "big.npy", a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning lines on stderr
        (vol,) = data.read_volumes(tmp_path / "big.npy")
    assert vol.num_slices == 2 and "1 with NaN/Inf values" in data.volume_notes([vol])[0]


@pytest.mark.parametrize("fill", [np.nan, np.inf, 0.0, "mixed"])
def test_a_volume_with_no_valid_slice_is_refused(tmp_path, fill):
    a = stack(4)
    if fill == "mixed":
        a[:2] = 0
        a[2:] = np.nan
    else:
        a[:] = fill
    np.save(tmp_path / "x.npy", a)
    with pytest.raises(DataError) as e:
        data.read_volumes(tmp_path / "x.npy")
    msg = one_line(e.value)
    assert "all 4 slices of x.npy are NaN/Inf or all-zero" in msg and "check the file" in msg


def test_volumes_built_in_code_never_normalise_nan(tmp_path):
    a = stack(4)
    a[1, 2, 2] = np.inf
    vol = data.Volume("v", "v", "0" * 64, "image", a)
    for norm in ("max", "volume"):
        x = data.slices_to_images(vol, denoise_op(), normalize=norm)
        assert x.shape[0] == 3 and torch.isfinite(x).all()
    assert data.volume_notes([vol]) == ["dropped 1 of 4 slices of v: 1 with NaN/Inf values"]  # noted once
    pd = data.build_dataset([vol], denoise_op())
    assert pd.record()["nonfinite_slices"] == 1 and pd.notes == data.volume_notes([vol])
    allnan = data.Volume("w", "w", "1" * 64, "image", np.full((2, 8, 8), np.nan, np.float32))
    with pytest.raises(DataError, match="all 2 slices of w are NaN/Inf"):
        data.slices_to_images(allnan, denoise_op(), normalize="volume")


def test_kspace_nan_slices_are_dropped(tmp_path):
    op = load_operator({"kind": "mri", "image_size": [8, 8], "acceleration": 2, "coils": 1, "noise_sigma": 0.0})
    k = (np.random.default_rng(0).standard_normal((3, 1, 8, 8)) + 1j).astype(np.complex64)
    k[0, 0, 1, 1] = np.nan
    with h5py.File(tmp_path / "k.h5", "w") as h:
        h["kspace"] = k
    (vol,) = data.read_volumes(tmp_path / "k.h5")
    assert vol.num_slices == 2 and data.volume_notes([vol])
    y, kept = data.kspace_to_measurements(vol, op)
    assert torch.isfinite(y).all() and len(kept) == 2


def _nifti_bytes(tmp_path, gz=False):
    p = tmp_path / ("src.nii.gz" if gz else "src.nii")
    nib.save(nib.Nifti1Image(stack(3, (8, 8)).transpose(1, 2, 0).copy(), np.eye(4)), str(p))
    raw = p.read_bytes()
    p.unlink()
    return raw


@pytest.mark.parametrize("case", ["empty_file", "no_slices", "zero_size", "one_d", "strings", "objects", "structured",
                                  "corrupt_nii", "truncated_nii", "truncated_niigz", "not_gzip", "corrupt_h5",
                                  "corrupt_npz", "empty_npz", "h5_group", "h5_link", "h5_external", "kspace_strings"])
def test_unreadable_data_files_are_one_line(tmp_path, case):
    name, needle = {
        "empty_file": ("e.npy", "is empty (0 bytes)"), "no_slices": ("e.npy", "holds no slices"),
        "zero_size": ("z.npy", "holds no slices"), "one_d": ("v.npy", "has shape (5,)"),
        "strings": ("s.npy", "holds <U1 data, not numbers"), "objects": ("o.npy", "cannot read o.npy"),
        "structured": ("r.npy", "not numbers"), "corrupt_nii": ("c.nii", "not a NIfTI file"),
        "truncated_nii": ("t.nii", "cannot read t.nii"), "truncated_niigz": ("t.nii.gz", "not a complete gzip file"),
        "not_gzip": ("g.nii.gz", "not a complete gzip file"), "corrupt_h5": ("c.h5", "cannot read c.h5"),
        "corrupt_npz": ("c.npz", "cannot read c.npz"), "empty_npz": ("e.npz", "holds no arrays"),
        "h5_group": ("g.h5", "is a group"), "h5_link": ("l.h5", "is a link"), "h5_external": ("x.h5", "external"),
        "kspace_strings": ("k.npz", "not numbers"),
    }[case]
    p = tmp_path / name
    if case == "empty_file":
        p.write_bytes(b"")
    elif case == "no_slices":
        np.save(p, np.zeros((0, 8, 8), np.float32))
    elif case == "zero_size":
        np.save(p, np.zeros((3, 0, 8), np.float32))
    elif case == "one_d":
        np.save(p, np.arange(5.0))
    elif case == "strings":
        np.save(p, np.array([["a", "b"], ["c", "d"]]))
    elif case == "objects":
        np.save(p, np.array([[{}, 1], [2, 3]], dtype=object), allow_pickle=True)
    elif case == "structured":
        np.save(p, np.zeros((2, 4, 4), dtype=[("a", "f4"), ("b", "i4")]))
    elif case == "corrupt_nii":
        p.write_bytes(b"not a nifti file at all " * 40)
    elif case == "truncated_nii":
        p.write_bytes(_nifti_bytes(tmp_path)[:400])
    elif case == "truncated_niigz":
        p.write_bytes(_nifti_bytes(tmp_path, gz=True)[:60])
    elif case == "not_gzip":
        p.write_bytes(_nifti_bytes(tmp_path))
    elif case == "corrupt_h5":
        p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    elif case == "corrupt_npz":
        p.write_bytes(b"PK\x03\x04 definitely not a zip")
    elif case == "empty_npz":
        np.savez(p)
    elif case == "h5_group":
        with h5py.File(p, "w") as h:
            h.create_group("images")
    elif case == "h5_link":
        np.save(tmp_path / "other.npy", stack(2))
        with h5py.File(tmp_path / "other.h5", "w") as h:
            h["images"] = stack(2)
        with h5py.File(p, "w") as h:
            h["images"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "images")
    elif case == "h5_external":
        raw = tmp_path / "raw.bin"
        raw.write_bytes(stack(2).tobytes())
        with h5py.File(p, "w") as h:
            h.create_dataset("images", shape=(2, 8, 8), dtype="f4", external=[(str(raw), 0, 2 * 8 * 8 * 4)])
    elif case == "kspace_strings":
        np.savez(p, kspace=np.array([["a", "b"]]))
    with pytest.raises(DataError) as e:
        data.read_volumes(p)
    msg = one_line(e.value)
    assert needle in msg and name in msg, msg


def test_folders_without_readable_data_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.npy").write_bytes(b"")
    with pytest.raises(DataError, match="holds no data files"):
        data.read_volumes(tmp_path)
    os.symlink(tmp_path / "gone.npy", tmp_path / "dangling.npy")
    with pytest.raises(DataError) as e:
        data.read_volumes(tmp_path)
    assert "dangling.npy" in one_line(e.value) and "not a regular file" in str(e.value)
    os.unlink(tmp_path / "dangling.npy")
    np.save(tmp_path / "ok.npy", stack(2))

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(a[0]))

    monkeypatch.setattr(data.volumes, "open", denied, raising=False)  # where the files are read
    with pytest.raises(DataError) as e:
        data.read_volumes(tmp_path)
    assert "ok.npy" in one_line(e.value) and "permission denied" in str(e.value)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="neither a file nor a folder"):
        data.list_data_files(fifo)


def test_nifti_gz_and_nifti2_read_from_memory(tmp_path):
    a = stack(3, (8, 8)).transpose(1, 2, 0).copy()
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(tmp_path / "a.nii.gz"))
    nib.save(nib.Nifti2Image(a, np.eye(4)), str(tmp_path / "b.nii"))
    vols = data.read_volumes(tmp_path)
    assert [v.array.shape for v in vols] == [(3, 8, 8), (3, 8, 8)]
    np.testing.assert_allclose(vols[1].array[1], a[:, :, 1])
    assert vols[0].sha256 == __import__("hashlib").sha256((tmp_path / "a.nii.gz").read_bytes()).hexdigest()


def test_bad_nifti_header_is_one_line_and_nibabel_stays_quiet(tmp_path, capfd):
    raw = bytearray(_nifti_bytes(tmp_path))
    raw[70:72] = (999).to_bytes(2, "little")  # datatype code nibabel does not know
    (tmp_path / "q.nii").write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        data.read_volumes(tmp_path / "q.nii")
    assert "q.nii" in one_line(e.value) and "data code 999" in str(e.value)
    assert capfd.readouterr().err == ""


# -------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("case", ["binary", "folder", "empty", "blank", "json_list", "json_nan", "json_inf", "missing", "bad_toml"])
def test_read_config_file_is_one_line(tmp_path, case):
    from mbdlprune.config import read_config_file

    p = tmp_path / ("spec.json" if case.startswith("json") else "spec.toml")
    needle = {"binary": "not a text file", "folder": "is a folder", "empty": "is empty", "blank": "is empty",
              "json_list": "holds a JSON list, not an object", "json_nan": "NaN is not a JSON number",
              "json_inf": "Infinity is not a JSON number", "missing": "does not exist", "bad_toml": "not valid TOML"}[case]
    if case == "binary":
        p.write_bytes(b"\xff\xfe\x00\x81binary\x00")
    elif case == "folder":
        p.mkdir()
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "blank":
        p.write_text("  \n\n")
    elif case == "json_list":
        p.write_text("[1, 2]")
    elif case == "json_nan":
        p.write_text('{"operator": {"noise_sigma": NaN}}')
    elif case == "json_inf":
        p.write_text('{"operator": {"noise_sigma": -Infinity}}')
    elif case == "bad_toml":
        p.write_text("[operator\nkind = 'mri'\n")
    with pytest.raises(ConfigError) as e:
        read_config_file(p)
    msg = one_line(e.value)
    assert needle in msg and "spec" in msg, msg


def test_expect_rejects_non_finite_floats():
    from mbdlprune.config import expect, expect_number

    assert expect(0.5, (int, float), "noise_sigma", "[operator]") == 0.5
    assert expect(3, int, "coils", "[operator]") == 3
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError) as e:
            expect(bad, (int, float), "noise_sigma", "[operator]")
        assert "noise_sigma must be a finite number" in one_line(e.value) and "[operator]" in str(e.value)
        with pytest.raises(ConfigError, match="finite"):
            expect(bad, float, "x", "w")
    assert math.isnan(expect(math.nan, object, "x", "w"))  # only numeric checks are strict
    with pytest.raises(ConfigError, match="must be int or float"):
        expect(True, (int, float), "x", "w")
    assert expect_number(2, "steps", "w", integer=True, minimum=1) == 2
    with pytest.raises(ConfigError, match="must be int"):
        expect_number(2.0, "steps", "w", integer=True)
    with pytest.raises(ConfigError, match="finite"):
        expect_number(math.nan, "ratio", "w", minimum=0, maximum=1)
    with pytest.raises(ConfigError, match=r"ratio must be >= 0 and < 1, got 1.0"):
        expect_number(1.0, "ratio", "w", minimum=0, maximum=1, max_inclusive=False)


def test_toml_nan_reaches_expect(tmp_path):
    """TOML spells nan/inf legally; the operator loader's expect() must refuse them."""
    from mbdlprune.config import expect, read_config_file

    p = tmp_path / "op.toml"
    p.write_text("[operator]\nkind = 'denoise'\nnoise_sigma = nan\n")
    table = read_config_file(p)["operator"]
    with pytest.raises(ConfigError, match="noise_sigma must be a finite number"):
        expect(table["noise_sigma"], (int, float), "noise_sigma", "[operator]")


@pytest.mark.parametrize("text,needle", [
    ('{"chans": NaN}', "NaN is not a JSON number"),
    ('{"chans": 8, "scale": Infinity}', "Infinity is not a JSON number"),
    ('{"a": {"b": [1, -Infinity]}}', "-Infinity is not a JSON number"),
    ('{"chans": 8', "not valid JSON"),
    ("[1, 2]", "does not exist"),
])
def test_arch_args_json_must_be_finite(text, needle):
    from mbdlprune.config import parse_json_or_file

    with pytest.raises(ConfigError) as e:
        parse_json_or_file(text)
    assert needle in one_line(e.value)


def test_arch_args_file_nested_non_finite(tmp_path):
    from mbdlprune.config import parse_json_or_file

    p = tmp_path / "args.toml"
    p.write_text("chans = 8\n[prior]\nwidths = [1.0, inf]\n")
    with pytest.raises(ConfigError) as e:
        parse_json_or_file(str(p))
    assert "prior.widths[1] in --arch-args must be a finite number" in one_line(e.value)
    p.write_text("chans = 8\n")
    assert parse_json_or_file(str(p)) == {"chans": 8}


# ------------------------------------------------------------------------------- CLI plumbing
def _app(fn):
    import typer

    from mbdlprune.cli.common import handle_errors

    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(handle_errors(fn))
    return app


def _invoke(app, *args):
    from typer.testing import CliRunner

    return CliRunner().invoke(app, [str(a) for a in args])


def _assert_one_line(r, code, *needles):
    assert r.exit_code == code, (r.exit_code, r.output)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert "Traceback" not in r.output
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("exc,needles", [
    (PermissionError(13, "Permission denied", "/data/out.safetensors"), ["permission denied: /data/out.safetensors", "permissions"]),
    (OSError(28, "No space left on device", "/data/out.safetensors.tmp"), ["no space left on device: /data/out.safetensors.tmp", "free disk space"]),
    (OSError(28, "No space left on device"), ["no space left on device —"]),
    (IsADirectoryError(21, "Is a directory", "/data/run"), ["is a folder, not a file: /data/run", "pass the path of a file"]),
    (FileNotFoundError(2, "No such file or directory", "/data/x.nii"), ["no such file or folder: /data/x.nii", "check the path"]),
    (OSError(30, "Read-only file system", "/ro/o.safetensors"), ["read-only file system: /ro/o.safetensors"]),
])
def test_user_os_errors_exit_2_with_one_line(exc, needles):
    def cmd(debug: bool = False):
        raise exc

    _assert_one_line(_invoke(_app(cmd)), 2, *needles)


def test_other_errors_stay_internal_and_mbdl_errors_stay_one_line():
    def eio(debug: bool = False):
        raise OSError(5, "Input/output error", "/dev/sdz")

    _assert_one_line(_invoke(_app(eio)), 1, "OSError", "--debug")

    def two_lines(debug: bool = False):
        raise DataError("first line\nsecond line", "fix it")

    _assert_one_line(_invoke(_app(two_lines)), 2, "first line second line — fix it")
    r = _invoke(_app(eio), "--debug")
    assert r.exit_code != 0 and isinstance(r.exception, OSError)


def test_signal_handler_is_restored_after_a_command():
    from mbdlprune.cli import common as cli_common

    before = signal.getsignal(signal.SIGTERM)
    seen = []
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        def ok(debug: bool = False):
            seen.append(signal.getsignal(signal.SIGTERM))

        assert _invoke(_app(ok)).exit_code == 0
        assert seen == [cli_common._raise_terminated]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # an ignored SIGTERM (e.g. under nohup-like wrappers) stays ignored
        assert _invoke(_app(ok)).exit_code == 0
        assert seen[-1] is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


SIGTERM_SCRIPT = textwrap.dedent('''
    import sys, time
    import typer
    from mbdlprune.cli.common import handle_errors

    def run(marker: str, debug: bool = False):
        try:
            print("ready", flush=True)
            time.sleep(60)
        except Exception:
            open(marker, "w").write("swallowed")  # must not happen: SIGTERM is not an Exception
            raise
        finally:
            with open(marker, "a") as f:
                f.write("cleaned")

    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(handle_errors(run))
    app()
''')


def test_sigterm_runs_cleanup_and_exits_143_with_one_line(tmp_path):
    marker = tmp_path / "marker"
    p = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(marker)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, (p.returncode, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: terminated"), err
    assert "Traceback" not in err
    assert marker.read_text() == "cleaned"


def test_print_json_is_strict():
    import io as _io

    from mbdlprune.cli.common import json_safe, print_json

    obj = {"psnr": math.inf, "ssim": [1.0, math.nan, -math.inf], "nested": {"t": torch.tensor([1.0, float("inf")]),
           "a": np.array([np.nan, 2.0]), "s": np.float32(3.5)}, 1: "int key", math.inf: "inf key", "path": __import__("pathlib").Path("/x")}
    buf = _io.StringIO()
    old, sys.stdout = sys.stdout, buf
    try:
        print_json(obj)
    finally:
        sys.stdout = old
    text = buf.getvalue()
    assert "Infinity" not in text and "NaN" not in text
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard {c}"))
    assert back["psnr"] is None and back["ssim"] == [1.0, None, None]
    assert back["nested"] == {"t": [1.0, None], "a": [None, 2.0], "s": 3.5} and back["path"] == "/x"
    assert back["inf"] == "inf key" and back["1"] == "int key"
    assert json_safe({"ok": 1}) == {"ok": 1}


def test_inspect_json_with_an_infinite_value_is_strict_json(monkeypatch):
    import mbdlprune.api as api
    from mbdlprune.cli import app

    monkeypatch.setattr(api, "inspect_checkpoint", lambda *a, **k: {"path": "m.safetensors", "operator": {"kind": "denoise", "noise_sigma": math.inf}})
    r = _invoke(app, "inspect", "m.safetensors", "--json")
    assert r.exit_code == 0, r.output
    assert "Infinity" not in r.stdout
    assert json.loads(r.stdout)["operator"]["noise_sigma"] is None


# ------------------------------------------------------------------------------------- pruning
def _edsr():
    from mbdlprune.models.user import build_arch

    torch.manual_seed(0)
    return build_arch("edsr", {"n_feats": 16, "n_blocks": 1})


@pytest.mark.parametrize("kw,needle", [
    ({"ratio": math.nan}, "--ratio must be a finite number in (0, 1), got nan"),
    ({"ratio": math.inf}, "--ratio must be a finite number"),
    ({"ratio": 1.0}, "--ratio 1.0 is outside (0, 1)"),
    ({"ratio": "0.5"}, "--ratio must be a number"),
    ({"ratio": True}, "--ratio must be a number"),
    ({"iterative_steps": 0}, "--iterative-steps must be an integer >= 1"),
    ({"iterative_steps": 1.5}, "--iterative-steps must be an integer >= 1"),
    ({"round_to": 0}, "--round-to must be an integer >= 1"),
    ({"round_to": math.nan}, "--round-to must be an integer >= 1"),
    ({"layer_ratios": {"body.*": math.nan}}, "layer ratio for 'body.*' must be a finite number"),
    ({"layer_ratios": {"body.*": 1.0}}, "outside [0, 1)"),
    ({"layer_ratios": {"body.*": -0.1}}, "outside [0, 1)"),
    ({"ignore": "tail"}, "--ignore must be a list"),
    ({"importance": "l3"}, "unknown --importance"),
])
def test_prune_options_are_checked(kw, needle):
    from mbdlprune.pruning import PruneConfig

    with pytest.raises(MbdlError) as e:
        PruneConfig(**kw).validate()
    assert needle in one_line(e.value)


def test_max_layer_ratio_nan_is_refused():
    from mbdlprune.pruning import PruneConfig

    with pytest.raises(ConfigError, match="max_layer_ratio must be a finite number"):
        PruneConfig(max_layer_ratio=math.nan).validate()


@pytest.mark.parametrize("kw,needle", [
    ({"layer_ratios": {"bdy.*": 0.3}}, "--layer-ratio pattern 'bdy.*' matches no conv/linear layer"),
    ({"layer_ratios": {"body.0.body.1": 0.3}}, "matches no conv/linear layer"),  # a ReLU, not a layer
    ({"ignore": ["tial"]}, "--ignore pattern 'tial' matches no module"),
])
def test_patterns_that_match_nothing_are_refused_with_real_names(kw, needle):
    from mbdlprune.api import prune_model

    model, spec = _edsr()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruningError) as e:
        prune_model(model, spec, None, ratio=0.5, round_to=1, image_size=(16, 16), **kw)
    msg = one_line(e.value)
    assert needle in msg and ("tail" in msg.split("—")[1] or "body.0.body.0" in msg.split("—")[1]), msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing pruned


def test_matching_patterns_still_work():
    from mbdlprune.api import prune_model

    model, spec = _edsr()
    # ignoring the head holds back every layer coupled to it through the residual path: that is
    # refused unless asked for, and then reported
    with pytest.raises(MbdlError, match="held back"):
        prune_model(model, spec, None, ratio=0.5, round_to=1, image_size=(16, 16),
                    layer_ratios={"body.*": 0.25}, ignore=["head"])
    model, spec = _edsr()
    res = prune_model(model, spec, None, ratio=0.5, round_to=1, image_size=(16, 16),
                      layer_ratios={"body.*": 0.25}, ignore=["head"], allow_partial=True)
    assert res.report["params_after"] < res.report["params_before"]


@pytest.mark.parametrize("where", ["weight", "buffer"])
def test_nan_weights_are_refused_naming_the_tensor(where):
    from mbdlprune.pruning import PruneConfig, prune_priors

    if where == "weight":
        model, _ = _edsr()
        with torch.no_grad():
            model.body[0].body[0].weight[0, 0, 0, 0] = math.nan
        name = "body.0.body.0.weight"
    else:
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.Conv2d(16, 1, 3, padding=1))
        model.eval()
        model[1].running_var[3] = math.inf
        name = "1.running_var"
    with pytest.raises(PruningError) as e:
        prune_priors(model, (torch.rand(1, 1, 16, 16),), PruneConfig(ratio=0.5, round_to=1, priors=[""]))
    msg = one_line(e.value)
    assert repr(name) in msg and "NaN/Inf" in msg


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    from mbdlprune.models.small import SMALL_IMAGE_SIZE, small_args
    from mbdlprune.models.user import build_arch

    d = tmp_path_factory.mktemp("ckpt")
    model, _ = build_arch("deq-edsr", small_args("deq-edsr"))
    path = d / "deq.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    op = d / "op.toml"
    h, w = SMALL_IMAGE_SIZE
    op.write_text(f'[operator]\nkind = "mri"\nimage_size = [{h}, {w}]\nacceleration = 4\n')
    return path, op, json.dumps(small_args("deq-edsr"))


@pytest.mark.parametrize("extra,needle", [
    (["--ratio", "nan"], "--ratio must be a finite number"),
    (["--ratio", "0.5", "--layer-ratio", "prior.bdy.*=0.3"], "'prior.bdy.*' matches no conv/linear layer"),
    (["--ratio", "0.5", "--layer-ratio", "prior.body.*=nan"], "must be a finite number"),
    (["--ratio", "0.5", "--layer-ratio", "prior.head=0.3", "--layer-ratio", "prior.head=0.2"], "twice"),
    (["--ratio", "0.5", "--ignore", "prior.tial"], "'prior.tial' matches no module"),
    (["--ratio", "0.5", "--round-to", "0"], "--round-to must be an integer >= 1"),
    (["--ratio", "0.5", "--iterative-steps", "0"], "--iterative-steps must be an integer >= 1"),
    (["--ratio", "0.5", "--arch-args", '{"n_feats": NaN}'], "NaN is not a JSON number"),
])
def test_prune_cli_bad_options_are_one_line_and_write_nothing(small_ckpt, tmp_path, extra, needle):
    from mbdlprune.cli import app

    ckpt, op, arch_args = small_ckpt
    out = tmp_path / "o.safetensors"
    args = ["prune", ckpt, "--arch", "deq-edsr", "--arch-args", arch_args, "--operator", op, "-o", out, "--round-to", "1", *extra]
    if "--arch-args" in extra:
        i = args.index("--arch-args")
        del args[i:i + 2]
    r = _invoke(app, *args)
    err = _assert_one_line(r, 2, needle)
    if "matches no" in needle:
        assert "prior.head" in err or "prior.tail" in err or "prior.body" in err
    assert not out.exists() and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------- metrics
def test_plain_metrics_on_zero_and_constant_targets_are_defined():
    from mbdlprune import metrics as M

    zero, const, rec = torch.zeros(1, 1, 16, 16), torch.full((1, 1, 16, 16), 0.5), torch.rand(1, 1, 16, 16)
    for x in (zero, const):
        m = M.compute_metrics(rec, x, "plain")
        assert torch.isfinite(m["psnr"]).all() and torch.isfinite(m["ssim"]).all()
        assert torch.isinf(M.compute_metrics(x.clone(), x, "plain")["psnr"]).all()  # perfect
    assert float(M.data_range(zero)) == 1.0 and float(M.data_range(const)) == 0.5


@pytest.mark.parametrize("target", ["zero", "constant"])
def test_paper_metric_on_a_constant_target_is_a_clear_error(target):
    from mbdlprune import metrics as M

    x = torch.rand(3, 1, 16, 16) + 0.1
    x[1] = 0.0 if target == "zero" else 0.7
    with pytest.raises(DataError) as e:
        M.compute_metrics(torch.rand(3, 1, 16, 16), x, "paper")
    msg = one_line(e.value)
    assert "ground-truth image 2 of 3 is constant" in msg and "--metric plain" in msg


def test_nonfinite_truth_is_refused_and_nonfinite_reconstruction_is_nan_with_a_note():
    from mbdlprune import metrics as M

    x = torch.rand(2, 1, 16, 16)
    bad = x.clone()
    bad[1, 0, 3, 3] = math.nan
    with pytest.raises(DataError, match="ground-truth image 2 of 2 holds NaN/Inf"):
        M.compute_metrics(x, bad)
    rec = x + 0.01
    rec[0, 0, 0, 0] = math.inf
    for d in ("plain", "paper"):
        m = M.compute_metrics(rec, x, d)
        assert math.isnan(float(m["psnr"][0])) and math.isnan(float(m["ssim"][0]))  # not -inf dB
        assert math.isfinite(float(m["psnr"][1])) and math.isfinite(float(m["ssim"][1]))
    note = M.nonfinite_note(m["psnr"])
    assert note.startswith("1 of 2 reconstructions hold NaN/Inf values") and M.nonfinite_note([30.0, math.inf]) is None


@pytest.mark.parametrize("peak", [0.0, -1.0, math.nan, math.inf])
def test_bad_explicit_peak_is_refused(peak):
    from mbdlprune import metrics as M

    with pytest.raises(ValueError, match="positive and finite"):
        M.psnr(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), peak=peak)


def test_parse_json_or_file_names_the_option():
    from mbdlprune.config import parse_json_or_file

    with pytest.raises(ConfigError) as e:
        parse_json_or_file('{"mc": NaN}', "--weights", '{"mc": 1.0}')
    assert one_line(e.value).startswith("--weights is not valid JSON: NaN is not a JSON number")
    assert parse_json_or_file('{"mc": 1.0}', "--weights") == {"mc": 1.0}


def test_finetune_on_all_nan_data_is_one_line(small_ckpt, tmp_path):
    from mbdlprune.cli import app

    ckpt, op, arch_args = small_ckpt
    pruned = tmp_path / "p.safetensors"
    r = _invoke(app, "prune", ckpt, "--arch", "deq-edsr", "--arch-args", arch_args, "--operator", op, "--ratio", "0.5",
                "--round-to", "1", "-o", pruned)
    assert r.exit_code == 0, r.output
    a = np.full((4, 8, 8), np.nan, np.float32)
    a[1] = 0
    np.save(tmp_path / "nan.npy", a)
    out = tmp_path / "ft.safetensors"
    r = _invoke(app, "finetune", pruned, "--mode", "supervised", "--data", tmp_path / "nan.npy", "--val-fraction", "0",
                "--epochs", "1", "-o", out, "--fit", "crop-pad")
    _assert_one_line(r, 2, "all 4 slices of nan.npy are NaN/Inf or all-zero (1 all-zero, 3 with NaN/Inf values)", "check the file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.npy", "p.safetensors"]


def test_an_unreadable_subfolder_is_not_skipped_silently(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", stack(2))
    (tmp_path / "locked").mkdir()
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError) as e:
        data.read_volumes(tmp_path)
    msg = one_line(e.value)
    assert "locked" in msg and "permission denied" in msg
