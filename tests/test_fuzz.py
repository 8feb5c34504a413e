"""Property-based fuzzing of the three parsers that read files someone else wrote.

Property, for each: any input gives either a valid object or an :class:`MbdlError` (the CLI
turns that into one line and exit 2); never any other exception type (which the CLI would
report as an internal error, exit 1).

1. operator specs: ``operators.load_operator(dict)`` (the table of a spec file);
2. pipeline files: ``pipeline.PipelineConfig`` from a dict and from TOML text;
3. model-file metadata: ``io.load_model`` of a safetensors file whose mbdlprune metadata is
   hypothesis-generated (arbitrary JSON, and targeted mutations of a valid record).

Derandomized (the same examples on every run, so CI is reproducible); each example runs with
a bounded address space and a time limit. Example counts are noted at each test; the file
runs in about 25 s on one CPU thread (2400 examples in all).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile_corpus as H
from mbdlprune.errors import MbdlError

COMMON = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
EXAMPLE_SECONDS = 8  # a parser that takes longer than this on a tiny input is a finding


class TooSlow(BaseException):
    """Raised by the alarm (a BaseException, so product code catching Exception cannot hide it)."""


@contextlib.contextmanager
def bounded(seconds: float = EXAMPLE_SECONDS):
    """Address space limited to the process's own + 6 GiB, and an alarm after ``seconds``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = H._vm_size() + H.MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))

    def on_alarm(signum, frame):
        raise TooSlow()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except TooSlow:
        raise AssertionError(f"took more than {seconds} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def either_valid_or_mbdl_error(fn, *args, **kwargs):
    """Call ``fn``; an MbdlError is a fine answer, anything else but a result fails the property."""
    with bounded():
        try:
            return fn(*args, **kwargs)
        except MbdlError:
            return None


# ------------------------------------------------------------------------------ hostile values
BOUNDARY_INTS = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, -1, -16, 2**31, 2**63 - 1, 2**63, -2**63, 10**30]
SPECIAL_FLOATS = [0.0, -0.0, 0.5, 1.0, 1.5, 4.0, 1e-300, 1e300, -1.0, math.inf, -math.inf, math.nan]
small_ints = st.one_of(st.integers(-4, 40), st.sampled_from(BOUNDARY_INTS))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL_FLOATS))
texts = st.one_of(st.text(max_size=12), st.sampled_from(["", "uniform", "random", "gaussian", "box", "mri", "../x.npy",
                                                          "/etc/passwd", "embedded:mask@0000", "os:system", "nan"]))
