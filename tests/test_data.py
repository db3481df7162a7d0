import gzip
import struct

import numpy as np
import pytest
import torch

from nbutils import data
from nbutils.data import mnist as mnist_module

mnist = pytest.mark.mnist


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NBUTILS_DATA", str(tmp_path))
    mnist_module._read_cache.cache_clear()
    yield tmp_path
    mnist_module._read_cache.cache_clear()


@mnist
@pytest.mark.parametrize(("split", "n"), [("train", 60_000), ("test", 10_000)])
def test_official_split_shapes_dtypes_and_label_counts(split, n):
    images, labels = data.load_mnist(split)
    assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert int(images.max()) == 255 and int(images.min()) == 0
    counts = {  # the official per-digit counts of MNIST
        "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    }[split]
    assert labels.bincount().tolist() == counts


@mnist
def test_cache_checksum_matches_the_recorded_one():
    with np.load(data.mnist_path()) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert data.arrays_sha256(arrays) == data.ARRAYS_SHA256


def test_missing_cache_says_how_to_fix(empty_cache):
    with pytest.raises(data.DataError, match="python -m nbutils.data fetch"):
        data.load_mnist("train")


def test_corrupt_cache_is_reported_and_kept(empty_cache):
    path = empty_cache / "mnist.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(data.DataError, match="unreadable"):
        data.load_mnist("test")
    assert path.read_bytes() == b"not a zip file at all"  # nothing was overwritten


def test_wrong_checksum_is_reported(empty_cache):
    fake = {k: np.zeros(s, np.uint8) for k, s in data.SHAPES.items()}
    np.savez(empty_cache / "mnist.npz", **fake)
    with pytest.raises(data.DataError, match="checksum"):
        data.load_mnist("train")


def test_wrong_shape_is_reported(empty_cache):
    fake = {k: np.zeros((3,), np.uint8) for k in data.SHAPES}
    np.savez(empty_cache / "mnist.npz", **fake)
    with pytest.raises(data.DataError, match="shape"):
        data.load_mnist("train")


def test_unknown_split():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        data.load_mnist("valid")


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_parser_round_trips_files_it_did_not_write():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (5,), dtype=np.uint8)
    assert np.array_equal(data.parse_idx(_idx(images)), images)
    assert np.array_equal(data.parse_idx(gzip.compress(_idx(labels))), labels)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x01\x00\x08\x01", "two zero bytes"),
        (b"\x00\x00\x0d\x01" + b"\x00" * 4, "type code"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x00" * 3, "10"),
        (b"\x00\x00\x08\x03\x00", "ends early"),
    ],
)
def test_idx_parser_rejects_bad_files(blob, message):
    with pytest.raises(data.DataError, match=message):
        data.parse_idx(blob)


def test_mirror_route_assembles_a_verified_split(monkeypatch):
    """The mirror route parses the four IDX files (served by a fake download here)."""
    rng = np.random.default_rng(1)
    files = {
        name: gzip.compress(_idx(rng.integers(0, 256, data.SHAPES[key], dtype=np.uint8)))
        for key, name in data.IDX_FILES.items()
    }
    monkeypatch.setattr(mnist_module, "_download", lambda url: files[url.rsplit("/", 1)[1]])
    arrays = mnist_module._arrays_from_mirrors()
    assert {k: v.shape for k, v in arrays.items()} == data.SHAPES
    with pytest.raises(data.DataError, match="checksum"):  # random data is not MNIST
        data.verify_arrays(arrays, "fake mirror")


def test_binarization_statistics():
    images = torch.full((20_000, 28, 28), 51, dtype=torch.uint8)
    images[:, :, 14:] = 204
    g = torch.Generator().manual_seed(0)
    x = data.binarize(images, generator=g)
    assert x.shape == (20_000, 1, 28, 28)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    # mean of 20,000 x 392 Bernoulli(p) draws: standard error below 2e-4
    assert abs(x[..., :14].mean().item() - 51 / 255) < 2e-3
    assert abs(x[..., 14:].mean().item() - 204 / 255) < 2e-3
    assert not torch.equal(x, data.binarize(images, generator=g))  # dynamic: fresh draws


