"""Plots of the extracted quark and gluon shapes, data vs MC, per pT bin (mplhep, ATLAS style).

Every figure carries the experiment label (:func:`experiment_label`). Text uses only glyphs
the style's fonts have (no mathtext symbols such as ``\\oplus`` that matplotlib would
substitute with a warning): tests/test_plot_warnings.py checks a plot run logs and warns nothing.

Speed (docs/performance.md): matplotlib costs ~0.1-0.3 s per panel, so the style is applied
once per process (re-applying it copies every rcParam), tick labels are plain text (not
mathtext: parsing them was a fifth of the drawing time), :func:`stairs` skips matplotlib's Bezier
search for a step's data limits, and :func:`render` draws the figures
of a call in parallel, one figure per task, in worker processes forked from this one (they
inherit matplotlib already imported and styled, so a worker starts in milliseconds);
:func:`render_cached` skips the figures already drawn from the same inputs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import pickle
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from qgcal.artifacts import atomic_path
from qgcal.config import Config

__all__ = [
    "DATA_STYLE",
    "FIGURE_INDEX",
    "experiment_label",
    "label_lines",
    "plot_extractions",
    "plot_workers",
    "preload_plotting",
    "render",
    "render_cached",
    "setup_matplotlib",
    "shape_errors",
    "stairs",
]

DATA_STYLE = {"fmt": "o", "color": "k", "markersize": 3, "elinewidth": 1}
FLAG_COLOUR = "0.35"  # the bins of an extracted shape below zero: grey, apart from the partons' colours
FIGURE_INDEX = ".qgcal-figures.json"  # beside the figures: which were drawn from which inputs (render_cached)


# rcParams after the style was applied by this process (None: not yet); compared on every call, so
# that a caller who changed the style in between (another library, a notebook) gets it back
_STYLED: dict[str, Any] | None = None
# On top of mplhep's ATLAS style, four settings that cut the drawing time by about a third and
# change no number on a plot: tick labels as plain text (the style asks for mathtext, which looks
# the same for plain numbers in the same font and costs a parse per label); titles at a fixed
# height (automatic placement measures every tick label of the axes first; nothing is drawn above
# them here); one minor tick between major ones instead of four (a tick is matplotlib's most
# expensive artist: two lines and two texts, and minor ticks were 40 % of the drawing).
_OVERRIDES = {
    "axes.formatter.use_mathtext": False,
    "axes.titley": 1.0,
    "xtick.minor.ndivs": 2,
    "ytick.minor.ndivs": 2,
}


def setup_matplotlib() -> Any:
    """pyplot with the Agg backend and the ATLAS style (applied once per process); returns ``pyplot``."""
    global _STYLED
    if _PRELOAD is not None and _PRELOAD is not threading.current_thread():
        _PRELOAD.join()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rc: Any = matplotlib.rcParams
    if _STYLED is None or any(rc[k] != v for k, v in _STYLED.items()):
        import mplhep

        plt.style.use([mplhep.style.ATLAS, _OVERRIDES])
        _STYLED = {k: rc[k] for k in (*mplhep.style.ATLAS, *_OVERRIDES) if k in rc}
    return plt


# the thread importing matplotlib while the per-file passes run (preload_plotting)
_PRELOAD: threading.Thread | None = None


def preload_plotting() -> None:
    """Import matplotlib and mplhep and apply the style in a background thread, now.

    Called when a run starts, so that the ~0.5-1 s of imports happen while this process only
    waits for its workers, not after the results are written. The first plot joins the thread.
    Not a daemon: an interpreter exiting early waits for it rather than killing it mid-import.
    """
    global _PRELOAD
    if _PRELOAD is None and _STYLED is None:
        _PRELOAD = threading.Thread(target=setup_matplotlib, name="qgcal-plot-preload")
        _PRELOAD.start()


def plot_workers(cfg: Config | None) -> int:
    """How many processes draw figures: ``executor.workers``, at most the CPUs this process may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    wanted = cfg.executor.workers if cfg is not None else cpus
    return max(1, min(wanted, cpus))


