"""A corpus of hostile input files for mbdlprune.

Threat model: every file is hostile; only the command line is trusted. Each builder in
:data:`CHECKPOINT_CASES` / :data:`SPEC_CASES` writes one case into a folder and returns a
:class:`Case` that says which file to feed to the commands, what the one-line error must
name, and which files the product must never open. The tests in ``test_hostile.py`` run
every command on every case.

Layout of a case folder (``root``)::

    root/PWNED          the marker: created by the payload if any code of the file runs
    root/cwd/           the working directory of the command (relative paths start here)
    root/in/            the hostile file(s)
    root/out/           the (empty) output folder; nothing may appear in it
    root/secret/        files a hostile file points at; they must never be opened

``Assets`` are the valid files the commands need besides the hostile one (a small DEQ model
file, its pruned version, a plain ``.pt``, an operator spec, evaluation and training data).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

SIZE = 16
ARCH = "deq-edsr"
ARCH_ARGS = {"n_feats": 8, "n_blocks": 1, "gamma": 0.5, "alpha": 0.2, "max_iter": 6, "tol": 1e-3}
OP_SPEC = {"kind": "denoise", "image_size": [SIZE, SIZE], "noise_sigma": 0.05, "channels": 2}
POISONED = "prior.head.weight"  # the tensor the NaN/Inf cases poison
SECRET_VALUE = 31337.25  # values of the files hostile specs point at: never echoed in an error
MARKER = "PWNED"


# ------------------------------------------------------------------------------ assets
@dataclass
class Assets:
    """Valid files every command needs besides the hostile one (built once per test module)."""

    dir: Path
    model: Path  # mbdlprune file of the original (deq-edsr, denoise operator recorded)
    pruned: Path  # mbdlprune file pruned from it
    plain: Path  # plain torch state_dict of the original
    op: Path  # operator spec TOML matching the model
    eval: Path  # evaluation images (.npy)
    train: Path  # training images (.npy)
    state: dict[str, Any]  # the original's state dict
    meta: dict[str, Any]  # the original's mbdlprune metadata (as written)


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    out = [np.exp(-((yy - 8 - i) ** 2 + (xx - 8) ** 2) / 20.0) + 0.05 * rng.random((SIZE, SIZE)) for i in range(n)]
    return np.stack(out).astype(np.float32)


def build_assets(folder: Path) -> Assets:
    import torch
    from safetensors import safe_open

    from mbdlprune.api import prune_model
    from mbdlprune.io import save_model
    from mbdlprune.models.user import build_arch
    from mbdlprune.operators import load_operator

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    op = load_operator(dict(OP_SPEC))
    model, spec = build_arch(ARCH, dict(ARCH_ARGS))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(model.state_dict(), folder / "original.pt")
    save_model(folder / "original.safetensors", model, {"arch": spec.to_dict(), "operator": op.spec, "pruning": None})
    res = prune_model(model, spec, op, ratio=0.5, round_to=1)
    save_model(folder / "pruned.safetensors", res.model, res.meta)
    (folder / "op.toml").write_text(
        f'[operator]\nkind = "denoise"\nimage_size = [{SIZE}, {SIZE}]\nnoise_sigma = 0.05\nchannels = 2\n')
    np.save(folder / "eval.npy", _images(2, 0))
    np.save(folder / "train.npy", _images(3, 1))
    with safe_open(str(folder / "original.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["mbdlprune"])
    return Assets(folder, folder / "original.safetensors", folder / "pruned.safetensors", folder / "original.pt",
                  folder / "op.toml", folder / "eval.npy", folder / "train.npy", state, meta)


# ------------------------------------------------------------------------------ cases
@dataclass
class Case:
    id: str
    role: str  # "checkpoint" (given where a checkpoint is read) or "spec" (given as --operator)
    path: Path  # the hostile file
    needle: str  # regex (case-insensitive) the one error line must match: it names the problem
    plain: bool = False  # a checkpoint without mbdlprune metadata: commands pass --arch/--arch-args/--operator
    forbidden: list[Path] = field(default_factory=list)  # files that must never be opened
    secret: str | None = None  # text that must never appear in the error
    description: str = ""
    lenient: bool = False  # a clean success (exit 0) is acceptable too (e.g. an all-one mask)
    meta_only: bool = False  # only the metadata is hostile: a command that reads just the weights may succeed
    checkpoint: Path | None = None  # key-map cases: the checkpoint the map is applied to


class Folder:
    """The case folder layout (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("cwd", "in", "out", "secret"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.marker = root / MARKER
        self.cwd, self.inp, self.out, self.secret = root / "cwd", root / "in", root / "out", root / "secret"


class Evil:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _touch_cmd(f: Folder) -> str:
    return f"touch {f.marker}"


def write_evil_py(f: Folder, where: Path | None = None) -> Path:
    """A factory file that creates the marker when imported and when called."""
    where = where or f.inp
    p = where / "evil.py"
    p.write_text(f"from pathlib import Path\nPath({str(f.marker)!r}).touch()\n"
                 f"def build(**kw):\n    Path({str(f.marker)!r}).touch()\n    import torch\n    return torch.nn.Conv2d(2, 2, 1)\n")
    return p


def write_evil_pkg(f: Folder) -> None:
    """``evil_pkg.mod:build`` importable from the working directory."""
    pkg = f.cwd / "evil_pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text(f"from pathlib import Path\nPath({str(f.marker)!r}).touch()\n")
    (pkg / "mod.py").write_text(f"from pathlib import Path\nPath({str(f.marker)!r}).touch()\n"
                                f"def build(**kw):\n    Path({str(f.marker)!r}).touch()\n")


def write_safetensors_raw(path: Path, header: Any, data: bytes = b"", header_len: int | None = None) -> Path:
    """A safetensors file with a header of our choosing (length prefix, JSON header, data)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def write_model(path: Path, state: dict[str, Any], meta_text: str | None, extra_header: dict | None = None) -> Path:
    """A safetensors file with ``state`` and the raw mbdlprune metadata text ``meta_text``."""
    from safetensors.torch import save_file

    header = {"format": "mbdlprune"}
    if meta_text is not None:
        header["mbdlprune"] = meta_text
    header.update(extra_header or {})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=header)
    return path


def _meta_case(cid: str, mutate: Callable[[dict, Folder], Any], needle: str, description: str,
               forbidden: Callable[[Folder], list[Path]] | None = None, secret: str | None = None):
    """A case: the original's valid state and metadata, with the metadata changed by ``mutate``.

    ``mutate(meta, folder)`` changes the dict in place, or returns a str: the raw metadata text.
    """

    def build(f: Folder, a: Assets) -> Case:
        meta = json.loads(json.dumps(a.meta))
        text = mutate(meta, f)
        if text is None:
            text = json.dumps(meta)
        path = write_model(f.inp / "model.safetensors", a.state, text)
        return Case(cid, "checkpoint", path, needle, forbidden=(forbidden(f) if forbidden else []),
                    secret=secret, description=description, meta_only=True)

    return cid, build


def _set_arch(**arch):
    def mutate(meta, f):
        meta["arch"] = {k: (v(f) if callable(v) else v) for k, v in arch.items()}
    return mutate


def _arch_name_source(name_fn, source):
    def mutate(meta, f):
        meta["arch"]["name"] = name_fn(f)
        meta["arch"]["args"] = {}
        if source is None:
            meta["arch"].pop("source", None)
        else:
            meta["arch"]["source"] = source
    return mutate


def _evil_py_abs(f: Folder) -> str:
    return f"{write_evil_py(f)}:build"


def _evil_py_rel(f: Folder) -> str:
    write_evil_py(f, f.cwd)
    return "evil.py:build"


def _evil_pkg(f: Folder) -> str:
    write_evil_pkg(f)
    return "evil_pkg.mod:build"


def _secret_npy(f: Folder, name: str, arr: np.ndarray) -> Path:
    p = f.secret / name
    np.save(p, arr)
    return p


def _mask_ok(f: Folder) -> Path:
    m = np.zeros(SIZE, dtype=np.float32)
    m[::2] = 1
    return _secret_npy(f, "mask.npy", m)


def _mask_secret(f: Folder) -> Path:
    return _secret_npy(f, "mask.npy", np.full(SIZE, SECRET_VALUE, dtype=np.float32))


def _op(**table):
    def mutate(meta, f):
        meta["operator"] = {k: (v(f) if callable(v) else v) for k, v in table.items()}
    return mutate


def _path_str(fn):
    return lambda f: str(fn(f))


def _secret_files(f: Folder) -> list[Path]:
    return sorted(p for p in f.secret.rglob("*") if p.is_file())


def _meta_key(key, value):
    def mutate(meta, f):
        meta[key] = value
    return mutate


def _meta_del(key):
    def mutate(meta, f):
        meta.pop(key, None)
    return mutate


def _arch_field(key, value):
    def mutate(meta, f):
        meta["arch"][key] = value
    return mutate


def _arch_arg(key, value):
    def mutate(meta, f):
        meta["arch"]["args"][key] = value
    return mutate


def _raw(text):
    return lambda meta, f: text


def _op_string_path(meta, f):
    spec = f.secret / "op.toml"
    spec.write_text('[operator]\nkind = "denoise"\nimage_size = [16, 16]\nnoise_sigma = 0.05\nchannels = 2\n')
    meta["operator"] = str(spec)


def _op_dotdot_mask(meta, f):
    _mask_ok(f)  # root/secret/mask.npy; the command runs in root/cwd
    meta["operator"] = {"kind": "mri", "image_size": [SIZE, SIZE], "mask": "../secret/mask.npy"}


def _op_coil_maps(meta, f):
    _secret_npy(f, "maps.npy", np.full((1, SIZE, SIZE), SECRET_VALUE, dtype=np.float32))
    meta["operator"] = {"kind": "mri", "image_size": [SIZE, SIZE], "acceleration": 4, "coil_maps": str(f.secret / "maps.npy")}


def _op_blur_kernel(meta, f):
    k = np.zeros((3, 3), dtype=np.float32)
    k[1, 1] = SECRET_VALUE
    _secret_npy(f, "kernel.npy", k)
    meta["operator"] = {"kind": "deblur", "image_size": [SIZE, SIZE], "channels": 2, "kernel": str(f.secret / "kernel.npy")}


def _op_inpaint_mask(meta, f):
    m = np.ones((SIZE, SIZE), dtype=np.float32)
    m[::2] = 0
    _secret_npy(f, "pixels.npy", m)
    meta["operator"] = {"kind": "inpaint", "image_size": [SIZE, SIZE], "channels": 2, "mask": str(f.secret / "pixels.npy")}


_MRI = {"kind": "mri", "image_size": [SIZE, SIZE]}

META_CASES = [
    # -- architecture names that would run code
    _meta_case("arch-os-system-nosource", _set_arch(name="os:system", args=lambda f: {"command": _touch_cmd(f)}),
               r"os:system", 'arch {"name": "os:system", "args": {"command": "touch PWNED"}} without "source"'),
    _meta_case("arch-os-system-builtin", _set_arch(name="os:system", args=lambda f: {"command": _touch_cmd(f)}, source="builtin"),
               r"os:system", 'arch os:system with "source": "builtin"'),
    _meta_case("arch-os-system-factory", _set_arch(name="os:system", args=lambda f: {"command": _touch_cmd(f)}, source="factory"),
               r"os:system", 'arch os:system with "source": "factory"'),
    _meta_case("arch-subprocess-getoutput", _set_arch(name="subprocess:getoutput", args=lambda f: {"cmd": _touch_cmd(f)}, source="builtin"),
               r"subprocess", "arch subprocess:getoutput (source builtin)"),
    _meta_case("arch-runpy-run-path", _set_arch(name="runpy:run_path", args=lambda f: {"path_name": str(write_evil_py(f))}),
               r"runpy", "arch runpy:run_path on a python file"),
    _meta_case("arch-evil-py-builtin", _arch_name_source(_evil_py_abs, "builtin"), r"evil", "arch /abs/evil.py:build, source builtin"),
    _meta_case("arch-evil-py-nosource", _arch_name_source(_evil_py_abs, None), r"evil", "arch /abs/evil.py:build, no source"),
    _meta_case("arch-evil-py-factory", _arch_name_source(_evil_py_abs, "factory"), r"evil", "arch /abs/evil.py:build, source factory"),
    _meta_case("arch-evil-py-relative", _arch_name_source(_evil_py_rel, "builtin"), r"evil", "arch evil.py:build in the working directory"),
    _meta_case("arch-evil-pkg-builtin", _arch_name_source(_evil_pkg, "builtin"), r"evil_pkg", "arch evil_pkg.mod:build (cwd on sys.path), source builtin"),
    _meta_case("arch-evil-pkg-nosource", _arch_name_source(_evil_pkg, None), r"evil_pkg", "arch evil_pkg.mod:build, no source"),
    _meta_case("arch-evil-pkg-factory", _arch_name_source(_evil_pkg, "factory"), r"evil_pkg", "arch evil_pkg.mod:build, source factory"),
    # -- model attributes
    _meta_case("model-attrs-forward", _meta_key("model_attrs", {"forward": "os.system"}), r"forward", "model_attrs sets forward"),
    _meta_case("model-attrs-class", _meta_key("model_attrs", {"__class__": "x"}), r"__class__", "model_attrs sets __class__"),
    _meta_case("model-attrs-modules", _meta_key("model_attrs", {"_modules": {}}), r"_modules", "model_attrs sets _modules"),
    _meta_case("model-attrs-prior", _meta_key("model_attrs", {"prior": None}), r"prior", "model_attrs replaces the prior"),
    _meta_case("model-attrs-max-iter", _meta_key("model_attrs", {"max_iter": 10**12, "tol": -1.0}), r"max_iter|tol", "model_attrs sets solver settings"),
    _meta_case("model-attrs-list", _meta_key("model_attrs", [1, 2]), r"model_attrs", "model_attrs is a list"),
    # -- operator specs that name files
    _meta_case("op-mask-abs", _op(**_MRI, mask=_path_str(_mask_ok)), r"mask", "operator mask = /abs/secret/mask.npy (a valid 0/1 mask)",
               _secret_files),
    _meta_case("op-mask-abs-secret", _op(**_MRI, mask=_path_str(_mask_secret)), r"mask", "operator mask = /abs path to a file of 31337.25",
               _secret_files, secret="31337"),
    _meta_case("op-mask-dotdot", _op_dotdot_mask, r"mask", "operator mask = ../secret/mask.npy", _secret_files),
    _meta_case("op-coil-maps-abs", _op_coil_maps, r"coil_maps", "operator coil_maps = /abs/secret/maps.npy", _secret_files, secret="31337"),
    _meta_case("op-blur-kernel-abs", _op_blur_kernel, r"kernel", "deblur kernel = /abs/secret/kernel.npy", _secret_files, secret="31337"),
    _meta_case("op-inpaint-mask-abs", _op_inpaint_mask, r"mask", "inpaint mask = /abs/secret/pixels.npy", _secret_files),
    _meta_case("op-string-path", _op_string_path, r"operator", "operator is a string: the path of a spec file", _secret_files),
    _meta_case("op-list", _meta_key("operator", [1, 2]), r"operator", "operator is a list"),
    _meta_case("op-kind-int", _meta_key("operator", {"kind": 5, "image_size": [SIZE, SIZE]}), r"kind", "operator kind is a number"),
    _meta_case("op-image-size-huge", _meta_key("operator", {"kind": "mri", "image_size": [10**6, 10**6]}), r"image_size",
               "operator image_size [10**6, 10**6]"),
    _meta_case("op-noise-nan", _meta_key("operator", {**OP_SPEC, "noise_sigma": float("nan")}), r"noise_sigma|nan|finite|metadata", "operator noise_sigma NaN"),
    # -- norm_widths
    _meta_case("norm-widths-unknown", _meta_key("norm_widths", {"nope.x": 4}), r"norm.?width|nope", "norm_widths names a missing module"),
    _meta_case("norm-widths-conv", _meta_key("norm_widths", {"prior.head": 4}), r"norm.?width|prior\.head", "norm_widths names a conv layer"),
    _meta_case("norm-widths-root", _meta_key("norm_widths", {"": 10**30}), r"norm.?width", "norm_widths names the model itself, 10**30"),
    _meta_case("norm-widths-string", _meta_key("norm_widths", {"prior.head": "abc"}), r"norm.?width|prior\.head", "norm_widths value a string"),
    _meta_case("norm-widths-list", _meta_key("norm_widths", [1]), r"norm.?width", "norm_widths is a list"),
    # -- architecture arguments
    _meta_case("arch-args-huge-feats", _arch_arg("n_feats", 10**9), r"n_feats", "n_feats = 10**9 (must not allocate)"),
    _meta_case("arch-args-huge-blocks", _arch_arg("n_blocks", 10**9), r"n_blocks", "n_blocks = 10**9 (must not loop)"),
    _meta_case("arch-args-negative", _arch_arg("n_feats", -1), r"n_feats", "n_feats = -1"),
    _meta_case("arch-args-string", _arch_arg("n_feats", "8"), r"n_feats", 'n_feats = "8"'),
    _meta_case("arch-args-nan", _arch_arg("gamma", float("nan")), r"gamma|nan|finite|metadata", "gamma = NaN"),
    _meta_case("arch-args-unknown", _arch_arg("evil", 1), r"evil", "an unknown argument"),
    _meta_case("arch-args-list", _arch_field("args", [1, 2]), r"arg", "args is a list"),
    # -- malformed metadata
    _meta_case("meta-not-json", _raw("{not json"), r"metadata", "metadata is not JSON"),
    _meta_case("meta-list", _raw("[1, 2]"), r"metadata", "metadata is a JSON list"),
    _meta_case("meta-number", _raw("3"), r"metadata", "metadata is a JSON number"),
    _meta_case("meta-null", _raw("null"), r"metadata|architecture", "metadata is JSON null"),
    _meta_case("meta-string", _raw('"deq-edsr"'), r"metadata", "metadata is a JSON string"),
    _meta_case("meta-empty", _raw("{}"), r"arch|metadata", "metadata is {}"),
    _meta_case("meta-deep", _raw("[" * 100_000 + "]" * 100_000), r"metadata", "metadata nested 100000 deep"),
    _meta_case("meta-missing-arch", _meta_del("arch"), r"arch", "no arch key"),
    _meta_case("meta-arch-string", _meta_key("arch", "deq-edsr"), r"arch", "arch is a string"),
    _meta_case("meta-arch-no-name", _meta_key("arch", {"args": {}}), r"arch|name", "arch has no name"),
    _meta_case("meta-arch-name-int", _arch_field("name", 5), r"arch|name", "arch name is a number"),
    _meta_case("meta-arch-version-str", _arch_field("version", "abc"), r"version", "arch version is a string"),
    _meta_case("meta-format-999", _meta_key("format_version", 999), r"version", "format_version 999"),
    _meta_case("meta-format-str", _meta_key("format_version", "1"), r"version", 'format_version "1"'),
    _meta_case("meta-format-nan", _meta_key("format_version", float("nan")), r"version|nan|finite|metadata", "format_version NaN"),
    _meta_case("meta-format-inf", _meta_key("format_version", float("inf")), r"version|inf|finite|metadata", "format_version Infinity"),
]


# -- weights
def _poisoned(value):
    def build(f: Folder, a: Assets) -> Case:
        state = {k: v.clone() for k, v in a.state.items()}
        state[POISONED].view(-1)[3] = value
        path = write_model(f.inp / "model.safetensors", state, json.dumps(a.meta))
        return Case("", "checkpoint", path, POISONED.replace(".", r"\."), description=f"{POISONED} holds {value}")
    return build


def _poisoned_plain(f: Folder, a: Assets) -> Case:
    import torch

    state = {k: v.clone() for k, v in a.state.items()}
    state[POISONED].view(-1)[0] = float("nan")
    torch.save(state, f.inp / "model.pt")
    return Case("", "checkpoint", f.inp / "model.pt", POISONED.replace(".", r"\."), plain=True,
                description=f"plain .pt whose {POISONED} holds NaN")


# -- pickles
def _pickle_zip(suffix: str, nested: bool = False):
    def build(f: Folder, a: Assets) -> Case:
        import torch

        obj = {"state_dict": {**a.state, "evil": Evil(f.marker)}} if nested else {**a.state, "evil": Evil(f.marker)}
        p = f.inp / f"model{suffix}"
        torch.save(obj, p)
        return Case("", "checkpoint", p, r"pickl|code", plain=True,
                    description=f"torch zip {suffix} with a __reduce__ payload" + (" under state_dict" if nested else ""))
    return build


def _pickle_legacy(f: Folder, a: Assets) -> Case:
    import torch

    p = f.inp / "model.pt"
    torch.save({**a.state, "evil": Evil(f.marker)}, p, _use_new_zipfile_serialization=False)
    return Case("", "checkpoint", p, r"pickl|code", plain=True, description="legacy (non-zip) torch file with a payload")


def _pickle_raw(suffix: str):
    def build(f: Folder, a: Assets) -> Case:
        p = f.inp / f"model{suffix}"
        p.write_bytes(pickle.dumps({"state_dict": Evil(f.marker)}, protocol=2))
        return Case("", "checkpoint", p, r"pickl|code|not a readable|safetensors", plain=True,
                    description=f"a plain pickle named {suffix}")
    return build


def _pickle_module(f: Folder, a: Assets) -> Case:
    """A whole pickled module object: the class is looked up by name (here: a class in a file that runs code)."""
    import torch

    p = f.inp / "model.pth"
    torch.save(Evil(f.marker), p)
    return Case("", "checkpoint", p, r"pickl|code", plain=True, description="torch.save of a payload object (no dict)")


# -- broken files
def _bytes_case(name: str, data: Callable[[Assets], bytes], needle: str, description: str):
    def build(f: Folder, a: Assets) -> Case:
        p = f.inp / name
        p.write_bytes(data(a))
        return Case("", "checkpoint", p, needle, plain=True, description=description)
    return build


def _random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _zip_not_torch(a: Assets) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "not a torch file")
    return buf.getvalue()


def _st_header(name: str, header: Any, needle: str, description: str, data: bytes = b"", header_len: int | None = None,
               plain: bool = True):
    def build(f: Folder, a: Assets) -> Case:
        h = header(a) if callable(header) else header
        p = write_safetensors_raw(f.inp / name, h, data, header_len)
        return Case("", "checkpoint", p, needle, plain=plain, description=description)
    return build


def _dir_case(name: str):
    def build(f: Folder, a: Assets) -> Case:
        p = f.inp / name
        p.mkdir()
        return Case("", "checkpoint", p, name.replace(".", r"\."), plain=True, description=f"a directory named {name}")
    return build


_CORRUPT = r"truncated|corrupt|not a readable|empty|damaged|invalid"
_HUGE_TENSOR = {"w": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 4 * 10**12]}}

FILE_CASES = [
    ("weights-nan", _poisoned(float("nan"))),
    ("weights-inf", _poisoned(float("inf"))),
    ("weights-nan-plain-pt", _poisoned_plain),
    ("pickle-zip-pt", _pickle_zip(".pt")),
    ("pickle-zip-pth", _pickle_zip(".pth")),
    ("pickle-zip-ckpt", _pickle_zip(".ckpt")),
    ("pickle-zip-bin", _pickle_zip(".bin")),
    ("pickle-zip-tar", _pickle_zip(".tar")),
    ("pickle-zip-nested-state-dict", _pickle_zip(".pt", nested=True)),
    ("pickle-legacy-pt", _pickle_legacy),
    ("pickle-raw-pt", _pickle_raw(".pt")),
    ("pickle-raw-safetensors", _pickle_raw(".safetensors")),
    ("pickle-object-pth", _pickle_module),
    ("st-truncated-header", _bytes_case("model.safetensors", lambda a: a.model.read_bytes()[:40], _CORRUPT, "safetensors cut mid-header")),
    ("st-truncated-data", _bytes_case("model.safetensors", lambda a: a.model.read_bytes()[:-100], _CORRUPT, "safetensors cut mid-data")),
    ("pt-truncated", _bytes_case("model.pt", lambda a: a.plain.read_bytes()[: len(a.plain.read_bytes()) // 2], _CORRUPT, ".pt zip cut in half")),
    ("pt-empty", _bytes_case("model.pt", lambda a: b"", _CORRUPT, "empty .pt")),
    ("st-empty", _bytes_case("model.safetensors", lambda a: b"", _CORRUPT, "empty .safetensors")),
    ("st-random", _bytes_case("model.safetensors", lambda a: _random_bytes(4096, 1), _CORRUPT, "random bytes .safetensors")),
    ("pt-random", _bytes_case("model.pt", lambda a: _random_bytes(4096, 2), _CORRUPT, "random bytes .pt")),
    ("pt-zip-not-torch", _bytes_case("model.pt", _zip_not_torch, _CORRUPT, "a zip that is not a torch file")),
    ("st-huge-header-len", _st_header("model.safetensors", b"{}", _CORRUPT, "header length 2**62", header_len=2**62)),
    ("st-header-len-beyond-file", _st_header("model.safetensors", b'{"a": 1}', _CORRUPT, "header length 10**6 in a tiny file", header_len=10**6)),
    ("st-tensor-beyond-file", _st_header("model.safetensors", _HUGE_TENSOR, _CORRUPT, "a 10**12-element tensor in a tiny file")),
    ("st-tensor-beyond-file-meta", _st_header("model.safetensors",
                                              lambda a: {**_HUGE_TENSOR, "__metadata__": {"format": "mbdlprune", "mbdlprune": json.dumps(a.meta)}},
                                              _CORRUPT, "a 10**12-element tensor, valid mbdlprune metadata", plain=False)),
    ("st-header-not-json", _st_header("model.safetensors", b"not json at all", _CORRUPT, "header is not JSON")),
    ("st-header-list", _st_header("model.safetensors", b"[1, 2, 3]", _CORRUPT, "header is a JSON list")),
    ("st-metadata-not-str", _st_header("model.safetensors", {"__metadata__": {"format": 5}}, _CORRUPT + r"|metadata|weights", "metadata values not strings")),
    ("dir-model-pt", _dir_case("model.pt")),
    ("dir-model-safetensors", _dir_case("model.safetensors")),
]


def _with_id(cid: str, build: Callable[[Folder, Assets], Case]):
    def wrapped(f: Folder, a: Assets) -> Case:
        c = build(f, a)
        c.id = cid
        return c
    return wrapped


CHECKPOINT_CASES: dict[str, Callable[[Folder, Assets], Case]] = {
    **{cid: build for cid, build in META_CASES},
    **{cid: _with_id(cid, build) for cid, build in FILE_CASES},
}


# ------------------------------------------------------------------------------ operator spec files
def _spec(name: str, content: Callable[[Folder], bytes | str], needle: str, description: str, lenient: bool = False):
    def build(f: Folder, a: Assets) -> Case:
        p = f.inp / name
        c = content(f)
        if isinstance(c, str):
            p.write_text(c)
        else:
            p.write_bytes(c)
        return Case(name, "spec", p, needle, description=description, lenient=lenient)
    return build


def _mri_toml(extra: str, f: Folder | None = None) -> str:
    return f'[operator]\nkind = "mri"\nimage_size = [{SIZE}, {SIZE}]\n{extra}\n'


def _mask_file(f: Folder, value: float) -> str:
    np.save(f.inp / "mask.npy", np.full(SIZE, value, dtype=np.float32))
    return _mri_toml('mask = "mask.npy"')


def _spec_dir(f: Folder, a: Assets) -> Case:
    p = f.inp / "op.toml"
    p.mkdir()
    return Case("spec-dir", "spec", p, r"op\.toml", description="--operator names a directory")


_SPEC_BUILDERS: dict[str, Callable[[Folder, Assets], Case]] = {
    "spec-binary": _spec("op.toml", lambda f: _random_bytes(2048, 3), r"op\.toml", "random bytes as the spec"),
    "spec-binary-json": _spec("op.json", lambda f: b"\xff\xfe\x00" + _random_bytes(512, 4), r"op\.json", "binary .json spec"),
    "spec-invalid-toml": _spec("op.toml", lambda f: "[operator\nkind = mri\n", r"toml", "invalid TOML"),
    "spec-invalid-json": _spec("op.json", lambda f: '{"operator": ', r"json", "invalid JSON"),
    "spec-json-list": _spec("op.json", lambda f: "[1, 2]", r"op\.json|operator", "JSON spec that is a list"),
    "spec-deep-toml": _spec("op.toml", lambda f: "a = " + "[" * 50_000 + "]" * 50_000 + "\n", r"op\.toml|toml|nest", "TOML nested 50000 deep"),
    "spec-deep-json": _spec("op.json", lambda f: "[" * 100_000 + "]" * 100_000, r"op\.json|json|nest", "JSON nested 100000 deep"),
    "spec-accel-inf": _spec("op.toml", lambda f: _mri_toml("acceleration = inf"), r"acceleration", "acceleration = inf"),
    "spec-accel-nan": _spec("op.toml", lambda f: _mri_toml("acceleration = nan"), r"acceleration", "acceleration = nan"),
    "spec-noise-nan": _spec("op.toml", lambda f: _mri_toml("noise_sigma = nan"), r"noise_sigma", "noise_sigma = nan"),
    "spec-noise-inf": _spec("op.toml", lambda f: _mri_toml("noise_sigma = inf"), r"noise_sigma", "noise_sigma = inf"),
    "spec-center-nan": _spec("op.toml", lambda f: _mri_toml("center_fraction = nan"), r"center_fraction", "center_fraction = nan"),
    "spec-mask-zeros": _spec("op.toml", lambda f: _mask_file(f, 0.0), r"mask", "an all-zero mask file"),
    "spec-mask-ones": _spec("op.toml", lambda f: _mask_file(f, 1.0), r"mask", "an all-one mask file (fully sampled)", lenient=True),
    "spec-image-huge": _spec("op.toml", lambda f: '[operator]\nkind = "mri"\nimage_size = [1000000, 1000000]\n', r"image_size",
                             "image_size = [10**6, 10**6]"),
    "spec-image-huge-denoise": _spec("op.toml", lambda f: '[operator]\nkind = "denoise"\nimage_size = [1000000, 1000000]\nchannels = 2\n',
                                     r"image_size", "denoise image_size = [10**6, 10**6]"),
    "spec-coils-huge": _spec("op.toml", lambda f: _mri_toml("coils = 1000000000"), r"coils", "coils = 10**9"),
    "spec-dir": _spec_dir,
}
SPEC_CASES: dict[str, Callable[[Folder, Assets], Case]] = {cid: _with_id(cid, b) for cid, b in _SPEC_BUILDERS.items()}


# ------------------------------------------------------------------------------ running commands on a case
COMMANDS = ("inspect", "prune", "convert", "bench", "finetune", "run")
BENCH_FAST = ["--device", "cpu", "--warmup", "0", "--repeats", "1", "--quiet"]
TIME_LIMIT_S = 10  # a hostile file must be refused quickly (no huge loops or allocations)
MEMORY_HEADROOM = 6 << 30  # address space allowed on top of the test process's own during a command


def _toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def write_pipeline(path: Path, checkpoint: Path, out: Path, a: Assets, *, plain: bool, operator: Path | None,
                   key_map: Path | None = None) -> Path:
    lines = ["[model]", f"checkpoint = {json.dumps(str(checkpoint))}"]
    if plain:
        lines += [f"arch = {json.dumps(ARCH)}", f"arch_args = {_toml_value(ARCH_ARGS)}"]
    if operator is not None:
        lines.append(f"operator = {json.dumps(str(operator))}")
    if key_map is not None:
        lines.append(f"key_map = {json.dumps(str(key_map))}")
    lines += ["", "[prune]", "ratio = 0.5", "round_to = 1", "", "[bench]", f"data = {json.dumps(str(a.eval))}",
              "warmup = 0", "repeats = 1", 'device = "cpu"', "", "[output]", f"dir = {json.dumps(str(out))}", ""]
    path.write_text("\n".join(lines))
    return path


def command_args(cmd: str, case: Case, a: Assets, f: Folder) -> list[str]:
    """The command line that feeds ``case.path`` to ``cmd`` (all other inputs valid)."""
    x = str(case.path)
    arch = ["--arch", ARCH, "--arch-args", json.dumps(ARCH_ARGS)]
    out = f.out
    if case.role == "checkpoint":
        extra = [*arch, "--operator", str(a.op)] if case.plain else []
        table = {
            "inspect": ["inspect", x, *extra],
            "prune": ["prune", x, *extra, "--ratio", "0.5", "--round-to", "1", "-o", str(out / "p.safetensors")],
            "convert": ["convert", x, *(extra or ["--arch", ARCH]), "-o", str(out / "c.safetensors")],
            "bench": ["bench", str(a.model), x, "--data", str(a.eval), *BENCH_FAST],
            "finetune": ["finetune", str(a.pruned), "--teacher", x, "--mode", "distill", "--data", str(a.train), "--epochs", "1",
                         "--val-fraction", "0", "--device", "cpu", "-o", str(out / "f.safetensors"), "--json"],
            "sweep": ["sweep", x, *extra, "--ratios", "0.5", "--round-to", "1", "--eval-data", str(a.eval), "--out-dir", str(out),
                      *BENCH_FAST],
        }
        if cmd == "run":
            p = write_pipeline(f.root / "pipeline.toml", case.path, out, a, plain=case.plain, operator=a.op if case.plain else None)
            return ["run", str(p), "--quiet"]
        return table[cmd]
    table = {
        "inspect": ["inspect", str(a.model), "--operator", x],
        "prune": ["prune", str(a.plain), *arch, "--operator", x, "--ratio", "0.5", "--round-to", "1", "-o", str(out / "p.safetensors")],
        "convert": ["convert", str(a.plain), *arch, "--operator", x, "-o", str(out / "c.safetensors")],
        "bench": ["bench", str(a.model), str(a.pruned), "--operator", x, "--data", str(a.eval), *BENCH_FAST],
        "finetune": ["finetune", str(a.pruned), "--operator", x, "--mode", "supervised", "--data", str(a.train), "--epochs", "1",
                     "--val-fraction", "0", "--device", "cpu", "-o", str(out / "f.safetensors"), "--json"],
    }
    if case.role == "pipeline":
        return ["run", x, "--quiet"]
    if case.role == "data":
        if cmd == "run":
            lines = ["[model]", f"checkpoint = {json.dumps(str(a.model))}", "", "[prune]", "ratio = 0.5", "round_to = 1", "",
                     "[bench]", f"data = {json.dumps(x)}", "warmup = 0", "repeats = 1", 'device = "cpu"', "", "[output]",
                     f"dir = {json.dumps(str(out))}", ""]
            p = f.root / "pipeline.toml"
            p.write_text("\n".join(lines))
            return ["run", str(p), "--quiet"]
        if cmd == "finetune":
            return ["finetune", str(a.pruned), "--mode", "supervised", "--data", x, "--epochs", "1", "--val-fraction", "0",
                    "--device", "cpu", "-o", str(out / "f.safetensors"), "--json"]
        return ["bench", str(a.model), str(a.pruned), "--data", x, *BENCH_FAST]
    if case.role == "keymap":
        if cmd == "run":
            p = write_pipeline(f.root / "pipeline.toml", case.checkpoint, out, a, plain=True, operator=a.op, key_map=case.path)
            return ["run", str(p), "--quiet"]
        return ["bench", str(case.checkpoint), str(a.pruned), "--key-map", x, "--data", str(a.eval), *BENCH_FAST]
    if cmd == "run":
        p = write_pipeline(f.root / "pipeline.toml", a.plain, out, a, plain=True, operator=case.path)
        return ["run", str(p), "--quiet"]
    return table[cmd]


# -- observing a command: files opened, processes spawned, time and memory
_WATCH: dict[str, list] | None = None


def _audit(event: str, args: tuple) -> None:
    w = _WATCH
    if w is None:
        return
    try:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            w["opened"].append(os.fsdecode(args[0]))
        elif event == "os.system" or (event in ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.spawn")
                                      and (MARKER in repr(args) or "evil" in repr(args))):
            w["spawned"].append(f"{event}{args!r}"[:200])
        elif event == "import" and args and isinstance(args[0], str) and args[0].startswith(("evil", "mbdlprune_user_")):
            w["imported"].append(args[0])
    except Exception:  # an audit hook must never raise
        pass


_HOOKED = False
_COMMAND = None


def _install_hook() -> None:
    global _HOOKED
    if not _HOOKED:
        import sys

        sys.addaudithook(_audit)
        _HOOKED = True


class CommandTimeout(BaseException):
    """Raised by the alarm: a BaseException so the CLI's error handler does not swallow it."""


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Outcome:
    args: list[str]
    exit_code: int | None
    stdout: str
    stderr: str
    exception: BaseException | None
    seconds: float
    opened: list[str]
    spawned: list[str]
    imported: list[str]
    timed_out: bool = False


def invoke(args: list[str], time_limit: float = TIME_LIMIT_S) -> Outcome:
    """Run the CLI in this process with an alarm and an address-space limit, watching file opens."""
    import resource
    import signal
    import sys
    import time

    import typer.main
    import typer.testing
    from typer.testing import CliRunner

    from mbdlprune.cli import app

    global _WATCH, _COMMAND
    if _COMMAND is None:  # building the click command from the Typer app is 2/3 of a call's time: once
        _COMMAND = typer.main.get_command(app)
    built = getattr(typer.testing, "_get_command", None)
    if built is not None:
        typer.testing._get_command = lambda _app: _COMMAND
    _install_hook()
    watch = {"opened": [], "spawned": [], "imported": []}

    def on_alarm(signum, frame):
        raise CommandTimeout()

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    timed_out = False
    t0 = time.perf_counter()
    modules_before = set(sys.modules)
    try:
        signal.setitimer(signal.ITIMER_REAL, time_limit)
        _WATCH = watch
        try:
            r = CliRunner().invoke(app, [str(x) for x in args])
            code, out, err, exc = r.exit_code, r.stdout, r.stderr, r.exception
        except CommandTimeout as e:
            timed_out, code, out, err, exc = True, None, "", "", e
        finally:
            _WATCH = None
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        if built is not None:
            typer.testing._get_command = built
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, old_handler)
        for name in set(sys.modules) - modules_before:  # forget modules a hostile file got imported
            if name.startswith(("evil", "mbdlprune_user_")):
                del sys.modules[name]
    if isinstance(exc, SystemExit):
        exc = None
    return Outcome(list(map(str, args)), code, out, err, exc, time.perf_counter() - t0,
                   watch["opened"], watch["spawned"], watch["imported"], timed_out)


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def problems(case: Case, o: Outcome, f: Folder, inputs_before: dict, out_before: dict) -> list[str]:
    """Everything wrong with how the command handled the hostile case (empty: handled correctly)."""
    bad: list[str] = []
    import re

    if f.marker.exists():
        bad.append("marker created: code from the file ran")
    if o.spawned:
        bad.append(f"spawned a process: {o.spawned[0]}")
    if o.imported:
        bad.append(f"imported {o.imported[0]}")
    forbidden = {str(p.resolve()) for p in case.forbidden}
    opened = sorted({p for p in o.opened if str(Path(p).resolve()) in forbidden})
    if opened:
        bad.append(f"opened a file the input names: {opened[0]}")
    if o.timed_out:
        bad.append(f"still running after {TIME_LIMIT_S} s")
    if o.exception is not None and not o.timed_out:
        bad.append(f"exception escaped: {type(o.exception).__name__}: {str(o.exception)[:100]}")
    lines = o.stderr.strip().splitlines()
    first = lines[0] if lines else ""
    # the teacher of finetune contributes only its weights: hostile metadata there may be ignored
    lenient = case.lenient or (case.meta_only and o.args[0] == "finetune")
    ok_codes = (0, 2) if lenient else (2,)
    if o.exit_code not in ok_codes and not o.timed_out:
        bad.append(f"exit {o.exit_code} (want 2)")
    if o.exit_code != 0 and not o.timed_out:
        if len(lines) != 1:
            bad.append(f"stderr has {len(lines)} lines")
        if not first.startswith("error:"):
            bad.append("stderr does not start with 'error:'")
        elif o.exit_code == 2 and not re.search(case.needle, first, re.I):
            bad.append(f"error does not name the problem (/{case.needle}/)")
        elif " — " not in first:
            bad.append("error names no fix")
    if "Traceback" in o.stderr or "Traceback" in o.stdout:
        bad.append("traceback printed")
    if case.secret and (case.secret in o.stderr or case.secret in o.stdout):
        bad.append("error echoes the content of a file the input names")
    out_after = tree(f.out)
    new = sorted(set(out_after) - set(out_before))
    if new and o.exit_code != 0:
        bad.append(f"left {new[0]} in the output folder" + (f" (+{len(new) - 1})" if len(new) > 1 else ""))
    tmp = sorted(str(p.relative_to(f.root)) for p in f.root.rglob("*.tmp"))
    if tmp:
        bad.append(f"left temp file {tmp[0]}")
    changed = [k for k, v in inputs_before.items() if not Path(k).exists() or (v is not None and Path(k).read_bytes() != v)]
    if changed:
        bad.append(f"changed an input: {changed[0]}")
    return bad


def summary(case: Case, o: Outcome, f: Folder, bad: list[str]) -> str:
    """One line for the report: the command, what it did, and what is wrong."""
    first = (o.stderr.strip().splitlines() or [""])[0][:160]
    new = sorted(set(tree(f.out)))
    return (f"{case.id} x {o.args[0]}: exit {o.exit_code}, {o.seconds:.1f} s, stderr[0]={first!r}, "
            f"marker={'YES' if f.marker.exists() else 'no'}, out={new or 'clean'} :: " + "; ".join(bad))


def run_case(builders: dict, cid: str, cmd: str, assets: Assets, root: Path, monkeypatch) -> tuple[list[str], str]:
    """Build case ``cid`` in ``root``, run ``cmd`` on it; returns (problems, summary line)."""
    f = Folder(root)
    case = builders[cid](f, assets)
    args = command_args(cmd, case, assets, f)
    inputs_before = {str(p): (None if p.is_dir() else p.read_bytes()) for p in
                     [*f.inp.rglob("*"), *f.secret.rglob("*"), *f.cwd.rglob("*"), *assets.dir.iterdir()]}
    out_before = tree(f.out)
    monkeypatch.chdir(f.cwd)
    monkeypatch.syspath_prepend(str(f.cwd))  # as `python -m mbdlprune.cli` run from that folder would
    o = invoke(args)
    monkeypatch.undo()
    bad = problems(case, o, f, inputs_before, out_before)
    return bad, summary(case, o, f, bad)


# ------------------------------------------------------------------------------ valid inputs (the harness is not vacuous)
def _good(kind: str):
    def build(f: Folder, a: Assets) -> Case:
        import shutil

        src = {"model": a.model, "plain": a.plain, "spec": a.op}[kind]
        p = f.inp / src.name
        shutil.copyfile(src, p)
        return Case(f"good-{kind}", "spec" if kind == "spec" else "checkpoint", p, r".", plain=kind == "plain")
    return build


GOOD_CASES: dict[str, Callable[[Folder, Assets], Case]] = {f"good-{k}": _good(k) for k in ("model", "plain", "spec")}
#: what each command writes into the output folder when it succeeds
OUTPUTS = {"prune": ["p.safetensors"], "convert": ["c.safetensors"], "finetune": ["f.safetensors"], "sweep": ["sweep.json"],
           "run": ["pruned.safetensors", "report.json"], "inspect": [], "bench": []}


# ------------------------------------------------------------------------------ pipeline files (given to `run`)
def _pipeline_case(cid: str, body: Callable[[Folder, Assets], str], needle: str, description: str):
    """A pipeline file whose [model]/[prune]/[bench]/[output] are valid unless ``body`` says otherwise.

    ``body(f, a)`` returns the TOML text; ``{out}``, ``{eval}``, ``{plain}``, ``{op}`` are filled in.
    """

    def build(f: Folder, a: Assets) -> Case:
        p = f.inp / "pipeline.toml"
        text = body(f, a)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text.format(out=json.dumps(str(f.out)), eval=json.dumps(str(a.eval)), plain=json.dumps(str(a.plain)),
                                     op=json.dumps(str(a.op)), args=_toml_value(ARCH_ARGS)))
        return Case(cid, "pipeline", p, needle, description=description)

    return cid, build


