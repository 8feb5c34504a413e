"""Fine-tuning of pruned MBDL networks: losses, modes and the training loop.

``finetune(pruned_path, data=..., out=..., mode=..., ...)`` is the entry point; see
docs/finetune.md. Submodules import torch, so names load lazily.
"""

_LAZY = {
    "finetune": ("mbdlprune.finetune.trainer", "finetune"),
    "FinetuneConfig": ("mbdlprune.finetune.config", "FinetuneConfig"),
    "FinetuneResult": ("mbdlprune.finetune.config", "FinetuneResult"),
    "state_paths": ("mbdlprune.finetune.trainer", "state_paths"),
    "combine": ("mbdlprune.finetune.losses", "combine"),
    "build_mode_loss": ("mbdlprune.finetune.losses", "build_mode_loss"),
    "LOSSES": ("mbdlprune.finetune.losses", "LOSSES"),
    "MODES": ("mbdlprune.finetune.losses", "MODES"),
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'mbdlprune.finetune' has no attribute {name!r}")
