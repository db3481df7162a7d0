import hashlib

import pytest
import torch

from nbutils import classifier
from nbutils.data import load_mnist

pytestmark = pytest.mark.mnist


def test_committed_weights_match_their_checksum_and_size():
    blob = classifier.WEIGHTS.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == classifier.WEIGHTS_SHA256
    assert len(blob) < 1_000_000


def test_classifier_reaches_99_percent_on_the_test_set():
    assert classifier.test_accuracy() >= 0.99


def test_altered_weights_are_refused(tmp_path, monkeypatch):
    fake = tmp_path / "w.pt"
    fake.write_bytes(classifier.WEIGHTS.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(classifier, "WEIGHTS", fake)
    with pytest.raises(classifier.ClassifierError, match="SHA-256"):
        classifier.load_classifier(fake)


@pytest.fixture(scope="module")
def fd():
    return classifier.MnistFD()


def test_distance_floor_is_small_and_a_shift_is_not(fd):
    floor = fd.floor(n=5000)
    images, _ = load_mnist("train")
    shifted = torch.roll(images[:5000], shifts=4, dims=2)  # digits moved 4 pixels right
    noise = torch.rand(5000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert floor < fd.score(shifted) < fd.score(noise)
    assert floor < 0.1 * fd.score(shifted)


def test_score_rejects_symmetric_images(fd):
    with pytest.raises(ValueError, match="from_symmetric"):
        fd.score(torch.rand(10, 1, 28, 28) * 2 - 1)


def test_predicted_labels_give_the_test_accuracy(fd):
    images, labels = load_mnist("test")
    predicted = fd.predict(images)
    assert predicted.shape == labels.shape and predicted.dtype == torch.long
    assert (predicted == labels).double().mean().item() == pytest.approx(fd.test_accuracy)
    flipped = fd.predict(torch.flip(images[:500], dims=[1]))  # digits upside down
    assert (flipped == labels[:500]).double().mean() < 0.7