_PIPE_TAIL = '\n[prune]\nratio = 0.5\nround_to = 1\n\n[bench]\ndata = {eval}\nwarmup = 0\nrepeats = 1\ndevice = "cpu"\n\n[output]\ndir = {out}\n'


def _pipe_model(**model) -> Callable[[Folder, Assets], str]:
    def body(f: Folder, a: Assets) -> str:
        lines = ["[model]"]
        for k, v in model.items():
            v = v(f, a) if callable(v) else v
            lines.append(f"{k} = {v}")
        return "\n".join(lines) + "\n" + _PIPE_TAIL
    return body


def _q(s: str) -> str:
    return json.dumps(s).replace("{", "{{").replace("}", "}}")


def _pipe_evil_py(f: Folder, a: Assets) -> str:
    write_evil_py(f)
    return '"evil.py:build"'


def _pipe_evil_py_abs(f: Folder, a: Assets) -> str:
    return _q(f"{write_evil_py(f)}:build")


def _pipe_evil_pkg(f: Folder, a: Assets) -> str:
    write_evil_pkg(f)
    return '"evil_pkg.mod:build"'


def _pipe_pickle(f: Folder, a: Assets) -> str:
    import torch

    p = f.inp / "model.pt"
    torch.save({**a.state, "evil": Evil(f.marker)}, p)
    return _q(str(p))


