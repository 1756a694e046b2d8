"""Run by tests/test_multiprocess.py under `accelerate launch`: train DATA BASE OUT."""

import sys

import torch

from e2urec.data import load_splits
from e2urec.model.train import TrainConfig, train

if __name__ == "__main__":
    torch.set_num_threads(1)
    data, base, out = sys.argv[1:4]
    splits = load_splits(data)
    config = TrainConfig(epochs=2, patience=2, lr=3e-3, batch_size=16, eval_batch_size=32)
    train(base, splits["train"], splits["valid"], out, config)
