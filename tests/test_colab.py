"""The learner's Colab path, end to end: a fresh virtual environment holding only what Colab
has (torch, numpy, matplotlib, ipywidgets, tqdm; no nbutils), the package installed the way
the notebooks' set-up cell installs it (pip, from the repository: here a local clone), and
one notebook run in the smoke profile on that environment. The install must pull no hidden
dependency and must leave the torch that was there.

It takes about two minutes (most of it installing torch into the new environment), so it
runs only with ``NBUTILS_COLAB_TEST=1``, which ``make test`` sets.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
COLAB_HAS = ["numpy", "matplotlib", "ipywidgets", "tqdm"]

pytestmark = pytest.mark.skipif(
    os.environ.get("NBUTILS_COLAB_TEST") != "1",
    reason="the Colab-path test builds a virtual environment (set NBUTILS_COLAB_TEST=1)",
)


def _run(cmd, **kwargs) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_colab_like_environment_installs_the_package_and_runs_a_notebook(tmp_path):
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(ROOT), str(clone)])
    venv = tmp_path / "colab"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    _run([python, "-m", "pip", "install", "-q", torch_pin, *COLAB_HAS])
    version = [python, "-c", "import torch; print(torch.__version__)"]
    before = _run(version).strip()
    missing = _run([python, "-c", "import importlib.util as u; print(u.find_spec('nbutils'))"])
    assert missing.strip() == "None", "the fresh environment already has nbutils"

    # what the set-up cell runs: pip install "nbutils @ git+<repository>"
    _run([python, "-m", "pip", "install", "-q", f"nbutils @ git+file://{clone}"])
    assert _run(version).strip() == before, "installing nbutils replaced the environment's torch"
    where = _run([python, "-c", "import nbutils; print(nbutils.__file__)"]).strip()
    assert str(venv) in where, f"nbutils was imported from {where}, not from the environment"

    env = {**os.environ, "NBUTILS_PROFILE": "smoke", "NBUTILS_CKPT": str(tmp_path / "ckpt"),
           "NBUTILS_DATA": os.environ.get("NBUTILS_DATA", str(ROOT / ".cache" / "data"))}  # fmt: skip
    env.pop("PYTHONPATH", None)
    out = tmp_path / "out"
    _run([python, "-m", "nbutils.run", str(clone / "book" / "00_data.ipynb"), "--out", str(out)],
         cwd=tmp_path, env=env)  # fmt: skip
    assert (out / "timings.json").exists()