def _pipe_redos_checkpoint(f: Folder, a: Assets) -> str:
    import torch

    p = f.inp / "model.pt"
    torch.save({**a.state, "a" * 40 + "!": a.state["gamma"].clone()}, p)
    return _q(str(p))


def _pipe_redos_map(f: Folder, a: Assets) -> str:
    p = f.inp / "km.toml"
    p.write_text("[key_map]\ndrop = ['^(a+)+$']\n")
    return _q(str(p))


PIPELINE_CASES = dict([
    _pipeline_case("pipe-arch-evil-py", _pipe_model(checkpoint="{plain}", arch=_pipe_evil_py, arch_args="{args}", operator="{op}"),
                   r"evil", "[model] arch = evil.py:build next to the pipeline, no --arch"),
    _pipeline_case("pipe-arch-evil-py-abs", _pipe_model(checkpoint="{plain}", arch=_pipe_evil_py_abs, operator="{op}"),
                   r"evil", "[model] arch = /abs/evil.py:build, no --arch"),
    _pipeline_case("pipe-arch-evil-pkg", _pipe_model(checkpoint="{plain}", arch=_pipe_evil_pkg, operator="{op}"),
                   r"evil_pkg", "[model] arch = evil_pkg.mod:build (cwd on sys.path), no --arch"),
    _pipeline_case("pipe-arch-os-system", _pipe_model(checkpoint="{plain}", arch='"os:system"',
                                                      arch_args=lambda f, a: "{{command = " + _q(_touch_cmd(f)) + "}}", operator="{op}"),
                   r"os:system", "[model] arch = os:system with a command"),
    _pipeline_case("pipe-unsafe-pickle", _pipe_model(checkpoint=_pipe_pickle, arch=f'"{ARCH}"', arch_args="{args}", operator="{op}",
                                                     unsafe_pickle="true"),
                   r"unsafe_pickle|pickl", "[model] unsafe_pickle = true on a pickle payload"),
    _pipeline_case("pipe-key-map-redos", _pipe_model(checkpoint=_pipe_redos_checkpoint, arch=f'"{ARCH}"', arch_args="{args}",
                                                     operator="{op}", key_map=_pipe_redos_map),
                   r"key.?map|km\.toml|aaaa", "[model] key_map with a catastrophic-backtracking regex and a 41-character key"),
    _pipeline_case("pipe-binary", lambda f, a: _random_bytes(2048, 5), r"pipeline\.toml", "random bytes as the pipeline"),
    _pipeline_case("pipe-deep", lambda f, a: "a = " + "[" * 50_000 + "]" * 50_000 + "\n", r"pipeline\.toml|toml|nest",
                   "TOML nested 50000 deep"),
    _pipeline_case("pipe-output-is-a-file",
                   lambda f, a: (f.inp / "afile").write_text("keep") and
                   "[model]\ncheckpoint = {plain}\narch = \"deq-edsr\"\narch_args = {args}\noperator = {op}\n"
                   + _PIPE_TAIL.replace("dir = {out}", "dir = " + _q(str(f.inp / "afile"))),
                   r"afile|dir|folder", "[output] dir names an existing file"),
    _pipeline_case("pipe-operator-nan", lambda f, a: "[model]\ncheckpoint = {plain}\narch = \"deq-edsr\"\narch_args = {args}\n"
                   "\n[operator]\nkind = \"denoise\"\nimage_size = [16, 16]\nchannels = 2\nnoise_sigma = nan\n" + _PIPE_TAIL,
                   r"noise_sigma", "inline [operator] noise_sigma = nan"),
    _pipeline_case("pipe-finetune-mode-list", lambda f, a: "[model]\ncheckpoint = {plain}\narch = \"deq-edsr\"\narch_args = {args}\n"
                   "operator = {op}\n\n[finetune]\nmode = [1]\ndata = {eval}\nepochs = 1\n" + _PIPE_TAIL, r"mode",
                   "[finetune] mode = [1] (found by the pipeline fuzzer)"),
    _pipeline_case("pipe-ratio-nan", lambda f, a: "[model]\ncheckpoint = {plain}\narch = \"deq-edsr\"\narch_args = {args}\noperator = {op}\n"
                   + _PIPE_TAIL.replace("ratio = 0.5", "ratio = nan"), r"ratio", "[prune] ratio = nan"),
])


