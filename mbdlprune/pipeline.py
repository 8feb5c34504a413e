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
import inspect
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import check_keys, expect, read_config_file
from .errors import ConfigError, MbdlError

SECTIONS = ("model", "operator", "prune", "finetune", "bench", "gates", "output")
#: keys of [finetune] that are not FinetuneConfig fields
FINETUNE_EXTRA = ("data", "val_data", "teacher")
#: prune_model arguments a pipeline may not set (they come from the model section)
_PRUNE_INTERNAL = ("model", "arch_spec", "op", "parent_meta", "parent_sha256")


def _path(value: Any, key: str, where: str, base: Path) -> Path:
    expect(value, str, key, where)
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _paths(value: Any, key: str, where: str, base: Path) -> list[Path]:
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: {key} is an empty list", f"give {key} = \"PATH\" or a list of paths")
        return [_path(v, key, where, base) for v in value]
    return [_path(value, key, where, base)]


def _number(table: Mapping[str, Any], key: str, where: str, default=None, integer: bool = False, positive: bool = False):
    if key not in table:
        return default
    v = table[key]
    if v is None:
        return None
    expect(v, int if integer else (int, float), key, where)
    if positive and not v > 0:
        raise ConfigError(f"{where}: {key} must be positive, got {v!r}", f"set {key} above 0")
    return v


# ------------------------------------------------------------------------------ sections
@dataclass
class ModelSection:
    checkpoint: Path
    arch: str | None = None
    arch_args: dict[str, Any] = field(default_factory=dict)
    operator: Path | None = None
    unsafe_pickle: bool = False
    arch_as_written: str | None = None
    key_map: str | None = None

    KEYS = ("checkpoint", "arch", "arch_args", "operator", "unsafe_pickle", "key_map")

    @classmethod
    def parse(cls, t: Mapping[str, Any], base: Path) -> "ModelSection":
        where = "[model]"
        check_keys(t, cls.KEYS, where, required=("checkpoint",))
        arch = expect(t["arch"], str, "arch", where) if "arch" in t else None
        written = arch
        arch_args = dict(expect(t.get("arch_args", {}), dict, "arch_args", where))
        if arch and ":" in arch and not Path(arch.rpartition(":")[0]).is_absolute() and arch.rpartition(":")[0].endswith(".py"):
            file, _, fn = arch.rpartition(":")
            arch = f"{base / file}:{fn}"
        op = _path(t["operator"], "operator", where, base) if "operator" in t else None
        if t.get("unsafe_pickle"):
            raise ConfigError(f"{where}: unsafe_pickle is not taken from a file", "remove it; only a checkpoint you trust may be unpickled, with --unsafe-pickle")
        key_map = None
        if "key_map" in t:
            from .keymap import list_key_maps

            name = expect(t["key_map"], str, "key_map", where)
            key_map = name if name in list_key_maps() else str(_path(name, "key_map", where, base))
        return cls(_path(t["checkpoint"], "checkpoint", where, base), arch, arch_args, op, False, written, key_map)


def _prune_keys() -> list[str]:
    from .api import prune_model

    return [n for n, p in inspect.signature(prune_model).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in _PRUNE_INTERNAL]


@dataclass
class PruneSection:
    options: dict[str, Any]

    @classmethod
    def parse(cls, t: Mapping[str, Any]) -> "PruneSection":
        where = "[prune]"
        check_keys(t, _prune_keys(), where, required=("ratio",))
        opts = dict(t)
        expect(opts["ratio"], (int, float), "ratio", where)
        if "image_size" in opts and opts["image_size"] is not None:
            opts["image_size"] = tuple(opts["image_size"])
        return cls(opts)


