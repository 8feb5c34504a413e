"""The pipeline file: strict sections ([model], [prune], [finetune], [bench], [gates], [output]) parsed into typed configs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import check_keys, expect, read_config_file
from ..errors import ConfigError, MbdlError

SECTIONS = ("model", "operator", "prune", "finetune", "bench", "gates", "output")
#: keys of [finetune] that are not FinetuneConfig fields
FINETUNE_EXTRA = ("data", "val_data", "teacher")
#: prune_model arguments a pipeline may not set (they come from the model section)
#: [prune] keys besides the PruneConfig fields
PRUNE_EXTRA = ("image_size", "prune_sensitivity")


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
            from ..keymap import list_key_maps

            name = expect(t["key_map"], str, "key_map", where)
            key_map = name if name in list_key_maps() else str(_path(name, "key_map", where, base))
        return cls(_path(t["checkpoint"], "checkpoint", where, base), arch, arch_args, op, False, written, key_map)


def _prune_keys() -> list[str]:
    from ..pruning import PruneConfig

    return [f.name for f in dataclasses.fields(PruneConfig)] + list(PRUNE_EXTRA)


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
        from ..finetuning.config import FinetuneConfig

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
        """Keyword arguments for :func:`mbdlprune.finetuning.finetune` (distill modes get the original as teacher)."""
        out: dict[str, Any] = {**self.settings, "data": [str(p) for p in self.data]}
        if self.val_data:
            out["val_data"] = [str(p) for p in self.val_data]
        teacher = self.teacher or (original_path if str(self.settings.get("mode", "")).startswith("distill") else None)
        if teacher is not None:
            out["teacher"] = str(teacher)
        return out


@dataclass
class BenchSection:
    """[bench]: the evaluation data, the :class:`~mbdlprune.benchmark.BenchConfig` fields, control and figure."""

    data: list[Path]
    config: Any = None  # BenchConfig (gates come from [gates])
    control: bool = False
    figure: bool = False

    EXTRA = ("data", "control", "figure")
    GATES = ("min_speedup", "max_psnr_drop")

    @classmethod
    def parse(cls, t: Mapping[str, Any], base: Path) -> "BenchSection":
        from ..benchmark import BenchConfig

        where = "[bench]"
        names = [f.name for f in dataclasses.fields(BenchConfig) if f.name not in cls.GATES]
        check_keys(t, [*cls.EXTRA, *names], where, required=("data",))
        kw: dict[str, Any] = {"data": _paths(t["data"], "data", where, base)}
        for key in ("control", "figure"):
            if key in t:
                kw[key] = expect(t[key], bool, key, where)
        settings = {k: v for k, v in t.items() if k not in cls.EXTRA}
        try:
            kw["config"] = BenchConfig.from_dict(settings, where)
        except MbdlError as e:
            raise ConfigError(f"{where}: {e.problem}", e.fix) from None
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
            from ..operators import load_operator

            return load_operator({"operator": self.operator}, base_dir=self.path.parent if str(self.path.parent) else Path("."))
        return str(self.model.operator) if self.model.operator is not None else None

    def factory(self, allow_arch: str | None) -> str | None:
        """The user-code factory to run, only when the command line's ``--arch`` names the same one."""
        from ..models.user import is_factory_spec, same_factory

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
