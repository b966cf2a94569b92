"""One coverage-guided (atheris / libFuzzer) run of one target of tests/fuzz/targets.py:

    python -m tests.fuzz.harness TARGET [libFuzzer flags, e.g. -max_total_time=30 CORPUS_DIR]

Anything a target raises is a crash: libFuzzer writes the input to crash-* (in the current
directory, or -artifact_prefix=) and exits non-zero. tests/fuzz/run.py runs every target.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str]) -> None:
    import atheris

    logging.disable(logging.CRITICAL)
    name = argv[1]
    with atheris.instrument_imports(include=["agent", "controller"]):
        from tests.fuzz.targets import TARGETS

        target = TARGETS[name]
        # Builds the target's context and makes its lazy imports here, instrumented.
        target(b"")
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
