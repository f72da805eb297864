"""The ``ldrop`` command: LightningCLI's ``fit``, ``validate``, ``test`` and ``predict`` plus ldrop's own
:data:`COMMANDS`."""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from collections.abc import Sequence

from ldrop import __version__

#: ldrop's own commands, run before LightningCLI: name -> summary for ``ldrop --help``; each is the ``main(argv)``
#: of the module ``ldrop.cli.<name>``, imported when it runs (so ``ldrop --version`` imports neither Lightning nor
#: torch).
COMMANDS: dict[str, str] = {
    "compare": "Overlay budget sweeps (run folders or sweep files) in one plot and one Markdown table.",
    "export": "Write a trained checkpoint as a Hugging Face save_pretrained folder, or as ONNX graphs.",
    "profile": "Measure a device cost model (the input of ms / rtf budget targets).",
}


def main(argv: Sequence[str] | None = None) -> int | None:
    """Entry point of the ``ldrop`` console script.

    A failure a user can fix is printed as one ``ldrop: error: ...`` line with exit status 2
    (:func:`~ldrop.cli.errors.user_error_line`); ``LDROP_DEBUG=1`` raises it with the full traceback instead.
    SIGTERM or Ctrl+C (SIGINT) stops ``fit``/``validate``/``test``/``predict`` at the end of the batch, as one
    ``ldrop: stopped by SIGTERM|SIGINT ...`` line with exit status 143 or 130 (SIGUSR1 under SLURM too: 138); ``fit``
    first writes ``last.ckpt`` at the step reached. ldrop's own commands stop at once, their outputs absent.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("--version", "-V"):
        print(f"ldrop {__version__}")
        return 0
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ldrop.cli.errors import quiet_kept_disk_errors, user_error_line
    from ldrop.cli.lightning import harmless_warnings, run_lightning, sigterm_stops, stop_signal

    debug = os.environ.get("LDROP_DEBUG", "0") not in ("", "0")
    thread_hook = threading.excepthook
    if not debug:  # a full disk in TensorBoard's writer thread: the one line below, not that thread's traceback
        threading.excepthook = quiet_kept_disk_errors(thread_hook)
    try:
        if args and args[0] in COMMANDS:
            with sigterm_stops():  # a staged export folder is removed, not left behind
                return importlib.import_module(f"ldrop.cli.{args[0]}").main(args[1:])
        with warnings.catch_warnings(), sigterm_stops():
            for message in harmless_warnings(args):
                warnings.filterwarnings("ignore", message=message)
            run_lightning(None if argv is None else args, COMMANDS)
        return 0
    except (SIGTERMException, KeyboardInterrupt) as err:
        # a fit keeps last.ckpt at the step it reached; evaluation outputs are complete or absent
        print(f"ldrop: {getattr(err, 'line', f'stopped by {stop_signal().name}')}", file=sys.stderr)
        return 128 + stop_signal()
    except Exception as err:
        line = user_error_line(err)
        if line is None or debug:
            raise
        print(f"ldrop: error: {line} (LDROP_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    finally:
        threading.excepthook = thread_hook