# ------------------------------------------------------------------------------ key maps (given as --key-map to bench)
def _keymap_case(cid: str, text: str | bytes, needle: str, description: str, long_key: bool = False):
    def build(f: Folder, a: Assets) -> Case:
        import torch

        km = f.inp / "km.toml"
        km.write_bytes(text if isinstance(text, bytes) else text.encode())
        ckpt = f.inp / "model.pt"
        torch.save({**a.state, **({"a" * 40 + "!": a.state["gamma"].clone()} if long_key else {})}, ckpt)
        c = Case(cid, "keymap", km, needle, description=description)
        c.checkpoint = ckpt
        return c

    return cid, build


KEYMAP_CASES = dict([
    _keymap_case("km-redos", "[key_map]\ndrop = ['^(a+)+$']\n", r"key.?map|km\.toml|aaaa",
                 "drop = ['^(a+)+$'] on a checkpoint with the key 'a' * 40 + '!'", long_key=True),
    _keymap_case("km-redos-rename", "[key_map]\nrename = [['^(a|aa)+$', 'x']]\n", r"key.?map|km\.toml|aaaa",
                 "rename ['^(a|aa)+$'] on a checkpoint with the key 'a' * 40 + '!'", long_key=True),
    _keymap_case("km-bad-regex", "[key_map]\ndrop = ['(']\n", r"regex|km\.toml|key.?map", "an invalid regex"),
    _keymap_case("km-bad-group", "[key_map]\nrename = [['^prior', '\\\\9']]\n", r"group|km\.toml|key.?map", "a replacement naming group 9"),
    _keymap_case("km-collide", "[key_map]\nrename = [['^prior\\.head\\.weight$', 'gamma']]\n", r"gamma|both|km\.toml|key.?map",
                 "two keys renamed to one name"),
    _keymap_case("km-binary", _random_bytes(1024, 6), r"km\.toml|key.?map", "random bytes as the key map"),
    _keymap_case("km-deep", "[key_map]\ndrop = " + "[" * 50_000 + "]" * 50_000 + "\n", r"km\.toml|key.?map|nest", "nested 50000 deep"),
    _keymap_case("km-rules-huge", "[key_map]\ndrop = [" + ", ".join(["'x'"] * 100_000) + "]\n", r"rules|km\.toml|key.?map",
                 "100000 rules"),
    _keymap_case("km-not-table", "key_map = 5\n", r"key.?map|km\.toml", "key_map is a number"),
])


