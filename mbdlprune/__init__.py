"""mbdlprune: structured pruning and fine-tuning of model-based deep learning networks.

Heavy modules (torch, torch_pruning) load lazily, so ``import mbdlprune`` stays fast.
"""

__version__ = "0.1.0"

_LAZY = {
    # the steps (mbdlprune.api): typed config in, result object out
    "prune": ("mbdlprune.api", "prune"),
    "convert": ("mbdlprune.api", "convert"),
    "inspect": ("mbdlprune.api", "inspect"),
    "finetune": ("mbdlprune.api", "finetune"),
    "bench": ("mbdlprune.api", "bench"),
    "load_model": ("mbdlprune.api", "load_model"),
    "save_model": ("mbdlprune.io", "save_model"),
    # the workflows built from them
    "sweep": ("mbdlprune.workflows.sweep", "sweep"),
    "run_pipeline": ("mbdlprune.workflows.pipeline", "run_pipeline"),
    "run_demo": ("mbdlprune.workflows.demo", "run_demo"),
    # configs and results
    "PruneConfig": ("mbdlprune.pruning.config", "PruneConfig"),
    "FinetuneConfig": ("mbdlprune.finetuning.config", "FinetuneConfig"),
    "BenchConfig": ("mbdlprune.benchmark.config", "BenchConfig"),
    "PruneResult": ("mbdlprune.api", "PruneResult"),
    "FinetuneResult": ("mbdlprune.finetuning.config", "FinetuneResult"),
    "BenchReport": ("mbdlprune.benchmark.report", "BenchReport"),
    "LoadedModel": ("mbdlprune.io.model_file", "LoadedModel"),
    # building blocks
    "load_operator": ("mbdlprune.operators", "load_operator"),
    "create_arch": ("mbdlprune.models", "create_arch"),
    "list_archs": ("mbdlprune.models", "list_archs"),
    "inspect_checkpoint": ("mbdlprune.api", "inspect_checkpoint"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'mbdlprune' has no attribute {name!r}")