@dataclass
class FinetuneSection:
    settings: dict[str, Any]  # FinetuneConfig fields
    data: list[Path]
    val_data: list[Path] | None = None
    teacher: Path | None = None

    @classmethod
    def parse(cls, t: Mapping[str, Any], base: Path) -> "FinetuneSection":
        from .finetune.config import FinetuneConfig

        where = "[finetune]"
        fields = [f.name for f in dataclasses.fields(FinetuneConfig)]
        check_keys(t, [*fields, *FINETUNE_EXTRA], where, required=("data", "mode", "epochs"))
        settings = {k: v for k, v in t.items() if k not in FINETUNE_EXTRA}
        FinetuneConfig.from_dict(settings, where)  # types and ranges, errors name the key
        data = _paths(t["data"], "data", where, base)
        val = _paths(t["val_data"], "val_data", where, base) if "val_data" in t else None
        teacher = _path(t["teacher"], "teacher", where, base) if "teacher" in t else None
        return cls(settings, data, val, teacher)

    def call_settings(self, original_path: str | None) -> dict[str, Any]:
        """Keyword arguments for :func:`mbdlprune.finetune.finetune` (distill modes get the original as teacher)."""
        out: dict[str, Any] = {**self.settings, "data": [str(p) for p in self.data]}
        if self.val_data:
            out["val_data"] = [str(p) for p in self.val_data]
        teacher = self.teacher or (original_path if str(self.settings.get("mode", "")).startswith("distill") else None)
        if teacher is not None:
            out["teacher"] = str(teacher)
        return out


@dataclass
class BenchSection:
    data: list[Path]
    device: str = "auto"
    batch_size: int = 1
    warmup: int = 10
    repeats: int = 30
    metric: str = "plain"
    seed: int = 0
    solver: str | None = None
    tol: float | None = None
    max_iter: int | None = None
    max_images: int | None = None
    fit: str = "error"
    threads: int | None = None
    control: bool = False
    figure: bool = False

    @classmethod
    def parse(cls, t: Mapping[str, Any], base: Path) -> "BenchSection":
        where = "[bench]"
        names = [f.name for f in dataclasses.fields(cls)]
        check_keys(t, names, where, required=("data",))
        kw: dict[str, Any] = {"data": _paths(t["data"], "data", where, base)}
        for key in ("device", "metric", "solver", "fit"):
            if key in t:
                kw[key] = expect(t[key], str, key, where)
        for key in ("control", "figure"):
            if key in t:
                kw[key] = expect(t[key], bool, key, where)
        for key in ("batch_size", "repeats", "max_iter", "max_images", "threads"):
            if key in t:
                kw[key] = _number(t, key, where, integer=True, positive=True)
        for key in ("warmup", "seed"):
            if key in t:
                v = _number(t, key, where, integer=True)
                if v is not None and v < 0:
                    raise ConfigError(f"{where}: {key} must be >= 0, got {v}", f"set {key} to 0 or more")
                kw[key] = v
        if "tol" in t:
            kw["tol"] = _number(t, "tol", where, positive=True)
        if kw.get("metric", "plain") not in ("plain", "paper"):
            raise ConfigError(f"{where}: metric must be 'plain' or 'paper', got {kw['metric']!r}", "set metric = \"plain\" or \"paper\"")
        return cls(**kw)


@dataclass
class GatesSection:
    min_speedup: float | None = None
    max_psnr_drop: float | None = None

    @classmethod
    def parse(cls, t: Mapping[str, Any]) -> "GatesSection":
        where = "[gates]"
        check_keys(t, ("min_speedup", "max_psnr_drop"), where)
        return cls(_number(t, "min_speedup", where, positive=True), _number(t, "max_psnr_drop", where))


@dataclass
class OutputSection:
    dir: Path
    force: bool = False

    @classmethod
    def parse(cls, t: Mapping[str, Any], base: Path) -> "OutputSection":
        where = "[output]"
        check_keys(t, ("dir", "force"), where)
        d = _path(t.get("dir", "mbdlprune-out"), "dir", where, base)
        if t.get("force") is not None and expect(t["force"], bool, "force", where):
            raise ConfigError(f"{where}: force = true is not taken from a file: overwriting needs --force on the command line",
                              "remove force from [output] and pass --force to mbdlprune run")
        return cls(d, False)