#: case id -> (builder, the commands it is fed to)
def all_cases() -> dict[str, tuple[Callable[[Folder, Assets], Case], tuple[str, ...]]]:
    out = {cid: (b, (*COMMANDS, "sweep")) for cid, b in CHECKPOINT_CASES.items()}
    out.update({cid: (b, COMMANDS) for cid, b in SPEC_CASES.items()})
    out.update({cid: (b, ("run",)) for cid, b in PIPELINE_CASES.items()})
    out.update({cid: (b, ("bench", "run")) for cid, b in KEYMAP_CASES.items()})
    return out


ALL_CASES = all_cases()
BUILDERS = {cid: b for cid, (b, _) in ALL_CASES.items()}


# ------------------------------------------------------------------------------ data files (given to --data / [bench] data)
def _data_case(cid: str, write: Callable[[Folder, Path], Any], needle: str, description: str, name: str = "data.npy",
               secret: str | None = None):
    def build(f: Folder, a: Assets) -> Case:
        p = f.inp / name
        write(f, p)
        return Case(cid, "data", p, needle, forbidden=_secret_files(f), secret=secret, description=description)

    return cid, build


def _npy_object(f: Folder, p: Path) -> None:
    np.save(p, np.array([Evil(f.marker), 1], dtype=object), allow_pickle=True)


