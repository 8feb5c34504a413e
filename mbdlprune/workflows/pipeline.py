"""One TOML file -> prune -> fine-tune -> bench, with every output in one folder.

Example (``examples/ci/pipeline.toml`` is a complete one)::

    [model]
    checkpoint = "original.pt"
    arch = "deq-edsr"
    operator = "operator.toml"

    [prune]
    ratio = 0.3

    [finetune]                 # optional
    mode = "supervised"
    data = "data/train"
    epochs = 2

    [bench]
    data = "data/eval"
    repeats = 30

    [gates]
    min_speedup = 1.2
    max_psnr_drop = 0.5

    [output]
    dir = "mbdlprune-out"

Unknown keys anywhere are a :class:`ConfigError` naming the key. Relative paths are relative
to the TOML file. :func:`run_pipeline` returns a :class:`PipelineResult` whose ``exit_code``
is 1 when a gate fails.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MbdlError
from ..finetuning.state import state_path
from .pipeline_config import PipelineConfig


#: every file a pipeline run may write into its output folder (checked before any work)
OUTPUT_NAMES = ("pruned.safetensors", "finetuned.safetensors", state_path("finetuned.safetensors").name,
                "control.safetensors", state_path("control.safetensors").name, "prune.json", "finetune.json",
                "report.json", "report.md", "figure.png", "pipeline.toml")


# ------------------------------------------------------------------------------ running
@dataclass
class PipelineResult:
    """What a pipeline run produced: the bench report, the files written and the exit code."""

    report: Any  # BenchReport
    out_dir: Path
    files: dict[str, str]
    exit_code: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "files": self.files, "exit_code": self.exit_code,
                "gates": self.report.gate_line(), "seconds": round(self.seconds, 2)}


def run_pipeline(path: str | Path, out_dir: str | Path | None = None, device: str | None = None,
                 force: bool | None = None, progress=None, allow_arch: str | None = None) -> PipelineResult:
    """Run prune -> (fine-tune) -> bench as the file says; write models and reports into one folder.

    Files in the folder: ``pruned.safetensors``, ``finetuned.safetensors`` (with [finetune]),
    ``control.safetensors`` (with ``bench.control``), ``prune.json``, ``finetune.json``,
    ``report.json``, ``report.md``, ``figure.png`` (with ``bench.figure``) and a copy of the
    pipeline file. ``out_dir``/``device`` override the file; ``force`` lets outputs replace
    files already in the folder; ``allow_arch`` must name the user-code factory the file names
    (the command line's ``--arch``), if any.
    """
    from ..io import prepare_output_dir, rollback_on_error
    from .chain import checkpoint_stem

    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    cfg = PipelineConfig.load(path)
    factory = cfg.factory(allow_arch)
    out = Path(out_dir) if out_dir is not None else cfg.output.dir
    force = bool(force)
    bcfg = dataclasses.replace(cfg.bench, config=cfg.bench.config.replace(device=device)) if device else cfg.bench
    names = [*OUTPUT_NAMES, f"{checkpoint_stem(cfg.model.checkpoint)}.safetensors"]
    if out.exists() and Path(path).resolve().parent == out.resolve():
        names.remove("pipeline.toml")  # the pipeline file itself lives there and is not copied
    prepare_output_dir(out, names, force, create=False)  # nothing is created before the checkpoint loads
    with rollback_on_error(out, names):  # a run that fails leaves no partial folder behind
        return _run_steps(path, cfg, factory, out, force, bcfg, say, progress, t0)


def _run_steps(path, cfg: "PipelineConfig", factory, out: Path, force: bool, bcfg, say, progress, t0) -> "PipelineResult":
    from ..benchmark import compare, ensure_model_file, load_eval_data
    from ..io import make_output_dir, write_file, write_json
    from .chain import load_original, prune_and_finetune

    files: dict[str, str] = {}
    say(f"loading {cfg.model.checkpoint}")
    original = load_original(cfg.model.checkpoint, factory or cfg.model.arch, cfg.model.arch_args, cfg.operator_spec(),
                             False, cfg.model.key_map)
    op = original.operator
    bench_cfg = bcfg.config.replace(min_speedup=cfg.gates.min_speedup, max_psnr_drop=cfg.gates.max_psnr_drop)
    # the evaluation data are read (and refused if bad) before anything is written
    ev = load_eval_data([str(p) for p in bcfg.data], op, bench_cfg.max_images, bench_cfg.fit)
    if bcfg.control and not cfg.finetune:
        raise ConfigError("[bench] control = true needs a [finetune] section", "add [finetune] or set control = false")

    say(f"pruning at ratio {cfg.prune.options['ratio']}")
    make_output_dir(out)
    original_file = teacher = ft_settings = None
    if cfg.finetune:
        distill = str(cfg.finetune.settings.get("mode", "")).startswith("distill")
        original_file = ensure_model_file(original, out, force=force) if (distill or bcfg.control) else None
        if original_file and original_file != str(original.path):
            files["original"] = original_file
        ft_settings = cfg.finetune.call_settings(original_file or str(cfg.model.checkpoint))
        teacher = ft_settings.get("teacher")
    step = prune_and_finetune(original, cfg.prune.options, label="pruned", finetuned_label="pruned+finetuned",
                              pruned_out=out / "pruned.safetensors", finetune=ft_settings,
                              finetuned_out=out / "finetuned.safetensors", teacher=teacher, arch=factory,
                              eval_data=[str(p) for p in bcfg.data], force=force, say=say)
    files["pruned"] = str(step.pruned.out)
    write_json(out / "prune.json", step.pruned.report, force=force)
    files["prune_report"] = str(out / "prune.json")
    entries = [original, step.model]
    if step.finetuned is not None:
        files["finetuned"] = str(step.finetuned.out or out / "finetuned.safetensors")
        write_json(out / "finetune.json", step.finetuned.summary(), force=force)
        files["finetune_report"] = str(out / "finetune.json")

    # bench (with the control run: the original fine-tuned with the same settings)
    if bcfg.control:
        from .control import control_model

        control = dict(ft_settings)
        if original_file and "teacher" in control:
            control["teacher"] = original_file
        entries.append(control_model(entries, control, out / "control.safetensors", factory, say, force=force))
        files["control"] = str(out / "control.safetensors")
    report = compare(entries, ev, bench_cfg, operator=op, progress=progress)
    files["report_json"] = str(report.write_json(out / "report.json", force=force))
    files["report_md"] = str(report.write_markdown(out / "report.md", force=force))
    if bcfg.figure:
        try:
            files["figure"] = str(report.figure(out / "figure.png", force=force))
        except MbdlError as e:
            report.notes.append(f"no figure: {e}")
    copy_to = out / "pipeline.toml"
    if Path(path).resolve() != copy_to.resolve():
        write_file(copy_to, lambda tmp: shutil.copyfile(path, tmp), force=force)
        files["pipeline"] = str(copy_to)
    return PipelineResult(report, out, files, report.exit_code(), time.perf_counter() - t0)
