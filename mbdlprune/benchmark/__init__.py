"""Fair side-by-side benchmarks of an original MBDL model and its pruned (fine-tuned) versions.

* :mod:`.compare`: :func:`compare` on built models (agree, score, time, report);
* :mod:`.config`: :class:`BenchConfig`, every setting of a comparison, checked once;
* :mod:`.models`: the models to compare (:class:`~mbdlprune.io.LoadedModel`), built through the one loader;
* :mod:`.fairness`: one operator and identical DEQ solver settings for every model (applied
  for the run and restored afterwards), lineage notes;
* :mod:`.evaldata`: evaluation images and the measurements simulated once for all models;
* :mod:`.records`: fine-tune records (what a model trained on; evaluation overlap refused);
* :mod:`.costs`: reconstruction, scores and prior calls/MACs counted on the real runs;
* :mod:`.timing`: devices, interleaved timing rounds, memory;
* :mod:`.report`: results, gates and their renderers (table, JSON, Markdown, figure).

See docs/bench.md for the definitions.
"""

from .compare import compare
from .config import BenchConfig, check_bench_options
from .costs import reconstruct_and_score
from .evaldata import EvalData, load_eval_data, simulate_measurements, tensor_sha256
from .fairness import (apply_solver_settings, common_operator, common_solver_settings, is_deq, lineage_notes,
                       solver_settings_applied)
from .models import ROLES, ensure_model_file, load_bench_models
from .records import check_finetune_overlap, finetune_summary, training_hashes
from .report import SCHEMA_VERSION, SOLVER_KEYS, BenchReport, GateResult, ModelResult, evaluate_gates
from .timing import DEFAULT_REPEATS, DEFAULT_WARMUP, TimingResult, busy_note, device_info, time_model, time_models

__all__ = [
    "BenchConfig", "BenchReport", "DEFAULT_REPEATS", "DEFAULT_WARMUP", "EvalData", "GateResult", "ModelResult", "ROLES",
    "SCHEMA_VERSION", "SOLVER_KEYS", "TimingResult", "apply_solver_settings", "compare", "busy_note", "check_bench_options",
    "check_finetune_overlap", "common_operator", "common_solver_settings", "device_info",
    "ensure_model_file", "evaluate_gates", "finetune_summary", "is_deq", "lineage_notes", "load_bench_models",
    "load_eval_data", "reconstruct_and_score", "simulate_measurements",
    "solver_settings_applied", "tensor_sha256", "time_model", "time_models", "training_hashes",
]