def _can_fork() -> bool:
    from qgcal.executors import can_fork

    return can_fork()


Job = tuple[Callable[..., Any], tuple[Any, ...]]


def render(jobs: Sequence[Job], workers: int, *, then: Callable[[], Sequence[Job]] | None = None) -> list[Any]:
    """``[fn(*args) for fn, args in jobs]``, spread over ``workers`` forked processes.

    Each job draws and writes its own figures. ``then`` runs in this process while the workers
    draw the first jobs, and returns more jobs, which go to the front of the queue (so put the
    longest there: a slow figure started last is what the others wait for). Results come back in
    the order of ``jobs`` followed by those of ``then``. Serial (in this process) with one worker,
    or where forking is not safe (another thread is running): the figures are the same bytes either
    way, since every process draws with the same style and fonts.
    """
    n = min(workers, len(jobs) + (1 if then is not None else 0))
    if n > 1:
        setup_matplotlib()  # imported and styled once here (joins preload_plotting): every worker inherits it
    if n <= 1 or not _can_fork():
        logging.getLogger("qgcal").debug("plots: %d jobs in this process", len(jobs))
        serial = [fn(*args) for fn, args in jobs]
        return serial + ([fn(*args) for fn, args in then()] if then is not None else [])
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, wait

    from qgcal.executors import fork_pool

    logging.getLogger("qgcal").debug("plots: %d+ jobs in %d forked processes", len(jobs), n)
    queue = deque(enumerate(jobs))
    results: dict[int, Any] = {}
    with fork_pool(n) as pool:
        running: dict[Any, int] = {}
        try:
            while queue or running or then is not None:
                while queue and len(running) < n:
                    i, (fn, args) = queue.popleft()
                    running[pool.submit(fn, *args)] = i
                if then is not None:
                    late = then()
                    then = None
                    queue.extendleft(reversed([(len(jobs) + k, job) for k, job in enumerate(late)]))
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    results[running.pop(fut)] = fut.result()
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
    return [results[i] for i in sorted(results)]


