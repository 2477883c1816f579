"""Make the clipbias package importable from a rule script and send logging to the rule log.

Each script's folder is on sys.path when Snakemake runs it, so ``import _bootstrap`` works
inside any conda env, where the package may not be installed.
"""

import logging
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
# Always first: another checkout's editable install (or a PYTHONPATH entry) may also provide
# a ``clipbias``; the rules of this checkout must run this checkout's code.
sys.path[:] = [str(SRC)] + [p for p in sys.path if Path(p or ".").resolve() != SRC]


def setup_logging(log_path: str) -> None:
    """Log to the rule's log file (and stderr), and route warnings there too."""
    handlers = [logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)]
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)

    def log_uncaught(exc_type, exc, tb):
        # Uncaught errors go to the rule log too, so --show-failed-logs shows the cause.
        logging.getLogger("clipbias").critical("stage failed", exc_info=(exc_type, exc, tb))

    sys.excepthook = log_uncaught