def test_binarize_rejects_floats():
    with pytest.raises(TypeError, match="uint8"):
        data.binarize(torch.rand(2, 28, 28))


@mnist
def test_fixed_binarized_test_set_is_fixed():
    x, labels = data.fixed_binarized_test()
    y, _ = data.fixed_binarized_test()
    assert torch.equal(x, y) and x.shape == (10_000, 1, 28, 28) and labels.shape == (10_000,)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    images, _ = data.load_mnist("test")
    assert torch.all(x[:, 0][images == 0] == 0) and torch.all(x[:, 0][images == 255] == 1)
    assert abs(x.mean().item() - images.float().mean().item() / 255) < 1e-3


def test_dequantization_range_and_mean():
    images = torch.tensor([[0, 255], [7, 128]], dtype=torch.uint8).repeat(5000, 14, 14)
    x = data.dequantize(images, generator=torch.Generator().manual_seed(0))
    assert x.min() >= 0 and x.max() < 1
    k = images.float().unsqueeze(1)
    assert torch.all(x * 256 >= k) and torch.all(x * 256 < k + 1)  # stays inside its bin
    assert abs((x * 256 - k).mean().item() - 0.5) < 2e-3  # uniform noise has mean 1/2


def test_scalings():
    images = torch.tensor([0, 255], dtype=torch.uint8).repeat(1, 392).reshape(1, 28, 28)
    assert data.to_unit(images).shape == (1, 1, 28, 28)
    s = data.to_symmetric(images)
    assert s.min() == -1 and s.max() == 1
    assert torch.equal(data.from_symmetric(s), data.to_unit(images))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        data.to_unit(torch.zeros(2, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("name", list(data.TOY_SETS))
def test_toy_sets_are_seeded_2d_and_bounded(name):
    make = data.TOY_SETS[name]
    a = make(2000, generator=torch.Generator().manual_seed(0))
    b = make(2000, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2000, 2) and a.dtype == torch.float32 and torch.equal(a, b)
    assert a.abs().max() < 3.5 and a.std(0).min() > 0.3


def test_checkerboard_occupies_only_dark_squares():
    p = data.checkerboard(5000, generator=torch.Generator().manual_seed(0))
    cells = torch.floor(p).long() + 2  # square indices 0..3 along each axis
    assert torch.all((cells.sum(1) % 2) == 0)  # only one colour of the board
    assert len({tuple(c) for c in cells.tolist()}) == 8  # and all eight of its squares


def test_batches_cover_an_epoch_and_resume_exactly():
    x = torch.arange(10)
    batches = data.Batches(x, batch_size=5, seed=0)
    epoch = torch.cat([next(batches), next(batches)])
    assert sorted(epoch.tolist()) == list(range(10))
    state = batches.state_dict()
    ahead = [next(batches) for _ in range(3)]
    batches.load_state_dict(state)
    assert all(torch.equal(a, next(batches)) for a in ahead)


def test_batches_with_labels_and_transform():
    images = torch.full((8, 28, 28), 255, dtype=torch.uint8)
    labels = torch.arange(8)
    batches = data.Batches(images, labels, batch_size=4, transform=data.binarized, seed=1)
    x, y = next(batches)
    assert x.shape == (4, 1, 28, 28) and torch.all(x == 1) and y.shape == (4,)


def test_batches_reject_bad_arguments():
    with pytest.raises(ValueError, match="differ in length"):
        data.Batches(torch.zeros(3), torch.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 3\]"):
        data.Batches(torch.zeros(3), batch_size=5)
    for bad in (2.5, True, "2"):
        with pytest.raises(ValueError, match=r"batch_size must be an int in \[1, 3\], got"):
            data.Batches(torch.zeros(3), batch_size=bad)
    assert data.Batches(torch.zeros(3), batch_size=np.int64(2)).batch_size == 2