def _code_key() -> bytes:
    """What else decides a figure's pixels: the drawing code and the plotting libraries' versions."""
    from importlib import metadata

    h = hashlib.sha256()
    for mod in ("qgcal.plotting", "qgcal.outputs.plots"):
        spec = importlib.util.find_spec(mod)
        if spec is not None and spec.origin:
            h.update(Path(spec.origin).read_bytes())
    for lib in ("matplotlib", "mplhep", "numpy"):
        try:
            h.update(f"{lib}={metadata.version(lib)};".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=none;".encode())
    h.update(repr(sorted(_OVERRIDES.items())).encode())
    return h.digest()


class _KeyPickler(pickle.Pickler):
    """Pickles a job's arguments into stable bytes: a pydantic model as its JSON, a set sorted
    (a pickled set follows string hashing, which differs from one process to the next)."""

    def reducer_override(self, obj: Any) -> Any:
        from pydantic import BaseModel

        if isinstance(obj, BaseModel):
            return (str, (obj.model_dump_json(),))
        if isinstance(obj, (set, frozenset)):
            try:
                return (list, (sorted(obj),))
            except TypeError:
                return NotImplemented
        return NotImplemented


def _job_key(code: bytes, job: Job) -> str:
    fn, args = job
    buf = io.BytesIO()
    _KeyPickler(buf, protocol=5).dump((fn.__module__, fn.__qualname__, args))
    return hashlib.sha256(code + buf.getvalue()).hexdigest()


def render_cached(
    jobs: Sequence[Job], workers: int, index: Path, *, then: Callable[[], Sequence[Job]] | None = None
) -> list[Any]:
    """:func:`render`, skipping the jobs whose figures are already there, drawn from the same inputs.

    A job's key hashes its function, its arguments, the drawing code and the plotting libraries'
    versions; ``index`` (a JSON file beside the figures) maps each key to the files that job
    wrote. A job whose key is there and whose files exist is not run again: the figure would be
    the same bytes. ``qgcal report`` after ``qgcal combine`` (or a rerun on unchanged results)
    redraws nothing. Jobs return a figure's path or None.
    """
    code = _code_key()
    base = index.parent
    try:
        known: dict[str, Any] = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    used: dict[str, Any] = {}
    keys: list[str] = []

    def cached(key: str) -> bool:
        entry = known.get(key)
        return entry is not None and (entry["file"] is None or (base / entry["file"]).is_file())

    def split(batch: Sequence[Job]) -> list[Job]:
        todo = []
        for job in batch:
            key = _job_key(code, job)
            keys.append(key)
            if cached(key):
                used[key] = known[key]
            else:
                todo.append(job)
        return todo

    todo = split(jobs)
    late_todo: list[Job] = []

    def late() -> Sequence[Job]:
        late_todo.extend(split(then() if then is not None else []))
        return late_todo

    drawn = iter(render(todo, workers, then=late if then is not None else None))
    if then is None:
        late()
    out: list[Any] = []
    for key in keys:
        if key in used:
            entry = used[key]
        else:
            path = next(drawn)
            entry = used[key] = {"file": None if path is None else os.path.relpath(path, base)}
        out.append(None if entry["file"] is None else base / entry["file"])
    from qgcal.artifacts import write_json_atomic

    write_json_atomic(index, dict(sorted(used.items())))
    return out


def label_lines(cfg: Config | None, label: str | None = None, *, simulation: bool = False) -> tuple[str, str]:
    """('<label>', 'sqrt(s) = 13 TeV, 20 fb^-1') for a config; without one, a simulation label."""
    if cfg is None:
        return (label or "Simulation Internal"), ""
    text = label or cfg.plots.label
    if simulation and not text.startswith("Simulation"):
        text = f"Simulation {text}"
    lumi = f"{cfg.lumi_pb / 1000.0:.3g} fb" if cfg.lumi_pb >= 1000.0 else f"{cfg.lumi_pb:.3g} pb"
    sub = rf"√s = {cfg.plots.com_energy_tev:g} TeV" + ("" if simulation else rf", {lumi}$^{{-1}}$")
    return text, sub


def experiment_label(target: Any, label: str, sub: str = "", *, loc: str = "upper left", figure: bool = False) -> None:
    """'ATLAS <label>' (bold italic ATLAS) and an energy/luminosity line, as mplhep.atlas.label draws them.

    Built from offset boxes: mplhep's label redraws the whole figure to place the text
    (about 1 s per figure here), these need no extra draw. ``figure=True``: ``target``
    is a figure and the label goes in its top-left corner.
    """
    from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea, VPacker

    atlas = TextArea("ATLAS", textprops={"fontweight": "bold", "fontstyle": "italic", "fontsize": 13})
    text = TextArea(f" {label}", textprops={"fontsize": 13})
    rows: list[Any] = [HPacker(children=[atlas, text], pad=0, sep=0)]
    if sub:
        rows.append(TextArea(sub, textprops={"fontsize": 10}))
    box = VPacker(children=rows, pad=0, sep=3, align="left")
    if figure:
        anchored = AnchoredOffsetbox(
            loc="upper left",
            child=box,
            frameon=False,
            pad=0.2,
            borderpad=0.3,
            bbox_to_anchor=(0.0, 1.0),
            bbox_transform=target.transFigure,
        )
        target.add_artist(anchored)
    else:
        target.add_artist(AnchoredOffsetbox(loc=loc, child=box, frameon=False, pad=0.2, borderpad=0.4))


def _normalised_variance(values: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Per-bin variance of h_i / sum(h): (B^2 V_A + A^2 V_B) / (A + B)^4, A = bin i, B = the rest."""
    tot, vtot = float(np.sum(values)), float(np.sum(variances))
    if not tot > 0:
        return np.full_like(values, np.nan, dtype=float)
    a, va = values, variances
    b, vb = tot - a, vtot - variances
    return (b * b * va + a * a * vb) / tot**4


def shape_errors(ex: Any) -> dict[str, np.ndarray] | None:
    """Statistical errors of the extracted shapes (p_q/p_g, MC and data), first order with
    the fractions fixed, as the efficiencies' errors (qgcal.calibration.efficiencies).

    From the histograms of an :class:`qgcal.extraction.Extraction`; from extraction.json,
    the ``*_err`` entries when it has them; None when neither is there.
    """
    stored = {k: getattr(ex, f"{k}_err", None) for k in ("p_q_mc", "p_g_mc", "p_q_data", "p_g_data")}
    if all(v is not None for v in stored.values()):
        return {k: np.asarray(v, dtype=float) for k, v in stored.items()}
    if not all(hasattr(ex, k) for k in ("mc_forward", "mc_central", "data_forward", "data_central")):
        return None
    inv = ex.fractions().inverse()
    out = {}
    with np.errstate(all="ignore"):
        for sample, fwd, cen in (("mc", ex.mc_forward, ex.mc_central), ("data", ex.data_forward, ex.data_central)):
            v_f = _normalised_variance(fwd.values, fwd.variances)
            v_c = _normalised_variance(cen.values, cen.variances)
            out[f"p_q_{sample}"] = np.sqrt(inv[0, 0] ** 2 * v_f + inv[0, 1] ** 2 * v_c)
            out[f"p_g_{sample}"] = np.sqrt(inv[1, 0] ** 2 * v_f + inv[1, 1] ** 2 * v_c)
    return out


def _flag_negative(ax: Any, edges: np.ndarray, shapes: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> int:
    """Mark the bins where a shape is below zero (no fraction of jets is): grey triangles on every
    negative value, and the bins more than 1 sigma below zero shaded grey (colours belong to the
    partons). Returns how many are shaded."""
    significant = np.zeros(len(edges) - 1, dtype=bool)
    n_negative = 0
    centres = 0.5 * (edges[1:] + edges[:-1])
    for values, err in shapes:
        v = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
        neg = v < 0
        n_negative = max(n_negative, int(neg.sum()))
        if neg.any():
            ax.plot(centres[neg], v[neg], "v", color=FLAG_COLOUR, markersize=3, linestyle="none")
        e = np.zeros_like(v) if err is None else np.nan_to_num(np.asarray(err, dtype=float), nan=0.0)
        significant |= v + e < 0
    shaded = np.nonzero(significant)[0]
    if len(shaded):
        # one collection, not an axvspan per bin: a figure can shade a hundred bins, each a patch
        # costing ~2 ms to add and draw; full height in axes coordinates, the data limits untouched
        from matplotlib.collections import PolyCollection

        boxes = [[(edges[i], 0.0), (edges[i + 1], 0.0), (edges[i + 1], 1.0), (edges[i], 1.0)] for i in shaded]
        ax.add_collection(
            PolyCollection(boxes, transform=ax.get_xaxis_transform(), facecolor=FLAG_COLOUR, alpha=0.18, linewidths=0),
            autolim=False,
        )
    if n_negative:
        ax.text(
            0.98,
            0.9,
            f"unphysical < 0: {n_negative} bin(s) (triangles), {int(significant.sum())} by > 1 sigma (shaded)",
            transform=ax.transAxes,
            ha="right",
            fontsize=7,
            color=FLAG_COLOUR,
        )
    return int(significant.sum())


def stairs(
    ax: Any, values: np.ndarray, edges: np.ndarray, *, color: Any, baseline: Any = 0.0, fill: bool = False, **kw: Any
) -> Any:
    """``ax.stairs(values, edges, ...)`` with the data limits taken from the step's corners.

    ``Axes.add_patch`` finds a patch's limits by splitting its path into Bezier segments and
    solving each for its extrema: ~9 ms for a 60-bin step (a tenth of an extraction figure), for
    a path of straight lines whose extrema are its corners. Same patch, same limits, same
    autoscaling (the baseline sticks, as in ``ax.stairs``), so the figure is the same bytes.
    """
    from matplotlib.patches import StepPatch
    from matplotlib.path import Path as MplPath

    if fill:
        kw.setdefault("linewidth", 0)
        kw.setdefault("facecolor", color)
    else:
        kw.setdefault("edgecolor", color)
    patch = StepPatch(values, edges, baseline=baseline, fill=fill, **kw)
    ax.add_artist(patch)
    path = patch.get_path()
    corners = np.asarray(path.vertices)
    if path.codes is not None:
        corners = corners[np.asarray(path.codes) != MplPath.CLOSEPOLY]
    ax.update_datalim(corners)  # the baseline's corners included: no separate update for it
    if baseline is not None:
        patch.sticky_edges.y.append(np.min(baseline))
    # lazily, at the next draw, as Axes.stairs does: an eager autoscale_view per step costs ~1 ms
    # and grows with the artists already on the axes (tests/test_plot_stairs.py fails if this goes)
    ax._request_autoscale_view()
    return patch


# a parton's colour (its MC line and band, its data points) and its data marker in the extraction figure
PARTON_STYLE = {"quark": ("tab:blue", "o"), "gluon": ("tab:red", "s")}


def _shapes_panel(ax: Any, edges: np.ndarray, ex: Any, err: Any) -> list[tuple[Any, str]]:
    """One pT bin's extracted quark and gluon shapes on one axes: MC as a line over its stat. band,
    data as points, the bins below zero flagged. Returns the legend's entries (handle, label); an
    MC entry's handle is the (band, line) pair, drawn as one entry."""
    centres = 0.5 * (edges[1:] + edges[:-1])
    entries: list[tuple[Any, str]] = []
    shapes: list[tuple[np.ndarray, np.ndarray | None]] = []
    for parton in ("quark", "gluon"):
        colour, marker = PARTON_STYLE[parton]
        key = f"p_{parton[0]}"
        mc = np.asarray(getattr(ex, f"{key}_mc"), dtype=float)
        data = np.asarray(getattr(ex, f"{key}_data"), dtype=float)
        mc_err = None if err is None else err[f"{key}_mc"]
        data_err = None if err is None else err[f"{key}_data"]
        if not np.isnan(mc).all():
            handle: Any = stairs(ax, mc, edges, color=colour)
            if mc_err is not None:
                band = stairs(ax, mc + mc_err, edges, baseline=mc - mc_err, fill=True, color=colour, alpha=0.3)
                handle = (band, handle)
            entries.append((handle, f"MC, extracted {parton}" + (" (stat. unc.)" if mc_err is not None else "")))
        if not np.isnan(data).all():
            points = ax.errorbar(centres, data, yerr=data_err, **{**DATA_STYLE, "fmt": marker, "color": colour})
            entries.append((points, f"data, extracted {parton}"))
        shapes += [(mc, mc_err), (data, data_err)]
    ax.axhline(0.0, color="grey", linewidth=0.6)
    _flag_negative(ax, edges, shapes)
    return entries


def _plain_bin(ex: Any) -> SimpleNamespace:
    """What one pT bin's panels need, as plain arrays (cheap to send to a worker process)."""
    err = shape_errors(ex)
    shapes = {k: np.asarray(getattr(ex, k), dtype=float) for k in ("p_q_mc", "p_g_mc", "p_q_data", "p_g_data")}
    errors = {} if err is None else {f"{k}_err": np.asarray(v, dtype=float) for k, v in err.items()}
    return SimpleNamespace(pt_low=ex.pt_low, pt_high=ex.pt_high, flags=list(ex.flags), **shapes, **errors)


def plot_extractions(cfg: Config, syst: str, extractions: Mapping[str, Sequence[Any]], out_dir: Path) -> list[Path]:
    """One PNG per tagger: rows = pT bins, columns = quark, gluon; stat errors on data and MC.

    The taggers' figures are drawn in parallel (:func:`render`, ``executor.workers`` processes),
    and only when their inputs changed (:func:`render_cached`, index :data:`FIGURE_INDEX`): a rerun
    on unchanged results (all artifacts reused, or ``--force`` giving the same bytes) draws nothing.
    Every figure returned is touched: a kept one shows the ``extraction.json`` just written, and
    ``qgcal combine`` copies the nominal figures newer than that file (it draws the others).
    """
    jobs = [
        (_extraction_figure, (cfg, syst, name, [_plain_bin(ex) for ex in bins], out_dir))
        for name, bins in sorted(extractions.items())
    ]
    paths: list[Path] = render_cached(jobs, plot_workers(cfg), out_dir / FIGURE_INDEX)
    for path in paths:
        os.utime(path)
    return paths


def _extraction_figure(cfg: Config, syst: str, name: str, bins: Sequence[Any], out_dir: Path) -> Path:
    """One panel per pT bin, two columns, each with the quark and the gluon shapes of data and MC.

    Quark and gluon share a panel, as in ATLAS's q/g calibration figures: the two shapes the
    method separates are compared where they overlap, and the figure has half the panels of one
    per (pT bin, parton), which halves its cost (an empty panel's ATLAS ticks cost as much as
    what it holds; ``benchmarks/bench_figures.py``). The panels share the tagger axis, so only
    the bottom of each column carries its tick labels and title, and one legend serves all.
    """
    from matplotlib.legend_handler import HandlerTuple

    plt = setup_matplotlib()
    edges = np.asarray(cfg.taggers[name].bins.bin_edges())
    n = len(bins)
    cols = 2 if n > 1 else 1
    rows = -(-n // cols)
    height = 3.4 * rows + 0.6
    fig, axes = plt.subplots(rows, cols, figsize=(11, height), squeeze=False, sharex=True)
    # the top margin holds the experiment label (left), the title (right) and, below the title, the legend
    top, bottom = 1.0 - 1.0 / height, 0.75 / height  # margins in inches, for any number of rows
    fig.subplots_adjust(left=0.09, right=0.98, bottom=bottom, top=top, hspace=0.3, wspace=0.25)
    legend = True
    for k, ex in enumerate(bins):
        ax = axes.flat[k]
        err = shape_errors(ex)
        entries = _shapes_panel(ax, edges, ex, err)
        ax.set_title(f"{ex.pt_low:g} < jet pT < {ex.pt_high:g} GeV", fontsize=11)
        if k + cols >= n:  # the last panel of its column (above an empty cell too) carries the tagger axis
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(f"{name} (tagger value)", fontsize=11)
        if k % cols == 0:
            ax.set_ylabel("fraction of jets per bin", fontsize=10)
        if ex.flags:
            ax.text(0.02, 0.9, ",".join(sorted(set(ex.flags))), transform=ax.transAxes, fontsize=8, color="red")
        if err is None:
            ax.text(0.02, 0.8, "no errors stored", transform=ax.transAxes, fontsize=7, color="grey")
        if not entries:
            ax.text(0.5, 0.5, "undefined (see flags)", transform=ax.transAxes, ha="center")
        elif legend:  # one legend, in the top margin: beside the experiment label, under the title
            handles, labels = zip(*entries)
            fig.legend(
                handles,
                labels,
                ncols=2,
                fontsize=8,
                loc="upper center",
                bbox_to_anchor=(0.5, 1.0 - 0.28 / height),
                frameon=False,
                handler_map={tuple: HandlerTuple(ndivide=1)},
            )
            legend = False
    for ax in axes.flat[n:]:  # an odd number of bins leaves the last cell empty
        ax.set_visible(False)
    label, sub = label_lines(cfg)
    experiment_label(fig, label, sub, figure=True)
    fig.text(0.98, 0.998, f"{cfg.name}: {name}, {syst}", ha="right", va="top", fontsize=12)
    path = out_dir / f"extracted_{name}.png"
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=70)
    plt.close(fig)
    return path
