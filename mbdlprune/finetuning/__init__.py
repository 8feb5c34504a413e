"""Fine-tuning of pruned MBDL networks: losses, modes and the training loop.

``finetune(pruned_path, data=..., out=..., mode=..., ...)`` is the entry point; see
docs/finetune.md. Submodules import torch, so names load lazily.
"""

_LAZY = {
    "finetune": ("mbdlprune.finetuning.trainer", "finetune"),
    "FinetuneConfig": ("mbdlprune.finetuning.config", "FinetuneConfig"),
    "FinetuneResult": ("mbdlprune.finetuning.config", "FinetuneResult"),
    "state_paths": ("mbdlprune.finetuning.trainer", "state_paths"),
    "combine": ("mbdlprune.finetuning.losses", "combine"),
    "build_mode_loss": ("mbdlprune.finetuning.losses", "build_mode_loss"),
    "LOSSES": ("mbdlprune.finetuning.losses", "LOSSES"),
    "MODES": ("mbdlprune.finetuning.modes", "MODES"),
    "SCHEDULES": ("mbdlprune.finetuning.schedules", "SCHEDULES"),
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'mbdlprune.finetuning' has no attribute {name!r}")
