"""The combined scale factors as ROOT TH1D histograms (written with uproot, no ROOT needed).

Layout of ``scale_factors.root``: one directory per tagger, working point and
parton, ``<tagger>/wp<wp>/<parton>/`` (``wp`` as ``f"{wp:g}"``, e.g.
``ntrk/wp0.6/quark/``), holding TH1Ds binned in jet pT (GeV):

* ``nominal``: the SF, with the statistical error as the bin error;
* ``stat_up``/``stat_down``, ``<group>_up``/``<group>_down``, ``total_up``/
  ``total_down``: SF + up or SF - down, bin errors 0 (the same names and
  values as the ``systematic`` input of corrections.json);
* ``flags``: 0 healthy, 1 flagged, 2 a fallback was written (an undefined SF
  as 1.0, an undefined uncertainty as 100 %), as in corrections.json.

ROOT files are not byte-reproducible (uproot writes a UUID and a timestamp);
the JSON outputs are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qgcal.artifacts import atomic_path
from qgcal.outputs.correction import (
    bin_edges,
    flag_code,
    published_values,
    series,
    systematic_names,
)

__all__ = ["histogram_path", "write_root"]


def histogram_path(tagger: str, wp: str, parton: str, name: str) -> str:
    return f"{tagger}/wp{wp}/{parton}/{name}"


def _th1(edges: list[float], values: Sequence[float], errors: Sequence[float], title: str) -> Any:
    import hist

    h = hist.Hist(
        hist.axis.Variable(edges, name="pt", label="jet p_{T} [GeV]"),
        storage=hist.storage.Weight(),
        name=title,
        label=title,
    )
    view = h.view()
    view.value[:] = np.asarray(values, dtype=float)
    view.variance[:] = np.asarray(errors, dtype=float) ** 2
    return h


def write_root(path: Path, records: Sequence[Mapping[str, Any]], groups: Sequence[str]) -> Path:
    """One TH1D per tagger, WP, parton and systematic name, plus ``flags``; atomic."""
    import uproot

    systs = systematic_names(groups)
    with atomic_path(path, ".root") as tmp, uproot.recreate(tmp) as f:
        for (tagger, wp, parton), recs in series(records).items():
            edges = bin_edges(recs)
            vals = [published_values(r, groups)[0] for r in recs]
            # the statistical error itself (not stat_up - nominal, which rounds); fallback 100 %
            stat = [
                float(r["stat"]) if r["sf"] is not None and r["stat"] is not None else v["nominal"]
                for r, v in zip(recs, vals)
            ]
            head = f"{tagger} WP {wp} {parton}"
            f[histogram_path(tagger, wp, parton, "nominal")] = _th1(
                edges, [v["nominal"] for v in vals], stat, f"{head}: SF (stat error)"
            )
            zeros = [0.0] * len(recs)
            for s in systs[1:]:
                f[histogram_path(tagger, wp, parton, s)] = _th1(edges, [v[s] for v in vals], zeros, f"{head}: SF {s}")
            f[histogram_path(tagger, wp, parton, "flags")] = _th1(
                edges, [float(flag_code(r, groups)) for r in recs], zeros, f"{head}: 0 healthy, 1 flagged, 2 fallback"
            )
    return path
