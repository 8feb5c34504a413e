"""mbdlprune: structured pruning and fine-tuning of model-based deep learning networks.

Heavy modules (torch, torch_pruning) load lazily, so ``import mbdlprune`` stays fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_operator": ("mbdlprune.operators", "load_operator"),
    "load_model": ("mbdlprune.io", "load_model"),
    "save_model": ("mbdlprune.io", "save_model"),
    "create_arch": ("mbdlprune.models", "create_arch"),
    "list_archs": ("mbdlprune.models", "list_archs"),
    "prune": ("mbdlprune.api", "prune"),
    "inspect_checkpoint": ("mbdlprune.api", "inspect_checkpoint"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'mbdlprune' has no attribute {name!r}")