@dataclass
class PipelineConfig:
    """A parsed, validated pipeline file."""

    path: Path
    model: ModelSection
    prune: PruneSection
    bench: BenchSection
    gates: GatesSection
    output: OutputSection
    finetune: FinetuneSection | None = None
    operator: dict[str, Any] | None = None  # an inline [operator] table

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str | Path = "pipeline.toml") -> "PipelineConfig":
        p = Path(path)
        base = p.parent if str(p.parent) else Path(".")
        check_keys(d, SECTIONS, p.name, required=("model", "prune", "bench"))
        for key in SECTIONS:
            if key in d and not isinstance(d[key], Mapping):
                raise ConfigError(f"{p.name}: {key} must be a table [{key}]", f"write [{key}] followed by its keys")
        model = ModelSection.parse(d["model"], base)
        op_table = dict(d["operator"]) if "operator" in d else None
        if op_table is not None and model.operator is not None:
            raise ConfigError(f"{p.name} gives the operator twice ([model] operator and an [operator] table)", "keep one of them")
        return cls(
            path=p,
            model=model,
            prune=PruneSection.parse(d["prune"]),
            bench=BenchSection.parse(d["bench"], base),
            gates=GatesSection.parse(d.get("gates", {})),
            output=OutputSection.parse(d.get("output", {}), base),
            finetune=FinetuneSection.parse(d["finetune"], base) if "finetune" in d else None,
            operator=op_table,
        )

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        return cls.from_dict(read_config_file(path), path)

    def operator_spec(self) -> Any:
        """The operator: an inline [operator] table (array paths relative to this file) or a spec file."""
        if self.operator is not None:
            from .operators import load_operator

            return load_operator({"operator": self.operator}, base_dir=self.path.parent if str(self.path.parent) else Path("."))
        return str(self.model.operator) if self.model.operator is not None else None

    def factory(self, allow_arch: str | None) -> str | None:
        """The user-code factory to run, only when the command line's ``--arch`` names the same one."""
        from .models.user import is_factory_spec, same_factory

        arch = self.model.arch
        if not arch or not is_factory_spec(arch):
            if allow_arch is not None:
                raise MbdlError(f"--arch {allow_arch!r} is given, but {self.path.name} names no user code", "drop --arch")
            return None
        if allow_arch is None:
            raise MbdlError(f"{self.path.name} names user code ({self.model.arch_as_written!r}), which runs only when the command line says so",
                            f"pass --arch {self.model.arch_as_written} to allow running it")
        if not (allow_arch == self.model.arch_as_written or same_factory(allow_arch, arch)):
            raise MbdlError(f"--arch {allow_arch!r} is not the code {self.path.name} names ({self.model.arch_as_written!r})",
                            f"pass --arch {self.model.arch_as_written}")
        return arch


#: every file a pipeline run may write into its output folder (checked before any work)
OUTPUT_NAMES = ("pruned.safetensors", "finetuned.safetensors", "finetuned.state.safetensors", "control.safetensors",
                "control.state.safetensors", "prune.json", "finetune.json", "report.json", "report.md", "figure.png",
                "pipeline.toml")


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
    from .io import prepare_output_dir, rollback_on_error
    from .sweep import checkpoint_stem

    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    cfg = PipelineConfig.load(path)
    factory = cfg.factory(allow_arch)
    out = Path(out_dir) if out_dir is not None else cfg.output.dir
    force = bool(force)
    bcfg = dataclasses.replace(cfg.bench, device=device) if device else cfg.bench
    names = [*OUTPUT_NAMES, f"{checkpoint_stem(cfg.model.checkpoint)}.safetensors"]
    if out.exists() and Path(path).resolve().parent == out.resolve():
        names.remove("pipeline.toml")  # the pipeline file itself lives there and is not copied
    prepare_output_dir(out, names, force, create=False)  # nothing is created before the checkpoint loads
    with rollback_on_error(out, names):  # a run that fails leaves no partial folder behind
        return _run_steps(path, cfg, factory, out, force, bcfg, say, progress, t0)


