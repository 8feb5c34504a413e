"""The pretrained example models and data that ship inside the package (``mbdlprune/examples_data``).

``example_path("deq")`` is the DEQ checkpoint, ``example_path("eval")`` the held-out evaluation
slices, and so on; ``list_examples()`` describes every entry. Nothing here imports torch: the
metadata of a checkpoint is read straight from its safetensors header.

The files were written by ``examples/train_examples.py``; ``examples_data/PROVENANCE.md`` names
the data sources, licences, training command and the scores the tests assert.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import MbdlError

PACKAGE_DIR = "examples_data"


@dataclass(frozen=True)
class Example:
    """One shipped file: a model checkpoint, an operator spec or a set of image slices."""

    name: str
    file: str
    kind: str  # "model", "operator", "data", "doc"
    description: str


EXAMPLES: dict[str, Example] = {e.name: e for e in (
    Example("deq", "deq_edsr_mri4x.safetensors", "model",
            "deep equilibrium network, EDSR prior (32 features, 4 blocks), single-coil MRI 4x"),
    Example("unrolled", "unrolled_dncnn_mri4x.safetensors", "model",
            "unrolled network, 5 steps sharing a DnCNN prior (32 features, depth 8), single-coil MRI 4x"),
    Example("operator", "operator_mri4x.toml", "operator",
            "single-coil Cartesian MRI, 96 x 96, equispaced mask, acceleration 4 (23 of 96 columns)"),
    Example("eval", "eval_slices.nii.gz", "data",
            "held-out evaluation slices (nibabel's example4d.nii.gz, EPI, 2 mm), never trained on"),
    Example("finetune", "finetune_slices.nii.gz", "data",
            "fine-tuning slices from the training distribution (MNI152 2009a T1 template, 2 mm)"),
    Example("finetune-val", "finetune_val_slices.nii.gz", "data",
            "validation slices for fine-tuning (other MNI152 template slices)"),
    Example("provenance", "PROVENANCE.md", "doc", "data sources, licences, training command and scores"),
)}

#: the model examples and the demo's short names for them
MODEL_EXAMPLES = ("deq", "unrolled")

_EXTRACTED: dict[str, Path] = {}


def _resource(file: str):
    return resources.files("mbdlprune").joinpath(PACKAGE_DIR, file)


def example_path(name: str) -> Path:
    """Filesystem path of a shipped example, by short name (``deq``, ``eval``, ...) or file name.

    Packages installed as a zip are extracted once to a temporary folder.
    """
    entry = EXAMPLES.get(name) or next((e for e in EXAMPLES.values() if e.file == name), None)
    if entry is None:
        raise MbdlError(f"unknown example {name!r}", f"use one of: {', '.join(EXAMPLES)}")
    res = _resource(entry.file)
    if not res.is_file():
        raise MbdlError(f"the example file {entry.file} is missing from this installation",
                        "reinstall mbdlprune (the wheel ships mbdlprune/examples_data), or run examples/train_examples.py")
    if isinstance(res, Path):
        return res
    if entry.file not in _EXTRACTED:  # zip imports: copy out once
        import tempfile

        from .io import write_file

        folder = Path(tempfile.mkdtemp(prefix="mbdlprune-examples-"))
        data = res.read_bytes()
        target = write_file(folder / entry.file, lambda tmp: Path(tmp).write_bytes(data))
        _EXTRACTED[entry.file] = target
    return _EXTRACTED[entry.file]


def read_header_meta(path: str | Path) -> dict[str, Any] | None:
    """The mbdlprune metadata of a safetensors file, read from its JSON header (no torch needed)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    meta = header.get("__metadata__") or {}
    if meta.get("format") != "mbdlprune":
        return None
    return json.loads(meta["mbdlprune"])


def _params_from_header(path: Path) -> int:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    total = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        count = 1
        for d in info["shape"]:
            count *= int(d)
        total += count
    return total


def list_examples() -> list[dict[str, Any]]:
    """One dict per shipped example: name, file, kind, description, path, size, and for models
    the architecture, parameter count and held-out scores recorded at training time."""
    out = []
    for e in EXAMPLES.values():
        res = _resource(e.file)
        row: dict[str, Any] = {"name": e.name, "file": e.file, "kind": e.kind, "description": e.description,
                               "present": res.is_file()}
        if row["present"]:
            path = example_path(e.name)
            row["path"] = str(path)
            row["bytes"] = path.stat().st_size
            if e.kind == "model":
                meta = read_header_meta(path) or {}
                row["arch"] = meta.get("arch")
                row["params"] = _params_from_header(path)
                ev = meta.get("evaluation") or {}
                if ev:
                    row["eval"] = {k: ev.get(k) for k in ("n_slices", "psnr_mean", "ssim_mean", "zero_filled_psnr_mean",
                                                          "zero_filled_ssim_mean")}
                    if ev.get("deq"):
                        row["eval"]["deq_iterations_mean"] = ev["deq"].get("iterations_mean")
        out.append(row)
    return out
