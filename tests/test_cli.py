"""The command line: help lists the commands; packaging keeps generic names out of site-packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "qgcal", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("generate", "run", "train", "serve", "demo", "validate"):
        assert cmd in out.stdout


def test_wheel_has_no_generic_top_level_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(Path(tmp_path).glob("qgcal-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"qgcal", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for needed in ("qgcal/stages/root2pkl.py", "qgcal/workflows/single.py", "qgcal/configs/demo.yaml"):
        assert needed in names
