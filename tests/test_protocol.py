"""The model contract: is_deq over the registry, and solver settings applied for a block and restored."""

import pytest

from mbdlprune.models import create_arch, list_archs
from mbdlprune.models.small import small_args
from mbdlprune.models.protocol import SolverSettings, is_deq, solver_settings


@pytest.mark.parametrize("name", list_archs())
def test_is_deq_over_the_registry(name):
    assert is_deq(create_arch(name, **small_args(name))) == name.startswith("deq")


def test_solver_settings_are_applied_in_the_block_and_restored_after_an_error():
    deq = create_arch("deq-edsr", **small_args("deq-edsr"))
    unrolled = create_arch("unrolled", **small_args("unrolled"))
    own = SolverSettings.of(deq)
    with pytest.raises(RuntimeError):
        with solver_settings([deq, unrolled], SolverSettings("fixed_point", 1e-2, 3)):
            assert SolverSettings.of(deq) == SolverSettings("fixed_point", 1e-2, 3, 1)
            raise RuntimeError("stop")
    assert SolverSettings.of(deq) == own and not is_deq(unrolled)
    with solver_settings(deq, SolverSettings(max_iter=1)):
        assert deq.max_iter == 1 and deq.tol == own.tol
    assert SolverSettings.of(deq) == own
    with solver_settings([deq, unrolled], SolverSettings(check_every=4)):  # only where the model has it
        assert deq.check_every == 4 and not hasattr(unrolled, "check_every")
    assert SolverSettings.of(deq) == own and own.check_every == 1
