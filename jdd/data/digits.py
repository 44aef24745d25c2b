"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, no download)."""

from __future__ import annotations

import numpy as np

from jdd.data.dataset import Dataset

#: Fraction of each class held out as the test split (fixed, stratified, seed 0).
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def load_digits() -> tuple[Dataset, Dataset]:
    """Load the bundled digits as NHWC images in [0, 1] with a fixed stratified split.

    The split is deterministic (seed 0, 25% of each class held out), so every run, method and
    benchmark sees the same train and test sets.

    Returns:
        (train, test): ``x`` is (n, 8, 8, 1) float32 in [0, 1], ``y`` (n,) int32; about 1347 train
        and 450 test examples.

    Example:
        >>> train, test = load_digits()
        >>> train.feature_shape, train.num_classes
        ((8, 8, 1), 10)
    """
    from sklearn.datasets import load_digits as _sk_digits

    raw = _sk_digits()
    x = (raw.images.astype(np.float32) / 16.0)[..., None]
    y = raw.target.astype(np.int32)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        k = int(round(DIGITS_TEST_FRACTION * len(idx)))
        test_idx.append(rng.choice(idx, size=k, replace=False))
    test_mask = np.zeros(len(y), bool)
    test_mask[np.concatenate(test_idx)] = True
    train = Dataset.from_arrays(x[~test_mask], y[~test_mask], 10, "digits/train")
    test = Dataset.from_arrays(x[test_mask], y[test_mask], 10, "digits/test")
    return train, test
