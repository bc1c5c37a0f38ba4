"""``qgcal generate``: an ATLAS-style dijet sample with known truth."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "generate",
        help="write a generated ATLAS-style dijet sample (data, JZ-sliced MC, truth)",
        description="Write pseudo-data, Pythia-like MC in JZ slices (with JES/JER trees and a sum-of-weights "
        "histogram per file), a Herwig-like alternative MC and truth.json, as real ROOT TTrees. "
        "Jet pT is stored in MeV.",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--events", type=int, default=200_000, help="pseudo-data events (MC: the same, split over slices)")
    p.add_argument("--files", type=int, default=2, help="files per data sample and per MC slice")
    p.add_argument("--seed", type=int, default=1, help="random seed (same seed, same files)")
    p.add_argument(
        "--no-data-shift", action="store_true", help="pseudo-data shapes equal to MC (true scale factors are 1)"
    )
    p.add_argument(
        "--constituents",
        action="store_true",
        help="also write each jet's constituents (jet_nConstituents and constit_* branches) for a "
        "constituent tagger (docs/constituents.md); about seven times the file size",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.errors import QgcalError
    from qgcal.generate import generate_sample

    if args.events < 1 or args.files < 1:
        raise QgcalError("--events and --files must be positive")
    result = generate_sample(
        args.out,
        events=args.events,
        files=args.files,
        seed=args.seed,
        data_shift=not args.no_data_shift,
        constituents=args.constituents,
    )
    print(f"wrote {len(result.files)} files and {result.truth} under {args.out}")
    return 0