def _npz_object(f: Folder, p: Path) -> None:
    np.savez(p, images=np.array([Evil(f.marker)], dtype=object))


def _npy_truncated(f: Folder, p: Path) -> None:
    np.save(p, _images(3, 0))
    p.write_bytes(p.read_bytes()[:200])


def _npy_huge_header(f: Folder, p: Path) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }"
    header = header + " " * (118 - len(header)) + "\n"
    p.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\x00" * 64)


def _h5_external_link(f: Folder, p: Path) -> None:
    import h5py

    secret = f.secret / "other.h5"
    with h5py.File(secret, "w") as h:
        h["images"] = np.full((2, SIZE, SIZE), SECRET_VALUE, np.float32)
    with h5py.File(p, "w") as h:
        h["images"] = h5py.ExternalLink(str(secret), "images")


def _h5_external_dataset(f: Folder, p: Path) -> None:
    import h5py

    raw = f.secret / "raw.bin"
    raw.write_bytes(np.full((2, SIZE, SIZE), SECRET_VALUE, np.float32).tobytes())
    with h5py.File(p, "w") as h:
        h.create_dataset("images", shape=(2, SIZE, SIZE), dtype="<f4", external=[(str(raw), 0, h5py.h5f.UNLIMITED)])


def _nii_huge(f: Folder, p: Path) -> None:
    import nibabel

    nibabel.save(nibabel.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(p))
    raw = bytearray(p.read_bytes())
    raw[40:48] = struct.pack("<4h", 3, 30000, 30000, 30000)  # dim[0..3]: the header claims 2.7e13 voxels; the file holds 64
    p.write_bytes(bytes(raw))


