"""The combined scale factors as ROOT TH1D histograms (written with uproot, no ROOT needed).

The same content as corrections.json. Layout of ``scale_factors.root`` (``wp`` as
``f"{wp:g}"``), every histogram binned in jet pT (GeV, the calibration's bins):

* ``<tagger>/wp<wp>/<parton>/nominal``: the SF, bin error = its statistical error;
* ``<tagger>/wp<wp>/<parton>/<systematic>`` for ``stat_up``, ``stat_down``,
  ``<group>_up``/``_down``, ``total_up``/``total_down``: SF + up or SF - down, bin errors 0
  (the names and values of the ``systematic`` input of corrections.json);
* ``<tagger>/wp<wp>/<parton>/flags``: the ``qg_sf_flag`` bit mask (0 healthy);
* ``<tagger>/wp<wp>/<parton>/eff_data``, ``eff_mc``: the efficiencies (quark: quark
  efficiency, gluon: gluon rejection), bin error = their statistical error;
* ``<tagger>/wp<wp>/cut``: the working-point cut per pT bin (its title says the side);
* ``<tagger>/wp<wp>/wp_efficiency``: the quark efficiency the cut achieves on the extracted
  nominal MC (on a discrete tagger it differs from the WP label; WPs sharing a cut are
  named in the title);
* ``abs_eta_range``: one bin, [0, abs_eta_max): the calibrated |eta| range.

An undefined value is NaN (``undefined="error"``, as in corrections.json where it is not
evaluable), or the fallback with ``undefined="fallback"``; an undefined bin error is +inf
(uproot reads a NaN bin error as 0). ROOT files are not
byte-reproducible (uproot writes a UUID and a timestamp); the JSON outputs are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qgcal.artifacts import atomic_path
from qgcal.outputs.correction import (
    Undefined,
    bin_edges,
    efficiency_errors,
    flag_mask,
    published_values,
    series,
    systematic_names,
    wp_key,
)

__all__ = ["histogram_path", "write_root"]

NAN = float("nan")


def histogram_path(tagger: str, wp: str, parton: str, name: str) -> str:
    return f"{tagger}/wp{wp}/{parton}/{name}"


def _num(x: float | None) -> float:
    return NAN if x is None else float(x)


def _th1(edges: list[float], values: Sequence[float | None], errors: Sequence[float | None], title: str) -> Any:
    import hist

    h = hist.Hist(
        hist.axis.Variable(edges, name="pt", label="jet p_{T} [GeV]"),
        storage=hist.storage.Weight(),
        name=title,
        label=title,
    )
    view = h.view()
    view.value[:] = np.array([_num(v) for v in values], dtype=float)
    # an undefined error is +inf: uproot reads a NaN (or any non-positive) sumw2 as error 0
    view.variance[:] = np.array([math.inf if e is None else float(e) for e in errors], dtype=float) ** 2
    return h


def write_root(
    path: Path,
    records: Sequence[Mapping[str, Any]],
    groups: Sequence[str],
    *,
    abs_eta_max: float,
    undefined: Undefined = "error",
) -> Path:
    """Every histogram above; atomic."""
    import hist
    import uproot

    systs = systematic_names(groups)
    with atomic_path(path, ".root") as tmp, uproot.recreate(tmp) as f:
        eta: Any = hist.Hist(hist.axis.Variable([0.0, float(abs_eta_max)], name="abs_eta", label="|#eta|"))
        eta.view()[:] = 1.0
        f["abs_eta_range"] = eta
        cuts_written: set[tuple[str, str]] = set()
        for (tagger, wp, parton), recs in series(records).items():
            edges = bin_edges(recs)
            vals = [published_values(r, groups, undefined)[0] for r in recs]
            # the statistical error itself (not stat_up - nominal, which rounds); fallback 100 %
            stat = [r["stat"] if r["sf"] is not None else None for r in recs]
            if undefined == "fallback":
                stat = [v["nominal"] if s is None else s for s, v in zip(stat, vals)]
            head = f"{tagger} WP {wp} {parton}"
            f[histogram_path(tagger, wp, parton, "nominal")] = _th1(
                edges, [v["nominal"] for v in vals], stat, f"{head}: SF (stat error)"
            )
            zeros = [0.0] * len(recs)
            for s in systs[1:]:
                f[histogram_path(tagger, wp, parton, s)] = _th1(edges, [v[s] for v in vals], zeros, f"{head}: SF {s}")
            f[histogram_path(tagger, wp, parton, "flags")] = _th1(
                edges, [float(flag_mask(r, groups)) for r in recs], zeros, f"{head}: qg_sf_flag bits, 0 healthy"
            )
            for sample in ("data", "mc"):
                effs = [efficiency_errors(r)[sample] for r in recs]
                what = "quark efficiency" if parton == "quark" else "gluon rejection"
                f[histogram_path(tagger, wp, parton, f"eff_{sample}")] = _th1(
                    edges, [e for e, _ in effs], [s for _, s in effs], f"{head}: {what} in {sample} (stat error)"
                )
            if (tagger, wp) not in cuts_written:
                cuts_written.add((tagger, wp))
                side = recs[0].get("quark_side")
                rule = "value < cut" if side == "low" else "value >= cut"
                f[f"{tagger}/wp{wp}/cut"] = _th1(
                    edges, [r["cut"] for r in recs], zeros, f"{tagger} WP {wp}: cut, quark-tagged when {rule}"
                )
                shared = sorted({wp_key(w) for r in recs for w in r.get("wp_shared_with", [])})
                note = f"; shares its cut with WP {', '.join(shared)} in some pT bin" if shared else ""
                f[f"{tagger}/wp{wp}/wp_efficiency"] = _th1(
                    edges,
                    [r.get("wp_efficiency") for r in recs],
                    zeros,
                    f"{tagger} WP {wp}: achieved MC quark efficiency of the cut{note}",
                )
    return path
