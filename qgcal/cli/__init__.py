"""``qgcal``: a thin command line over the library (one module per command group).

Errors a user can cause (:class:`qgcal.errors.QgcalError`) end with one line,
``qgcal: error: ...``, and a non-zero exit code; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from qgcal import __version__
from qgcal.errors import QgcalError

__all__ = ["build_parser", "main"]

COMMANDS = ("generate", "run", "sweep", "combine", "report", "status", "slurm", "train", "serve", "demo", "validate")


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
    try:
        return int(args.func(args) or 0)
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
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
