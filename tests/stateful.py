"""What the stateful models of the card's security state (tests/test_piv_stateful.py,
tests/gids/test_stateful.py) share: the wire's CLA byte, and the check that a model can
fail. The models themselves stay apart: each writes out its own application's rules.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test


def cla(channel: int, chaining: bool = False) -> int:
    """ISO 7816-4's CLA for logical ``channel`` (0-3 first interindustry, 4-19 further)."""
    base = channel if channel < 4 else 0x40 | (channel - 4)
    return base | (0x10 if chaining else 0)


def assert_the_model_catches(
    machine: type[RuleBasedStateMachine], *, max_examples: int, steps: int
) -> None:
    """Run ``machine`` (a model over a deliberately broken applet) until it fails.

    derandomize: the same generated programs every run, so whether the model
    catches each broken applet does not depend on luck.
    """
    quick = settings(
        max_examples=max_examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )
    with pytest.raises(AssertionError):
        run_state_machine_as_test(machine, settings=quick)