scalars = st.one_of(st.none(), st.booleans(), small_ints, floats, texts)
#: any TOML/JSON-like value (tables and arrays nested a few levels)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(texts, inner, max_size=4)), max_leaves=8)
json_values = st.recursive(st.one_of(st.none(), st.booleans(), small_ints, floats, st.text(max_size=12)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=10)


# ------------------------------------------------------------------------------ 1. operator specs
def plausible(options: list) -> st.SearchStrategy:
    """Mostly (about 85%) a value that makes sense for the key, so parsing goes deep; otherwise anything."""
    return st.integers(0, 19).flatmap(lambda n: st.sampled_from(options) if n < 17 else values)


#: kind -> its keys (besides kind and image_size) with values that make sense
OP_KEYS: dict[str, dict[str, list]] = {
    "mri": {"noise_sigma": [0.0, 0.05], "channels": [2], "acceleration": [1, 2, 4, 8, 16, 1.5, 4.0],
            "center_fraction": [0.0, 0.08, 0.5, 0.99], "mask": ["uniform", "random", "equispaced", "half.npy", "square.npy"],
            "seed": [0, 1, 2**63 - 1], "coils": [1, 2, 4], "coil_maps": ["maps.npy"]},
    "denoise": {"noise_sigma": [0.0, 0.05, 1.0], "channels": [1, 2, 3]},
    "deblur": {"noise_sigma": [0.0, 0.01], "channels": [1, 2], "kernel": ["gaussian", "kernel.npy"], "kernel_size": [1, 3, 5, 9],
               "kernel_sigma": [0.5, 1.6]},
    "inpaint": {"noise_sigma": [0.0, 0.01], "channels": [1, 2], "mask": ["random", "square.npy", "half.npy"],
                "fraction": [0.1, 0.5, 1.0], "seed": [0, 7]},
    "superres": {"noise_sigma": [0.0], "channels": [1, 2], "factor": [2, 4], "filter": ["box", "gaussian"],
                 "kernel_size": [1, 3, 5], "kernel_sigma": [0.5, 1.0]},
    "ct": {"noise_sigma": [0.0, 0.01], "channels": [1], "angles": [1, 8, 30, 180], "detector_size": [8, 23, 32]},
}
KINDS = list(OP_KEYS)
ALL_OP_KEYS = sorted({k for keys in OP_KEYS.values() for k in keys})
#: files in the spec folder the fuzzer may name (user-given specs read files; these are all small)
SPEC_FILES = ["half.npy", "zeros.npy", "ones.npy", "nan.npy", "square.npy", "complex.npy", "text.npy", "corrupt.npy",
              "kernel.npy", "maps.npy", "dir.npy", "missing.npy", "notes.txt", "../outside.npy", "embedded:mask@00"]


def _spec_folder() -> Path:
    d = Path(tempfile.mkdtemp(prefix="mbdl-fuzz-spec-"))
    half = np.zeros(16, np.float32)
    half[::2] = 1
    np.save(d / "half.npy", half)
    np.save(d / "zeros.npy", np.zeros(16, np.float32))
    np.save(d / "ones.npy", np.ones(16, np.float32))
    np.save(d / "nan.npy", np.full(16, np.nan, np.float32))
    np.save(d / "square.npy", np.ones((16, 16), np.float32) * (np.arange(16) % 2))
    np.save(d / "complex.npy", np.ones(16, np.complex64))
    np.save(d / "text.npy", np.array(["a", "b"]))
    (d / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    k = np.zeros((3, 3), np.float32)
    k[1, 1] = 1
    np.save(d / "kernel.npy", k)
    np.save(d / "maps.npy", np.ones((2, 16, 16), np.complex64))
    (d / "dir.npy").mkdir()
    (d / "notes.txt").write_text("hello")
    return d


SPEC_DIR = _spec_folder()

image_sizes = st.integers(0, 9).flatmap(lambda n: st.one_of(
    st.lists(st.sampled_from([8, 16]), min_size=2, max_size=2) if n < 6 else
    st.lists(st.sampled_from([1, 2, 3, 8, 15, 16, 17, 32]), min_size=2, max_size=2) if n < 8 else
    st.sampled_from([[8193, 1], [4097, 4097], [10**6, 10**6], [0, 16], [-16, 16], [16.0, 16], [True, 16], [16], [16, 16, 1]])
    if n < 9 else st.one_of(st.lists(st.one_of(small_ints, floats, st.booleans(), texts, st.none()), max_size=3), values)))


@st.composite
def operator_specs(draw):
    kind = draw(st.sampled_from(KINDS) if draw(st.integers(0, 9)) < 8 else values)
    table: dict[str, Any] = {"kind": kind}
    if draw(st.integers(0, 9)) != 5:
        table["image_size"] = draw(image_sizes)
    keys = OP_KEYS.get(kind, {}) if isinstance(kind, str) else {}
    for key in draw(st.lists(st.sampled_from(sorted(keys) or ALL_OP_KEYS), max_size=4, unique=True)):
        if key in ("mask", "coil_maps", "kernel") and draw(st.integers(0, 2)) == 1:
            table[key] = draw(st.sampled_from(SPEC_FILES))
        else:
            table[key] = draw(plausible(keys.get(key, [0])))
    if draw(st.integers(0, 14)) == 7:
        table[draw(st.one_of(st.sampled_from(ALL_OP_KEYS), texts))] = draw(values)  # a key of another kind, or unknown
    shape = draw(st.integers(0, 9))
    if shape == 3:
        return table
    if shape == 4:
        return {"operator": draw(values)}
    if shape == 5:
        return {"operator": table, draw(texts): draw(values)}
    return {"operator": table}


# 800 examples (about 5 s on one thread)
@settings(max_examples=800, **COMMON)
@given(spec=operator_specs())
def test_fuzz_operator_spec(spec):
    from mbdlprune.operators import load_operator

    op = either_valid_or_mbdl_error(load_operator, spec, base_dir=SPEC_DIR)
    if op is not None:
        assert hasattr(op, "A") and hasattr(op, "A_adjoint") and isinstance(op.spec, dict)
        json.dumps(op.spec, allow_nan=False)  # what a model file records is strict JSON


# ------------------------------------------------------------------------------ 2. pipeline files
VALID_PIPELINE = {
    "model": {"checkpoint": "original.pt", "arch": "deq-edsr", "arch_args": {"n_feats": 8}, "operator": "op.toml"},
    "prune": {"ratio": 0.5, "round_to": 1},
    "finetune": {"mode": "supervised", "data": "train.npy", "epochs": 1},
    "bench": {"data": "eval.npy", "warmup": 0, "repeats": 2, "device": "cpu"},
    "gates": {"min_speedup": 1.1, "max_psnr_drop": 0.5},
    "output": {"dir": "out", "force": False},
}
#: section -> keys with values that make sense (paths are never opened while parsing)
PIPELINE_KEYS: dict[str, dict[str, list]] = {
    "model": {"checkpoint": ["original.pt", "/abs/m.safetensors", "../m.pt"], "arch": ["deq-edsr", "unrolled", "f.py:build", "pkg.mod:build"],
              "arch_args": [{}, {"n_feats": 8}], "operator": ["op.toml"], "unsafe_pickle": [True, False]},
    "prune": {"ratio": [0.1, 0.5, 0.99, 0, 1], "importance": ["l1", "l2", "taylor", "lamp", "random"], "global_pruning": [True, False],
              "iterative_steps": [1, 2], "round_to": [1, 8, 16], "layer_ratios": [{}, {"prior.*": 0.3}], "ignore": [[], ["prior.head"]],
              "priors": [None, ["prior"]], "prune_sensitivity": [False], "image_size": [[16, 16], "16x16"], "seed": [0, 3]},
    "finetune": {"mode": ["supervised", "distill", "self-supervised", "distill+self-supervised"], "data": ["train.npy", ["a.npy", "b.npy"]],
                 "epochs": [1, 2], "lr": [1e-4, 1e-3], "batch_size": [1, 4], "val_fraction": [0.0, 0.1, 0.5], "seed": [0],
                 "weight_decay": [0.0, 1e-4], "grad_clip": [1.0], "lr_schedule": ["none", "cosine"], "loss": ["l1", "l2", "smoothl1", "ssim"],
                 "weights": [{"mc": 1.0}, {"jacobian": 0.05}], "device": ["cpu", "auto"], "teacher": ["original.pt"],
                 "val_data": ["val.npy"], "fit": ["error", "crop", "pad", "crop-pad"], "axis": [0, 2], "normalize": ["max", "volume", "none"]},
    "bench": {"data": ["eval.npy", ["a.npy"]], "device": ["cpu", "auto", "cuda"], "batch_size": [1, 2], "warmup": [0, 10],
              "repeats": [1, 30], "metric": ["plain", "paper"], "seed": [0], "solver": ["anderson", "fixed_point"], "tol": [1e-3],
              "max_iter": [10], "max_images": [2], "fit": ["error", "crop"], "threads": [1], "control": [True, False],
              "figure": [True, False]},
    "gates": {"min_speedup": [1.1, 2.0], "max_psnr_drop": [0.5, 0.0]},
    "output": {"dir": ["out", "."], "force": [True, False]},
    "operator": {"kind": ["denoise", "mri"], "image_size": [[16, 16]], "noise_sigma": [0.05]},
}


@st.composite
def pipeline_dicts(draw):
    d = json.loads(json.dumps(VALID_PIPELINE))
    if draw(st.booleans()):
        d["operator"] = {"kind": "denoise", "image_size": [16, 16]}
        d["model"].pop("operator")
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(list(PIPELINE_KEYS) + ["extra"]))
        action = draw(st.integers(0, 5))
        if action == 0:
            d[section] = draw(values)  # the whole section replaced
        elif action == 1:
            d.pop(section, None)
        elif isinstance(d.get(section), dict):
            keys = PIPELINE_KEYS.get(section, {})
            key = draw(st.one_of(st.sampled_from(sorted(keys) or ["x"]), st.sampled_from(sorted(keys) or ["x"]), texts))
            if action == 2:
                d[section].pop(key, None)
            else:
                d[section][key] = draw(plausible(keys.get(key, [0])))
        else:
            d[section] = {draw(texts): draw(values)}
    return d


def _toml_dumps(d: dict) -> str | None:
    """TOML text for the dict (None when a value has no TOML form, e.g. null)."""

    def val(v):
        if v is None:
            raise ValueError
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + "}"
        raise ValueError

    lines = []
    try:
        for k, v in d.items():
            lines.append(f"{json.dumps(k)} = {val(v)}")
    except ValueError:
        return None
    return "\n".join(lines) + "\n"


PIPELINE_DIR = Path(tempfile.mkdtemp(prefix="mbdl-fuzz-pipeline-"))


# 600 examples from dicts (about 4 s)
@settings(max_examples=600, **COMMON)
@given(d=pipeline_dicts())
def test_fuzz_pipeline_dict(d):
    from mbdlprune.workflows.pipeline import PipelineConfig

    cfg = either_valid_or_mbdl_error(PipelineConfig.from_dict, d, PIPELINE_DIR / "pipeline.toml")
    if cfg is not None:
        assert cfg.model.checkpoint.is_absolute() or str(cfg.model.checkpoint).startswith(str(PIPELINE_DIR))


# 400 examples through TOML text and the file reader, with byte-level damage (about 3 s)
@settings(max_examples=400, **COMMON)
@given(d=pipeline_dicts(), cut=st.integers(0, 4000), junk=st.binary(max_size=8), damage=st.integers(0, 3))
def test_fuzz_pipeline_file(d, cut, junk, damage):
    from mbdlprune.workflows.pipeline import PipelineConfig

    text = _toml_dumps(d)
    if text is None:
        return
    data = text.encode()
    if damage == 1:
        data = data[:cut]
    elif damage == 2:
        i = cut % (len(data) + 1)
        data = data[:i] + junk + data[i:]
    path = PIPELINE_DIR / "pipeline.toml"
    path.write_bytes(data)
    either_valid_or_mbdl_error(PipelineConfig.load, path)


# ------------------------------------------------------------------------------ 3. model-file metadata
@pytest.fixture(scope="module")
def valid_model(tmp_path_factory):
    a = H.build_assets(tmp_path_factory.mktemp("fuzz-assets"))
    return a.state, a.meta


#: where targeted mutations land in a valid record
META_PATHS = [("arch", "args", "n_feats"), ("arch", "args", "gamma"), ("operator", "noise_sigma"), ("norm_widths",),
              ("model_attrs",), ("arch", "args", "n_blocks"), ("arch", "args", "max_iter"), ("arch", "args", "solver"),
              ("arch", "args", "in_channels"), ("arch", "args", "tol"), ("operator", "kind"), ("operator", "image_size"),
              ("operator", "channels"), ("operator", "mask"), ("model_attrs", "prune_sensitivity"), ("format_version",),
              ("pruning",), ("versions",), ("parent_sha256",), ("embedded",), ("finetune",), ("arch", "source"),
              ("arch", "kind"), ("arch", "version"), ("arch", "args"), ("operator",), ("arch", "name"), ("arch",)]
#: values for architecture sizes: small, or clearly absurd; no mid-size values that build a large model slowly
meta_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.sampled_from([-2**63, 10**30, 2**64]),
                         floats, texts)
