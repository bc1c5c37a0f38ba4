"""Plots are off the critical path: results first, figures drawn in parallel, the same bytes.

* the final pass writes scale_factors.json, cuts.json and extraction.json before it draws any figure;
* :func:`qgcal.plotting.render` runs its jobs in forked processes and returns their results in
  order (the late jobs of ``then`` included), and a figure drawn in a worker is byte-identical to
  the same figure drawn serially;
* a run with plots draws every extraction figure, with several workers as with one, and a rerun
  on unchanged results draws none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _figure(path: Path, n: int) -> tuple[int, str]:
    """A small styled figure (top level: the pool pickles it by name); returns (pid, file)."""
    from qgcal.plotting import experiment_label, setup_matplotlib

    plt = setup_matplotlib()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.stairs([1.0, 2.0 + n, 1.5], [0.0, 1.0, 2.0, 3.0], label=f"figure {n}")
    ax.set_title(f"figure {n}")
    ax.legend()
    experiment_label(ax, "Internal", "√s = 13 TeV")
    fig.savefig(path, format="png", dpi=50)
    plt.close(fig)
    return os.getpid(), path.name


def test_render_forks_keeps_order_and_draws_the_same_bytes(tmp_path):
    """In a fresh interpreter: threads left running by other tests (Dask, Slurm helpers) would make
    render fall back to serial drawing in this process (a forked thread's locks stay held)."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "import test_deferred_plots as t; t.check_render(Path(sys.argv[2]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def check_render(tmp_path: Path) -> None:
    from qgcal.plotting import _can_fork, render

    assert _can_fork(), "a fresh interpreter must be able to fork"
    serial, forked = tmp_path / "serial", tmp_path / "forked"
    serial.mkdir()
    forked.mkdir()
    jobs = [(_figure, (serial / f"f{n}.png", n)) for n in range(3)]
    late = [(_figure, (serial / "late.png", 9))]
    one = render(jobs, 1, then=lambda: late)
    jobs = [(_figure, (forked / f"f{n}.png", n)) for n in range(3)]
    late = [(_figure, (forked / "late.png", 9))]
    two = render(jobs, 2, then=lambda: late)
    assert [name for _, name in one] == [name for _, name in two] == ["f0.png", "f1.png", "f2.png", "late.png"]
    assert {pid for pid, _ in one} == {os.getpid()}
    assert os.getpid() not in {pid for pid, _ in two}  # drawn by workers
    for name in ("f0.png", "f1.png", "f2.png", "late.png"):
        assert (serial / name).read_bytes() == (forked / name).read_bytes(), name


def _fails() -> None:
    raise ValueError("no such figure")


def test_render_raises_a_job_error(tmp_path):
    from qgcal.plotting import render

    with pytest.raises(ValueError, match="no such figure"):
        render([(_figure, (tmp_path / "a.png", 0)), (_fails, ())], 2)


@pytest.mark.parametrize("workers", [1, 2])
def test_results_are_written_before_any_plot(small_sample, make_config, monkeypatch, workers):
    import qgcal.plotting
    from qgcal.workflows.single import run_systematic

    _, cfg = make_config(small_sample, mutate=lambda d: d["executor"].update(workers=workers))
    results = cfg.output_path / "results" / "nominal"
    seen: list[bool] = []
    real = qgcal.plotting.render

    def watched(jobs, n, **kw):  # type: ignore[no-untyped-def]
        seen.append(all((results / f).is_file() for f in ("scale_factors.json", "cuts.json", "extraction.json")))
        return real(jobs, n, **kw)

    monkeypatch.setattr(qgcal.plotting, "render", watched)
    run_systematic(cfg, "nominal")
    assert seen == [True]
    drawn = sorted(p.name for p in (results / "plots").glob("*.png"))
    assert drawn == sorted(f"extracted_{t}.png" for t in cfg.taggers)
    for p in (results / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_on_unchanged_results_draws_no_extraction_figure(small_sample, make_config, monkeypatch):
    """The extraction figures are keyed by their inputs (render_cached): a rerun that reuses every
    artifact, or redoes them with --force (the same bytes), draws nothing; a figure gone is drawn
    again, alone."""
    import qgcal.plotting
    from qgcal.workflows.single import run_systematic

    _, cfg = make_config(small_sample, mutate=lambda d: d["executor"].update(workers=1))
    plots = cfg.output_path / "results" / "nominal" / "plots"
    drawn: list[list[str]] = []
    real = qgcal.plotting.render

    def watched(jobs, n, **kw):  # type: ignore[no-untyped-def]
        drawn.append(sorted(args[2] for _, args in jobs))  # the tagger of each extraction figure
        return real(jobs, n, **kw)

    monkeypatch.setattr(qgcal.plotting, "render", watched)
    run_systematic(cfg, "nominal")
    before = {p.name: p.read_bytes() for p in plots.glob("*.png")}
    run_systematic(cfg, "nominal")
    run_systematic(cfg, "nominal", force=True)
    data = (plots.parent / "extraction.json").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns >= data for p in plots.glob("*.png"))  # what combine copies: kept ones too
    first = min(cfg.taggers)
    (plots / f"extracted_{first}.png").unlink()
    run_systematic(cfg, "nominal")
    assert drawn == [sorted(cfg.taggers), [], [], [first]]
    assert {p.name: p.read_bytes() for p in plots.glob("*.png")} == before


CALLS: list[int] = []


def _counted(path: Path, n: int) -> Path:
    CALLS.append(n)
    path.write_bytes(b"figure %d" % n)
    return path


def test_render_cached_redraws_only_what_changed(tmp_path):
    from qgcal.plotting import render_cached

    index = tmp_path / ".qgcal-figures.json"
    CALLS.clear()

    def jobs(m: int) -> list:  # type: ignore[type-arg]
        return [(_counted, (tmp_path / "a.png", 1)), (_counted, (tmp_path / "b.png", m))]

    def late() -> list:  # type: ignore[type-arg]
        return [(_counted, (tmp_path / "c.png", 3))]

    first = render_cached(jobs(2), 1, index, then=late)
    assert first == [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]
    assert sorted(CALLS) == [1, 2, 3]
    CALLS.clear()
    assert render_cached(jobs(2), 1, index, then=late) == first  # same inputs: nothing drawn
    assert CALLS == []
    assert render_cached(jobs(5), 1, index, then=late) == first  # one input changed: that figure only
    assert CALLS == [5]
    CALLS.clear()
    (tmp_path / "c.png").unlink()  # a figure gone: drawn again
    render_cached(jobs(5), 1, index, then=late)
    assert CALLS == [3]
