"""Plots of the extracted quark and gluon shapes, data vs MC, per pT bin (mplhep, ATLAS style)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qgcal.artifacts import atomic_path
from qgcal.config import Config

__all__ = ["plot_extractions", "setup_matplotlib"]


def setup_matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.ATLAS)
    return plt


def plot_extractions(cfg: Config, syst: str, extractions: Mapping[str, Sequence[Any]], out_dir: Path) -> list[Path]:
    """One PNG per tagger: rows = pT bins, columns = quark, gluon."""
    plt = setup_matplotlib()
    written = []
    for name, bins in sorted(extractions.items()):
        edges = np.asarray(cfg.taggers[name].bins.bin_edges())
        n = len(bins)
        fig, axes = plt.subplots(n, 2, figsize=(11, 3.2 * n), squeeze=False)
        fig.subplots_adjust(left=0.09, right=0.98, bottom=0.04, top=0.96, hspace=0.45, wspace=0.25)
        for i, ex in enumerate(bins):
            for j, (parton, mc, data) in enumerate(
                (("quark", ex.p_q_mc, ex.p_q_data), ("gluon", ex.p_g_mc, ex.p_g_data))
            ):
                ax = axes[i][j]
                if not np.isnan(mc).all():
                    ax.stairs(mc, edges, label=f"MC extracted {parton}", color="C0")
                if not np.isnan(data).all():
                    centres = 0.5 * (edges[1:] + edges[:-1])
                    ax.plot(centres, data, "ko", markersize=3, label=f"data extracted {parton}")
                ax.set_title(f"{ex.pt_low:g} < pT < {ex.pt_high:g} GeV", fontsize=11)
                ax.set_xlabel(name, fontsize=11)
                ax.set_ylabel("fraction of jets", fontsize=11)
                if ex.flags:
                    ax.text(0.02, 0.9, ",".join(sorted(set(ex.flags))), transform=ax.transAxes, fontsize=8, color="red")
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8, loc="upper right")
                else:
                    ax.text(0.5, 0.5, "undefined (see flags)", transform=ax.transAxes, ha="center")
        fig.suptitle(f"{cfg.name}: {name}, {syst}")
        path = out_dir / f"extracted_{name}.png"
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=70)
        plt.close(fig)
        written.append(path)
    return written
