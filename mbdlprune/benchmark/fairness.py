"""What makes a comparison fair: one operator and identical DEQ solver settings for every model, and lineage notes.

The reference paper timed its pruned DEQ with a looser tolerance than the original, so part of
its gain came from stopping earlier; here every DEQ runs with the first DEQ's solver, ``tol``
and ``max_iter`` (or overrides for all), applied for the benchmark and restored afterwards.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..errors import MbdlError
from ..models.protocol import SOLVER_KEYS, SolverSettings, is_deq, solver_settings
from ..io.model_file import LoadedModel


def common_solver_settings(models: Sequence[LoadedModel], solver: str | None = None, tol: float | None = None,
                           max_iter: int | None = None, check_every: int | None = None) -> dict[str, Any] | None:
    """The solver settings every DEQ will run with: the first DEQ's, with overrides for all.

    ``check_every`` (how often the solver reads its residual on the host) changes no result,
    only synchronisation; it is refused when a DEQ has no such setting, since the models would
    then not run alike.
    """
    deqs = [m for m in models if is_deq(m.model)]
    if not deqs:
        if any(v is not None for v in (solver, tol, max_iter, check_every)):
            raise MbdlError("--solver/--tol/--max-iter/--check-every apply to DEQ models, and none of these models is one",
                            "drop those options")
        return None
    if check_every is not None:
        if int(check_every) < 1:
            raise MbdlError(f"--check-every must be >= 1, got {check_every}", "use e.g. --check-every 4")
        lacking = [m.label for m in deqs if not hasattr(m.model, "check_every")]
        if lacking:
            raise MbdlError(f"--check-every: {', '.join(lacking)} has no check_every setting (its solver reads the "
                            "residual itself)", "drop --check-every, or give that DEQ a check_every attribute")
    ref = deqs[0].model
    settings = {"solver": ref.solver, "tol": float(ref.tol), "max_iter": int(ref.max_iter)}
    overridden = []
    for key, value in (("solver", solver), ("tol", tol), ("max_iter", max_iter)):
        if value is not None:
            settings[key] = value
            overridden.append(key)
    if settings["tol"] is not None and not float(settings["tol"]) > 0:
        raise MbdlError(f"--tol must be positive, got {settings['tol']}", "use e.g. --tol 1e-4")
    if int(settings["max_iter"]) < 1:
        raise MbdlError(f"--max-iter must be >= 1, got {settings['max_iter']}", "use e.g. --max-iter 100")
    from ..models.solvers import SOLVERS

    if settings["solver"] not in SOLVERS:
        raise MbdlError(f"unknown --solver {settings['solver']!r}", f"use one of: {', '.join(SOLVERS.names())}")
    if check_every is not None:
        settings["check_every"] = int(check_every)
        overridden.append("check_every")
    settings["source"] = f"{deqs[0].label} (first DEQ)" + (f"; overridden for all: {', '.join(overridden)}" if overridden else "")
    settings["stored"] = {m.label: {k: getattr(m.model, k) for k in SOLVER_KEYS} for m in deqs}
    return settings


def _chosen(settings: Mapping[str, Any]) -> SolverSettings:
    every = settings.get("check_every")
    return SolverSettings(settings["solver"], float(settings["tol"]), int(settings["max_iter"]),
                          None if every is None else int(every))


@contextmanager
def solver_settings_applied(models: Sequence[LoadedModel], settings: Mapping[str, Any] | None) -> Iterator[None]:
    """Run every DEQ with ``settings`` inside the block and give each model back its own afterwards."""
    if not settings:
        yield
        return
    with solver_settings([m.model for m in models], _chosen(settings)):
        yield


def apply_solver_settings(models: Sequence[LoadedModel], settings: Mapping[str, Any] | None) -> None:
    """Set ``settings`` on every DEQ for good (:func:`solver_settings_applied` restores them)."""
    if not settings:
        return
    for m in models:
        if is_deq(m.model):
            _chosen(settings).apply(m.model)


def _canonical(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def common_operator(models: Sequence[LoadedModel], operator: Any = None):
    """The one operator all models run with; disagreeing recorded operators are an error."""
    from ..operators import load_operator

    if operator is not None:
        if not (hasattr(operator, "A") and hasattr(operator, "A_adjoint")):
            operator = load_operator(operator)
        return operator, "given explicitly, used for every model"
    # the spec of the rebuilt operator when there is one: it holds every default, so a file written
    # by an older mbdlprune and one written now compare equal when they describe the same operator
    specs = [(m.label, getattr(m.operator, "spec", None) or (m.meta or {}).get("operator")) for m in models]
    known = [(lbl, s) for lbl, s in specs if s]
    missing = [lbl for lbl, s in specs if not s]
    if not known:
        if models[0].operator is not None:
            return models[0].operator, f"from {models[0].label}"
        raise MbdlError("none of the models records its operator", "pass --operator SPEC (TOML/JSON with an [operator] table)")
    if missing and models[0].operator is None:
        raise MbdlError(f"{', '.join(missing)} records no operator", "pass --operator SPEC to use one operator for all models")
    ref_label, ref = known[0]
    for lbl, s in known[1:]:
        if _canonical(s) != _canonical(ref):
            diff = _spec_difference(ref, s)
            raise MbdlError(
                f"{lbl} was built for a different operator than {ref_label} ({diff})",
                "benchmark models of the same operator, or pass --operator to run all with one",
            )
    op = next((m.operator for m in models if m.operator is not None), None)
    if op is None:  # specs recorded in files are only rebuilt by the loader, from the file's own data
        raise MbdlError(f"no operator object was loaded with {ref_label}", "pass --operator SPEC to use one operator for all models")
    return op, f"recorded in {ref_label}" + (" (identical in all models)" if len(known) > 1 else "")


def _spec_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    for k in keys:
        if _canonical(a.get(k)) != _canonical(b.get(k)):
            return f"{k}: {a.get(k)!r} vs {b.get(k)!r}"
    return "specs differ"


def lineage_notes(entries: Sequence[LoadedModel]) -> list[str]:
    """Notes for models that do not descend from the first one (other architecture or parent)."""
    from ..io import sha256_file

    notes = []
    ref = entries[0]
    ref_arch = ((ref.meta or {}).get("arch") or {}).get("name")
    ref_sha = None
    if ref.path and Path(ref.path).is_file():
        try:
            ref_sha = sha256_file(ref.path)
        except OSError:
            ref_sha = None
    # the reference's own file, and, for a plain conversion (no pruning, no fine-tuning), the
    # checkpoint it was converted from: a model pruned from that checkpoint descends from both
    same = {ref_sha}
    if not (ref.meta or {}).get("pruning") and not (ref.meta or {}).get("finetune"):
        same.add((ref.meta or {}).get("parent_sha256"))
    same.discard(None)
    for e in entries[1:]:
        arch = ((e.meta or {}).get("arch") or {}).get("name")
        if ref_arch and arch and arch != ref_arch:
            notes.append(f"{e.label} is a {arch}, the reference {ref.label} a {ref_arch}: this compares different architectures")
            continue
        parent = (e.meta or {}).get("parent_sha256")
        if same and parent and e.role == "pruned" and parent not in same:
            notes.append(f"{e.label} was not pruned from {ref.label} (its parent's sha256 differs)")
    return notes