def _run_steps(path, cfg: "PipelineConfig", factory, out: Path, force: bool, bcfg, say, progress, t0) -> "PipelineResult":
    from .api import prune_model
    from .bench import BenchModel, bench, load_eval_data, run_finetune
    from .io import make_output_dir, save_model, sha256_file, write_file, write_json
    from .sweep import load_original

    files: dict[str, str] = {}
    pruned_path = out / "pruned.safetensors"
    ft_path = out / "finetuned.safetensors"

    # prune
    say(f"loading {cfg.model.checkpoint}")
    original, spec, meta, op = load_original(cfg.model.checkpoint, factory or cfg.model.arch, cfg.model.arch_args,
                                             cfg.operator_spec(), False, cfg.model.key_map)
    import copy

    # the evaluation data are read (and refused if bad) before anything is written
    ev = load_eval_data([str(p) for p in bcfg.data], op, bcfg.max_images, bcfg.fit)

    say(f"pruning at ratio {cfg.prune.options['ratio']}")
    res = prune_model(copy.deepcopy(original.model), spec, op, parent_meta=meta,
                      parent_sha256=sha256_file(cfg.model.checkpoint), **cfg.prune.options)
    res.meta["parent"] = cfg.model.checkpoint.name
    make_output_dir(out)
    files["pruned"] = str(save_model(pruned_path, res.model, res.meta, force=force, operator=op))
    write_json(out / "prune.json", res.report, force=force)
    files["prune_report"] = str(out / "prune.json")
    final = BenchModel("pruned", res.model, res.meta, op, files["pruned"], "pruned")

    # fine-tune
    ft_settings = None
    original_file = None
    if cfg.finetune:
        from .bench import ensure_model_file

        original_file = ensure_model_file(original, out, force=force) if (
            str(cfg.finetune.settings.get("mode", "")).startswith("distill") or bcfg.control) else None
        if original_file and original_file != str(original.path):
            files["original"] = original_file
        ft_settings = cfg.finetune.call_settings(original_file or str(cfg.model.checkpoint))
        say(f"fine-tuning ({ft_settings.get('mode')}, {ft_settings.get('epochs')} epochs)")
        result = run_finetune(files["pruned"], ft_settings, ft_path, arch=factory, force=force,
                              eval_data=[str(p) for p in bcfg.data])
        files["finetuned"] = str(result.out or ft_path)
        summary = result.summary() if hasattr(result, "summary") else {}
        write_json(out / "finetune.json", summary, force=force)
        files["finetune_report"] = str(out / "finetune.json")
        final = BenchModel("pruned+finetuned", result.model, dict(result.meta), op, files["finetuned"], "pruned")
    elif bcfg.control:
        raise ConfigError("[bench] control = true needs a [finetune] section", "add [finetune] or set control = false")

    # bench
    control: Any = False
    if bcfg.control and ft_settings is not None:
        control = {k: v for k, v in ft_settings.items()}
        if original_file and "teacher" in control:
            control["teacher"] = original_file
    report = bench(
        [original, final], ev, operator=op, device=bcfg.device, solver=bcfg.solver,
        tol=bcfg.tol, max_iter=bcfg.max_iter, warmup=bcfg.warmup, repeats=bcfg.repeats, batch_size=bcfg.batch_size,
        metric=bcfg.metric, seed=bcfg.seed, max_images=bcfg.max_images, fit=bcfg.fit, threads=bcfg.threads,
        arch=factory,
        min_speedup=cfg.gates.min_speedup, max_psnr_drop=cfg.gates.max_psnr_drop, control=control,
        control_out=out / "control.safetensors" if control else None, progress=progress, force=force,
    )
    if control:
        files["control"] = str(out / "control.safetensors")
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



