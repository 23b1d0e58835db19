"""MNIST-1D (Greydanus 2020), generated locally by the `mnist1d` package: no download, runs anywhere."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lottery.data.raw import RawSplits

# The paper holds out 5,000 of MNIST's 60,000 training examples; MNIST-1D gets the same share.
MNIST_VAL_SHARE = 5000 / 60000


def load_mnist1d(data_dir: Path | None = None, num_samples: int = 5000, seed: int = 42) -> RawSplits:
    """The standard MNIST-1D (5,000 examples, 4,000 train / 1,000 test, 40 float32 features).

    The generator seeds NumPy's global RNG; we restore that state so loading has no side effect.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    state = np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)
    x_train = torch.from_numpy(np.asarray(data["x"], dtype=np.float32))  # already centred, unit std
    x_test = torch.from_numpy(np.asarray(data["x_test"], dtype=np.float32))
    y_train = torch.from_numpy(np.asarray(data["y"], dtype=np.int64))
    y_test = torch.from_numpy(np.asarray(data["y_test"], dtype=np.int64))
    return RawSplits(x_train, y_train, x_test, y_test, 10, round(len(x_train) * MNIST_VAL_SHARE))
