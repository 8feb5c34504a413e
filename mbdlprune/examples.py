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
    Example("varnet", "varnet_mc4x.safetensors", "model",
            "E2E-VarNet (fastMRI's), 4 cascades, chans 12, pools 2, learned coil maps; raw 4-coil k-space, 192 x 96, 4x"),
    Example("provenance", "PROVENANCE.md", "doc", "data sources, licences, training command and scores"),
)}

#: the model examples and the demo's short names for them
MODEL_EXAMPLES = ("deq", "unrolled")

#: model examples that take raw multi-coil k-space (fastMRI layout), with data from :func:`raw_example_data`
RAW_MODEL_EXAMPLES = ("varnet",)
#: how :func:`raw_example_data` (and examples/train_varnet_example.py) make raw k-space from the
#: shipped slices: coils, readout oversampling, and per file (short name -> file name, source
#: slices, coil-array seed, acquisition attribute)
RAW_COILS = 4
RAW_OVERSAMPLE = 2
RAW_FILES: dict[str, tuple[str, str, int, str]] = {
    "eval": ("eval.h5", "eval", 101, "AXT2"),
    "finetune": ("finetune.h5", "finetune", 102, "AXT1"),
    "finetune-val": ("finetune_val.h5", "finetune-val", 103, "AXT1"),
}
#: the fastMRI protocol the raw examples were trained and scored with (mbdlprune.data.raw.prepare_eval)
RAW_PROTOCOL = {"mask": "equispaced_fraction", "acceleration": 4, "center_fraction": 0.08, "scale": "none"}

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
                    row["eval"]["metric"] = ev.get("metric") or "plain"
                    if ev.get("deq"):
                        row["eval"]["deq_iterations_mean"] = ev["deq"].get("iterations_mean")
        out.append(row)
    return out


def raw_example_data(folder: str | Path, force: bool = False) -> dict[str, Path]:
    """Write the raw multi-coil k-space of the shipped slices into ``folder``: ``eval.h5`` (from
    ``eval_slices.nii.gz``), ``finetune.h5`` and ``finetune_val.h5``, fastMRI-layout files made by
    :func:`mbdlprune.data.fastmri_files.write_fastmri_file` with :data:`RAW_COILS` coils, readout
    oversampled :data:`RAW_OVERSAMPLE` x and the seeds of :data:`RAW_FILES` (as the ``varnet``
    example was trained and scored). Returns the paths by the names ``eval``, ``finetune``,
    ``finetune-val``. Existing files are replaced only with ``force``.

    The slices keep their stored scale (largest magnitude 1 each): the ``varnet`` example takes
    this k-space unscaled (:data:`RAW_PROTOCOL` ``scale = "none"``), as fastMRI's VarNet does.
    """
    from .data.fastmri_files import images_from_nifti, write_fastmri_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, (file, source, seed, acquisition) in RAW_FILES.items():
        images = images_from_nifti(example_path(source))
        paths[name] = write_fastmri_file(out / file, images, coils=RAW_COILS, oversample=RAW_OVERSAMPLE, seed=seed,
                                         acquisition=acquisition, force=force)
    return paths
