"""The learner's Colab path, end to end: a fresh virtual environment holding only what Colab
has (torch, numpy, matplotlib, ipywidgets, tqdm; no nbutils), the package installed the way
the notebooks' set-up cell installs it (pip, from the repository: here a local clone), and
one notebook run in the smoke profile on that environment. The set-up cell itself runs, on a
fake ``google.colab`` module, with the repository address pointed at the local clone. The
install must add nothing but nbutils (no hidden dependency) and must leave torch as it was.

It takes about two minutes (most of it installing torch into the new environment), so it
runs only with ``NBUTILS_COLAB_TEST=1``, which ``make test`` sets.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nbutils import repository

ROOT = Path(__file__).resolve().parents[1]
COLAB_HAS = ["numpy", "matplotlib", "ipywidgets", "tqdm"]

pytestmark = pytest.mark.skipif(
    os.environ.get("NBUTILS_COLAB_TEST") != "1",
    reason="the Colab-path test builds a virtual environment (set NBUTILS_COLAB_TEST=1)",
)


def _run(cmd, cwd, **kwargs) -> str:
    """Run outside the source tree, so that `import nbutils` can only find an installed one."""
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_colab_like_environment_installs_the_package_and_runs_a_notebook(tmp_path):
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(ROOT), str(clone)], tmp_path)
    venv = tmp_path / "colab"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], tmp_path)  # Colab's is recent
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    _run([python, "-m", "pip", "install", "-q", torch_pin, *COLAB_HAS], tmp_path)
    version = [python, "-c", "import torch; print(torch.__version__)"]
    before = _run(version, tmp_path).strip()
    missing = _run([python, "-c", "import importlib.util as u; print(u.find_spec('nbutils'))"],
                   tmp_path)  # fmt: skip
    assert missing.strip() == "None", "the fresh environment already has nbutils"

    # the notebook's own set-up cell, on a fake Colab, pointed at the local clone
    freeze = [python, "-m", "pip", "freeze"]
    packages = set(_run(freeze, tmp_path).splitlines())
    cells = json.loads((clone / "book" / "00_data.ipynb").read_text())["cells"]
    setup = next("".join(c["source"]) for c in cells if "google.colab" in "".join(c["source"]))
    setup = setup.replace(repository.address(clone), f"file://{clone}")
    fake = "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n"
    _run([python, "-c", fake + setup], tmp_path)
    added = {
        p.split("==")[0].split(" @ ")[0]
        for p in set(_run(freeze, tmp_path).splitlines()) - packages
    }
    assert added == {"nbutils"}, f"the install added or changed more than nbutils: {added}"
    assert _run(version, tmp_path).strip() == before, "installing nbutils replaced the torch"
    where = _run([python, "-c", "import nbutils; print(nbutils.__file__)"], tmp_path).strip()
    assert str(venv) in where, f"nbutils was imported from {where}, not from the environment"

    data = os.environ.get("NBUTILS_DATA", str(ROOT / ".cache" / "data"))
    env = {**os.environ, "NBUTILS_PROFILE": "smoke", "NBUTILS_CKPT": str(tmp_path / "ckpt"),
           "NBUTILS_DATA": data}  # fmt: skip
    env.pop("PYTHONPATH", None)
    out = tmp_path / "out"
    _run([python, "-m", "nbutils.run", str(clone / "book" / "00_data.ipynb"), "--out", str(out)],
         tmp_path, env=env)  # fmt: skip
    assert (out / "timings.json").exists()
