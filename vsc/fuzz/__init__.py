"""A fuzzing kit for cards: ``python -m vsc.fuzz``, a harness, Hypothesis strategies.

The law (docs/robustness.md): *any input yields a well-formed response and
the card stays usable.* The kit, one job per module:

* :mod:`~vsc.fuzz.inputs`: what one input is (APDUs, power events, a
  management-key macro), its text form (seed and crash files) and binary
  form (libFuzzer);
* :mod:`~vsc.fuzz.corpus`: reading seed files and recorded transcripts;
  :mod:`~vsc.fuzz.seeds`: the generated seed corpus;
* :mod:`~vsc.fuzz.law`: what a well-formed answer is;
  :mod:`~vsc.fuzz.harness`: playing one input on a fresh card and judging
  it (:class:`Harness`); :mod:`~vsc.fuzz.piv`: the default target and its
  usability probe;
* :mod:`~vsc.fuzz.mutate`: structure-aware mutations;
  :mod:`~vsc.fuzz.campaign`: the plain mutational loop (:class:`Fuzzer`);
  :mod:`~vsc.fuzz.coverage`: sampled line coverage of the card's code;
  :mod:`~vsc.fuzz.libfuzzer`: the coverage-guided engine (atheris, optional);
  :mod:`~vsc.fuzz.cli`: ``python -m vsc.fuzz``;
* :mod:`~vsc.fuzz.strategies`: Hypothesis strategies (APDUs of every ISO
  case, BER-TLV, chained sequences, PIV commands, whole inputs) for your own
  property tests. It needs ``hypothesis`` and is not imported here.

For a property test of your own card::

    from hypothesis import given
    from vsc.fuzz import Harness
    from vsc.fuzz.strategies import fuzz_inputs

    @given(fuzz_inputs())
    def test_my_card_keeps_the_law(steps):
        assert Harness(my_card_factory, probe=None).run(steps).violation is None
"""

from .campaign import Fuzzer, Summary, load_seeds, replay, save_crash
from .cli import DEFAULT_CORPUS, main
from .harness import DEFAULT_TIMEOUT, Hang, Harness, Outcome, Run, Watchdog
from .inputs import FuzzInput, Step, StepKind
from .law import ProbeFailed, Violation, check_response
from .piv import FUZZ_SERIAL, piv_card, piv_probe

__all__ = [
    "DEFAULT_CORPUS",
    "DEFAULT_TIMEOUT",
    "FUZZ_SERIAL",
    "FuzzInput",
    "Fuzzer",
    "Hang",
    "Harness",
    "Outcome",
    "ProbeFailed",
    "Run",
    "Step",
    "StepKind",
    "Summary",
    "Violation",
    "Watchdog",
    "check_response",
    "load_seeds",
    "main",
    "piv_card",
    "piv_probe",
    "replay",
    "save_crash",
]
