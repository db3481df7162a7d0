"""The book's MNIST classifier and the Frechet distance in its feature space.

There is no Inception network offline, and Inception features suit MNIST poorly anyway, so
sample quality is measured as a Frechet distance between 128-dimensional features of a small
CNN (:class:`MnistClassifier`) trained here. Its weights are committed
(``nbutils/assets/mnist_classifier.pt``, about 0.6 MB) with their SHA-256, and are reproduced by::

    python -m nbutils.classifier train      # about 5 minutes on 2 CPU cores, seed 0

Scores are comparable only within this book. Always print them beside the **floor**: the
distance between 10,000 training and the 10,000 test images, which is what a perfect sampler
would score against the test set at this sample size.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nbutils.data import Batches, load_mnist, to_unit
from nbutils.metrics import accuracy, frechet_from_stats, gaussian_stats
from nbutils.runtime import seed_everything
from nbutils.tensors import check_tensor

WEIGHTS = Path(__file__).parent / "assets" / "mnist_classifier.pt"
WEIGHTS_SHA256 = "824dcf17f6ac18b2a3afd80f918e026ede66c0a121f61d155a2bad92b62abeae"


class MnistClassifier(nn.Module):
    """A small CNN for 28x28 digits: four 3x3 conv blocks, global average pooling, a linear head.

    The 128-dimensional pooled vector (:meth:`features`) is the feature space of the book's
    Frechet distance. About 140k parameters.

    Shapes: x (B, 1, 28, 28) in [0, 1] -> logits (B, 10).
    """

    feature_dim = 128

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            nn.MaxPool2d(2),  # 14x14
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),  # 7x7
            *block(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, 128)."""
        check_tensor(x, "x", shape=("B", 1, 28, 28), floating=True)
        return self.body(x - 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ClassifierError(RuntimeError):
    """The committed classifier weights are missing or not the vetted ones."""


def load_classifier(path: Path = WEIGHTS, device=None) -> MnistClassifier:
    """The trained classifier in eval mode, after checking the weights' SHA-256."""
    if not path.exists():
        raise ClassifierError(
            f"no classifier weights at {path}; run `python -m nbutils.classifier train`"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if path == WEIGHTS and digest != WEIGHTS_SHA256:
        raise ClassifierError(
            f"{path} has SHA-256 {digest[:12]}..., expected {WEIGHTS_SHA256[:12]}...: the weights "
            "were changed; restore them from git or retrain and update WEIGHTS_SHA256"
        )
    model = MnistClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().to(device or "cpu")


def _as_unit_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, [1,] 28, 28) or float (N, 1, 28, 28) in [0, 1] -> float (N, 1, 28, 28)."""
    if images.dtype == torch.uint8:
        return to_unit(images)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    lo, hi = images.min().item(), images.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"float images must lie in [0, 1], got values in [{lo:.3f}, {hi:.3f}]; samples in "
            "[-1, 1] need nbutils.data.from_symmetric first (and clamp to [0, 1])"
        )
    return images.float()


@torch.no_grad()
def features(model: MnistClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Classifier features (N, 128) of images (uint8 or float in [0, 1]), computed in batches."""
    images = _as_unit_images(images)
    device = next(model.parameters()).device
    out = [
        model.features(images[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


class MnistFD:
    """Frechet distance of image sets to the MNIST test set, in the classifier's feature space.

    Example::

        fd = MnistFD()
        fd.test_accuracy           # the classifier's accuracy on the test set
        fd.floor()                 # 10k training images vs the test set
        fd.score(samples)          # samples: (N, 1, 28, 28) in [0, 1]
    """

    def __init__(self, device=None):
        self.model = load_classifier(device=device)
        test, labels = load_mnist("test")
        test_features = features(self.model, test)  # (10000, 128)
        self.reference = gaussian_stats(test_features)
        with torch.no_grad():
            logits = self.model.head(test_features.to(next(self.model.parameters()).device))
        #: The classifier's accuracy on the 10,000 test images.
        self.test_accuracy = accuracy(logits.cpu(), labels)

    def score(self, images: torch.Tensor) -> float:
        """Distance of ``images`` to the test set (use thousands of images for stable numbers)."""
        return frechet_from_stats(*gaussian_stats(features(self.model, images)), *self.reference)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The classifier's labels (N,) int64 for images (uint8, or float in [0, 1]): what a
        class-conditional sampler's class-correct rate is measured with."""
        feats = features(self.model, images, batch_size)  # (N, 128)
        head = self.model.head
        device = next(head.parameters()).device
        return torch.cat([head(f.to(device)).argmax(1).cpu() for f in feats.split(batch_size)])

    def floor(self, n: int = 10_000, seed: int = 0) -> float:
        """The distance of ``n`` random training images (a perfect sampler) to the test set."""
        return _floor(self, n, seed)


def _floor(fd: MnistFD, n: int, seed: int) -> float:
    train, _ = load_mnist("train")
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return fd.score(train[index])


@lru_cache(maxsize=1)
def test_accuracy() -> float:
    """The committed classifier's accuracy on the 10,000 test images."""
    model = load_classifier()
    images, labels = load_mnist("test")
    with torch.no_grad():
        logits = torch.cat([model(to_unit(images[i : i + 1000])) for i in range(0, 10_000, 1000)])
    return accuracy(logits, labels)


# ----------------------------------------------------------------------------- training script


def _augment(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
    """Random shifts of up to 2 pixels, then scaling to [0, 1]: (B, 28, 28) -> (B, 1, 28, 28)."""
    x = F.pad(to_unit(images), (2, 2, 2, 2))
    dx, dy = torch.randint(0, 5, (2,), generator=generator, device=images.device).tolist()
    return x[:, :, dy : dy + 28, dx : dx + 28], labels


def train_classifier(epochs: int = 4, batch_size: int = 128, seed: int = 0) -> MnistClassifier:
    """Train the classifier from scratch with a fixed seed (CPU, deterministic order)."""
    seed_everything(seed)
    images, labels = load_mnist("train")
    batches = Batches(images, labels, batch_size=batch_size, transform=_augment, seed=seed)
    model = MnistClassifier()
    steps = epochs * (len(images) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in tqdm(range(steps), desc="classifier"):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbutils.classifier")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="retrain the classifier and write its weights")
    train.add_argument("--out", type=Path, default=WEIGHTS)
    train.add_argument("--epochs", type=int, default=4)
    train.add_argument("--seed", type=int, default=0)
    sub.add_parser("check", help="accuracy of the committed weights and the distance floor")
    args = parser.parse_args(argv)
    if args.command == "train":
        started = time.time()
        model = train_classifier(args.epochs, seed=args.seed)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out)
        digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
        size = args.out.stat().st_size / 1e6
        print(f"wrote {args.out} ({size:.2f} MB) in {time.time() - started:.0f} s")
        print(f"SHA-256 {digest}: put it into WEIGHTS_SHA256 in {__file__}")
        return 0
    print(f"test accuracy {test_accuracy():.4f}")
    print(f"distance floor (10k train vs test) {MnistFD().floor():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
