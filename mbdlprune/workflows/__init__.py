"""Workflows built from the API steps (:mod:`mbdlprune.api`): the chain prune -> fine-tune is
written once (:mod:`.chain`), and each workflow composes it with :func:`mbdlprune.bench`.

* :mod:`.sweep`: prune at several ratios, fine-tune each, compare all in one run;
* :mod:`.pipeline` (+ :mod:`.pipeline_config`): one TOML file -> prune -> fine-tune -> bench;
* :mod:`.demo`: the shipped examples end to end;
* :mod:`.control`: the control run (the original fine-tuned with the pruned model's budget).
"""

_LAZY = {
    "sweep": ("mbdlprune.workflows.sweep", "sweep"),
    "SweepReport": ("mbdlprune.workflows.sweep", "SweepReport"),
    "run_pipeline": ("mbdlprune.workflows.pipeline", "run_pipeline"),
    "PipelineConfig": ("mbdlprune.workflows.pipeline_config", "PipelineConfig"),
    "PipelineResult": ("mbdlprune.workflows.pipeline", "PipelineResult"),
    "run_demo": ("mbdlprune.workflows.demo", "run_demo"),
    "prune_and_finetune": ("mbdlprune.workflows.chain", "prune_and_finetune"),
    "load_original": ("mbdlprune.workflows.chain", "load_original"),
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'mbdlprune.workflows' has no attribute {name!r}")