def _write(data: bytes) -> Callable[[Folder, Path], None]:
    return lambda f, p: p.write_bytes(data)


DATA_CASES = dict([
    _data_case("data-npy-object", _npy_object, r"data\.npy|pickl|object|numbers", "a .npy of objects (a pickle payload)"),
    _data_case("data-npz-object", _npz_object, r"data\.npz|pickl|object|numbers", "an .npz whose array is a pickle payload",
               name="data.npz"),
    _data_case("data-npy-truncated", _npy_truncated, r"data\.npy", "a .npy cut short"),
    _data_case("data-npy-huge-header", _npy_huge_header, r"data\.npy", "a .npy header claiming 10**12 floats"),
    _data_case("data-npy-empty", _write(b""), r"data\.npy", "an empty .npy"),
    _data_case("data-npy-random", _write(_random_bytes(4096, 7)), r"data\.npy", "random bytes named .npy"),
    _data_case("data-h5-external-link", _h5_external_link, r"data\.h5|link|other", "an HDF5 external link to a file elsewhere",
               name="data.h5", secret="31337"),
    _data_case("data-h5-external-dataset", _h5_external_dataset, r"data\.h5|external", "an HDF5 dataset stored in a raw file elsewhere",
               name="data.h5", secret="31337"),
    _data_case("data-h5-random", _write(_random_bytes(4096, 8)), r"data\.h5", "random bytes named .h5", name="data.h5"),
    _data_case("data-nii-huge", _nii_huge, r"data\.nii", "a NIfTI header claiming 2.7e13 voxels", name="data.nii"),
    _data_case("data-niigz-random", _write(_random_bytes(4096, 9)), r"data\.nii\.gz", "random bytes named .nii.gz", name="data.nii.gz"),
    _data_case("data-npy-nan", lambda f, p: np.save(p, np.full((2, SIZE, SIZE), np.nan, np.float32)), r"data\.npy|nan|finite",
               "images that are all NaN"),
])
ALL_CASES.update({cid: (b, ("bench", "finetune", "run")) for cid, b in DATA_CASES.items()})
BUILDERS.update(DATA_CASES)
