"""MC non-closure: the method on another MC sample as pseudo-data, extracted minus true SF.

Histograms are exact expectations built here from known shapes (no statistical noise), so the
non-closure is the method's own bias: zero when its assumption holds (forward and central jets of a
class share one shape), and the known size when the pseudo-data's central gluons differ.
"""

from __future__ import annotations

from typing import Any

import hist
import numpy as np
import pytest
import yaml

from conftest import DEMO
from qgcal import extraction as fr
from qgcal.combine import NONCLOSURE_SUFFIX, combine_records, nonclosure_variations, specs_from_config
from qgcal.config import parse_config
from qgcal.contract import FLAVOUR_GLUON, FLAVOUR_LIGHT, FLAVOURS, REGION_CENTRAL, REGION_FORWARD, tagger_column

X = np.arange(20) + 0.5


def _shape(mu: float, sd: float) -> np.ndarray:
    p = np.exp(-0.5 * ((X - mu) / sd) ** 2)
    return p / p.sum()


def _cfg() -> Any:
    doc = yaml.safe_load(DEMO.read_text())
    doc["taggers"] = {"t": {"kind": "branch", "variable": "nTracks", "bins": {"n": 20, "low": 0, "high": 20}}}
    doc["taggers"]["t"]["quark_side"] = "low"
    doc["pt_bins_gev"] = [500, 600]
    doc["working_points"] = [0.5]
    doc["calibration"] = {"reweighting_min_mc_neff": 0}
    doc.pop("inference", None)
    return parse_config(doc)


def _hists(pq: np.ndarray, pg: np.ndarray, pg_central: np.ndarray | None = None) -> dict[str, Any]:
    """One tagger's MC histogram (region, flavour, pT, score): light quarks and gluons, exact yields."""
    h = hist.Hist(
        hist.axis.IntCategory([REGION_FORWARD, REGION_CENTRAL], name="region"),
        hist.axis.IntCategory(list(FLAVOURS), name="flavour"),
        hist.axis.Variable([500.0, 600.0], name="pt"),
        hist.axis.Regular(20, 0, 20, name="score"),
        storage=hist.storage.Weight(),
    )
    view = h.view()
    flav = list(h.axes["flavour"])
    for region, f_q in ((REGION_FORWARD, 0.6), (REGION_CENTRAL, 0.3)):
        ir = list(h.axes["region"]).index(region)
        g = pg if pg_central is None or region == REGION_FORWARD else pg_central
        for f, v in ((FLAVOUR_LIGHT, 1e4 * f_q * pq), (FLAVOUR_GLUON, 1e4 * (1 - f_q) * g)):
            view.value[ir, flav.index(f), 0, :] = v
            view.variance[ir, flav.index(f), 0, :] = v
    return {tagger_column("t"): h}


def _run(pseudo: dict[str, Any]) -> dict[tuple[str, int, str, str], tuple[float, float]]:
    cfg = _cfg()
    templates = _hists(_shape(7, 3), _shape(12, 4))
    ex = [
        fr.extract_inputs(cfg, fr.pseudo_data_inputs(templates[tagger_column("t")], templates[tagger_column("t")], 0))
    ]
    cuts = fr.frozen_cuts(cfg, {"t": ex})
    return fr.nonclosure(cfg, templates, pseudo, cuts)


def test_no_nonclosure_when_the_method_assumption_holds() -> None:
    # another generator: other quark and gluon shapes, but one shape per class in both regions
    got = _run(_hists(_shape(7.6, 3.2), _shape(11.5, 4.2)))
    for sf, true in got.values():
        assert sf != pytest.approx(1.0, abs=1e-3)  # a real SF ...
        assert sf == pytest.approx(true, abs=1e-9)  # ... recovered exactly


def test_central_gluons_unlike_forward_ones_give_the_nonclosure() -> None:
    pg = _shape(11.5, 4.2)
    got = _run(_hists(_shape(7.6, 3.2), pg, pg_central=_shape(12.5, 4.2)))
    diffs = {k[3]: sf - true for k, (sf, true) in got.items()}
    assert abs(diffs["quark"]) > 1e-3 and abs(diffs["gluon"]) > 1e-3


def _rec(sf: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "tagger": "ntrk", "working_point": 0.6, "parton": "quark", "pt_low": 500.0, "pt_high": 600.0,
        "sf": sf, "stat": 0.01, "cut": 20.0, "flags": [], **extra,
    }  # fmt: skip


def test_combine_adds_the_nonclosure_group() -> None:
    cfg = parse_config(yaml.safe_load(DEMO.read_text()))
    assert cfg.variations["herwig"].nonclosure == "non-closure"
    nominal = [_rec(0.95)]
    results = {n: [_rec(0.95)] for n in cfg.variations}
    results["herwig"] = [_rec(1.0, nonclosure=-0.03, nonclosure_sf=0.97, nonclosure_sf_true=1.0)]
    extra = nonclosure_variations(cfg, nominal, results)
    ((spec, recs),) = extra
    assert spec.name == "herwig" + NONCLOSURE_SUFFIX and spec.group == "non-closure"
    (r,) = combine_records([*specs_from_config(cfg), spec], nominal, {**results, spec.name: recs})
    assert r["variations"][spec.name] == pytest.approx(-0.03)
    assert r["groups"]["non-closure"] == pytest.approx({"up": 0.03, "down": 0.03})
    assert r["groups"]["parton shower"] == pytest.approx({"up": 0.05, "down": 0.05})
