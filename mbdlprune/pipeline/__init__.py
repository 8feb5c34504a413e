"""One TOML file -> prune -> fine-tune -> bench, with every output in one folder.

:mod:`.config` parses the file into typed, strict sections; :mod:`.run` executes it
(:func:`run_pipeline`). See docs/ci.md.
"""

from .config import (FINETUNE_EXTRA, SECTIONS, BenchSection, FinetuneSection, GatesSection, ModelSection,  # noqa: F401
                     OutputSection, PipelineConfig, PruneSection)
from .run import OUTPUT_NAMES, PipelineResult, run_pipeline  # noqa: F401
