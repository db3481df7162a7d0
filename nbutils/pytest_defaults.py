"""A pytest plugin with the test-session defaults: the smoke profile, the MNIST cache of
`make data`, fresh checkpoints, and the ``--device`` option (``pytest --device cuda`` runs the
device-aware unit tests on a GPU; their fixture is in ``tests/conftest.py``).

pyproject.toml loads it for every pytest run in the repository (``addopts = "-p
nbutils.pytest_defaults"``), so ``pytest --nbval book/01_autoregressive.ipynb`` alone runs in
the smoke profile too. It sets the variables at import, before collection, so the kernels that
``pytest --nbval`` starts inherit them. Values already in the environment win (``make test``
sets its own).
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout, for an editable install
if not (ROOT / "pyproject.toml").exists():
    ROOT = Path.cwd()

os.environ.setdefault("NBUTILS_PROFILE", "smoke")

# `make data` fills .cache/data inside the checkout; use it when nothing else is configured.
if "NBUTILS_DATA" not in os.environ and (ROOT / ".cache" / "data" / "mnist.npz").exists():
    os.environ["NBUTILS_DATA"] = str(ROOT / ".cache" / "data")

# Notebooks under test train from scratch: checkpoints go to a folder of this session only.
if "NBUTILS_CKPT" not in os.environ:
    _ckpt = tempfile.mkdtemp(prefix="nbutils-ckpt-")
    os.environ["NBUTILS_CKPT"] = _ckpt
    atexit.register(shutil.rmtree, _ckpt, ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="cpu",
        help="torch device for the device-aware unit tests, e.g. cuda (default: cpu)",
    )
