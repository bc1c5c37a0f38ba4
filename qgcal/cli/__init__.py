"""``qgcal``: a thin command line over the library (one module per command group).

Errors a user can cause (:class:`qgcal.errors.QgcalError`) end with one line,
``qgcal: error: ...``, and a non-zero exit code; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from qgcal import __version__
from qgcal.errors import QgcalError

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "build_parser", "main"]

# Exit codes (README, "Exit codes"): 0 success; 1 a runtime failure (an unreadable input file, a
# crashed worker, a full disk); 2 a usage or config error (argparse's code too), found before any
# event is read; 130 Ctrl-C (128 + SIGINT); 141 the output pipe was closed (128 + SIGPIPE), quietly.
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

COMMANDS = (
    "generate",
    "run",
    "sweep",
    "combine",
    "report",
    "status",
    "clean",
    "slurm",
    "train",
    "serve",
    "demo",
    "validate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qgcal",
        description="Quark/gluon jet-tagging calibration: ROOT ntuples -> scale factors with uncertainties.",
        epilog="Run 'qgcal demo' for a complete example on a generated sample.",
    )
    parser.add_argument("--version", action="version", version=f"qgcal {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from qgcal.cli import (
        clean,
        combine,
        demo,
        generate,
        report,
        run,
        serve,
        slurm,
        status,
        sweep,
        train,
        validate,
    )

    generate.register(sub)
    run.register(sub)
    sweep.register(sub)
    combine.register(sub)
    report.register(sub)
    status.register(sub)
    clean.register(sub)
    slurm.register(sub)
    train.register(sub)
    serve.register(sub)
    demo.register(sub)
    validate.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    previous = _watch_interrupts()
    try:
        return _main(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _main(args: argparse.Namespace) -> int:
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        if _INTERRUPTED:  # the KeyboardInterrupt landed where Python ignores it (a weakref callback)
            raise KeyboardInterrupt
        return code
    except BrokenPipeError:
        return _broken_pipe()
    except QgcalError as err:
        print(f"qgcal: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a full disk, an unwritable output directory: name the path
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(
            f"qgcal: error: {where}{err.strerror or err}; check the path, its permissions and free space",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("qgcal: interrupted; valid artifacts are kept, rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


_INTERRUPTED: list[int] = []


def _on_sigint(signum: int, frame: Any) -> None:
    """Ctrl-C: KeyboardInterrupt as usual, remembered (Python drops one raised inside a weakref
    callback or ``__del__``, and the run went on to exit 0); a second Ctrl-C ends at once."""
    if _INTERRUPTED:
        os._exit(EXIT_INTERRUPTED)
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt


def _watch_interrupts() -> Any:
    """Install :func:`_on_sigint` (main thread, default handler only); return the handler it replaced."""
    _INTERRUPTED.clear()
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None
    return signal.signal(signal.SIGINT, _on_sigint)


def _broken_pipe() -> int:
    """``qgcal status --json | head``: the reader left; end quietly, as a tool killed by SIGPIPE would."""
    try:  # further writes (and the interpreter's final flush) must not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