meta_values = st.recursive(meta_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(texts, inner, max_size=3)), max_leaves=6)


def _mutate(meta: dict, path: tuple, action: int, value: Any) -> dict:
    node = meta
    for key in path[:-1]:
        if not isinstance(node, dict):
            return meta
        node = node.setdefault(key, {})
    if not isinstance(node, dict):
        return meta
    if action == 0:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return meta


@st.composite
def metadata_texts(draw, valid_meta):
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return json.dumps(draw(json_values))  # any JSON at all
    if kind == 1:
        return draw(st.text(max_size=40))  # not even JSON
    meta = json.loads(json.dumps(valid_meta))
    for _ in range(draw(st.integers(1, 3))):
        meta = _mutate(meta, draw(st.sampled_from(META_PATHS)), draw(st.integers(0, 3)), draw(meta_values))
    return json.dumps(meta)  # NaN/Infinity appear as the non-standard tokens Python writes


MODEL_DIR = Path(tempfile.mkdtemp(prefix="mbdl-fuzz-model-"))


# 600 examples (about 9 s)
@settings(max_examples=600, **COMMON)
@given(data=st.data())
def test_fuzz_model_metadata(valid_model, data):
    from mbdlprune.io import load_model

    state, meta = valid_model
    text = data.draw(metadata_texts(meta))
    path = H.write_model(MODEL_DIR / "model.safetensors", state, text)
    cwd = os.getcwd()
    os.chdir(MODEL_DIR)
    try:
        loaded = either_valid_or_mbdl_error(load_model, path)
    finally:
        os.chdir(cwd)
    if loaded is not None:
        assert loaded.model is not None and isinstance(loaded.meta, dict)


def test_fuzz_finding_finetune_mode_not_a_string():
    """Found by the pipeline fuzzer: [finetune] mode = [1] raised TypeError (unhashable type: 'list') from
    Registry.get via FinetuneConfig.validate, so `run` exited 1 with an internal error."""
    from mbdlprune.finetuning.trainer import FinetuneConfig

    for mode in ([1], {"a": 1}):
        with pytest.raises(MbdlError, match="mode"):
            FinetuneConfig.from_dict({"mode": mode, "epochs": 1})
