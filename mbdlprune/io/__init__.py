"""Files in and out: the one loader and the one writer.

* :mod:`.checkpoint` reads any checkpoint without running code (safetensors, or torch files
  with ``weights_only=True``), checks mbdlprune metadata, loads weights strictly.
* :mod:`.model_file` builds whole models from files (:func:`load_model`, used by every command
  for originals, pruned models, teachers, controls and pipeline steps) and writes model files
  (:func:`save_model`: safetensors with JSON metadata and embedded operator data).
* :mod:`.writer` writes every output: temp file, fsync, no-replace move unless ``force``.

See docs/security.md for the threat model.
"""

from ..models.registry import MAX_MODEL_ELEMENTS
from .checkpoint import (EMBED_PREFIX, FORMAT_NAME, FORMAT_VERSION, MODEL_ATTRS, NESTED_KEYS, TORCH_SUFFIXES,
                         CheckpointFile, check_finite, check_meta, find_weights, is_mbdlprune_file, load_weights,
                         match_keys, read_checkpoint, read_model_file, resize_to_state, sha256_file,
                         sync_module_attributes, versions)
from .model_file import (LoadedModel, load_model, operator_from_meta, parameterless_norm_widths, resolve_operator,
                         restore_setup, save_model, state_for_saving)
from .writer import (check_output_path, check_writable_dir, json_safe, make_output_dir, prepare_output_dir,
                     rollback_on_error, user_cache_dir, write_file, write_json, write_text)

__all__ = [
    "CheckpointFile", "EMBED_PREFIX", "FORMAT_NAME", "FORMAT_VERSION", "LoadedModel", "MAX_MODEL_ELEMENTS", "MODEL_ATTRS",
    "NESTED_KEYS", "TORCH_SUFFIXES", "check_finite", "check_meta", "check_output_path", "check_writable_dir",
    "find_weights", "is_mbdlprune_file", "json_safe", "load_model", "load_weights", "make_output_dir", "match_keys",
    "operator_from_meta", "parameterless_norm_widths", "prepare_output_dir", "read_checkpoint", "read_model_file",
    "resize_to_state", "resolve_operator", "restore_setup", "rollback_on_error", "save_model", "sha256_file", "state_for_saving",
    "sync_module_attributes", "user_cache_dir", "versions", "write_file", "write_json", "write_text",
]
