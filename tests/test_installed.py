"""The installed package (a wheel, non-editable) as a user runs it: from the checkout's root.

Regression for the README's first command failing from a fresh clone: the fork
server started with the current directory first on ``sys.path`` and so imported
the checkout's ``qgcal/`` (without ``workflows``/``stages``, which are mapped at
install time) instead of the installed package; every worker died on import.

The wheel goes into a fresh venv of its own. Its dependencies come from the test
environment through a ``.pth`` line naming that environment's site-packages: a
plain path line, so the test environment's own qgcal (an editable finder, itself
set up by a ``.pth`` file there) is not seen, and the venv's qgcal, earlier on
``sys.path``, is the one imported. That keeps the test offline and fast while the
package under test is exactly what ``pip install .`` installs.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import qgcal
from conftest import REPO, write_config


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("qgcal-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel (no editable install); returns its bin/ folder."""
    env = tmp_path_factory.mktemp("venv") / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "qgcal-test-deps.pth").write_text("".join(f"{p}\n" for p in sorted(outer)))
    where = subprocess.run(
        [str(python), "-P", "-c", "import qgcal.workflows, sys; print(qgcal.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=env,
    ).stdout.strip()
    assert where.startswith(site), where  # the venv's own copy, not the checkout or the test environment's
    return env / "bin"


def test_wheel_has_no_generic_top_level_packages(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"qgcal", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for needed in ("qgcal/stages/root2pkl.py", "qgcal/workflows/single.py", "qgcal/configs/demo.yaml"):
        assert needed in names


def test_installed_qgcal_calibrates_from_the_checkout_root(installed, small_sample, tmp_path):
    """``qgcal run`` with 2 pool workers, started in the repository root, equals an in-process run."""
    assert (REPO / "qgcal" / "__init__.py").is_file() and not (REPO / "qgcal" / "workflows").exists()
    cfg_path, cfg = write_config(small_sample, tmp_path / "installed", name="installed")
    proc = subprocess.run(
        [str(installed / "qgcal"), "-q", "run", "--config", str(cfg_path), "--syst", "nominal", "--workers", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    _, ref = write_config(small_sample, tmp_path / "reference", name="reference")
    qgcal.run(ref, "nominal", workers=1)
    got = (cfg.output_path / "results" / "nominal" / "scale_factors.json").read_bytes()
    want = (ref.output_path / "results" / "nominal" / "scale_factors.json").read_bytes()
    assert got == want


def test_a_worker_that_cannot_import_is_reported_as_that():
    """One line naming the module and the import error, not "killed by a signal or the OOM killer"."""
    from qgcal.errors import QgcalError
    from qgcal.executors import make_executor

    with pytest.raises(QgcalError) as err:
        make_executor("process", 2, preload=["qgcal_no_such_module"])
    text = str(err.value)
    assert "\n" not in text
    assert "cannot import qgcal_no_such_module" in text and "No module named 'qgcal_no_such_module'" in text
    assert "signal" not in text and "memory" not in text
