"""Shared fixtures: a small prepared data set and a tiny trained recommender, built once."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
# Tiny models gain nothing from a second thread, and lose a lot when cores are shared.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `e2urec init` keeps the keys it makes in the user's config folder: not the tester's.
os.environ["E2UREC_KEY_DIR"] = tempfile.mkdtemp(prefix="e2urec-test-keys-")

from e2urec.data import Protocol, load_splits, prepare  # noqa: E402
from e2urec.methods import Task  # noqa: E402
from e2urec.model.tiny import TinyT5, build_tiny_t5  # noqa: E402
from e2urec.model.train import TrainConfig, train  # noqa: E402

TINY = TinyT5(vocab_size=500, d_model=32, d_ff=64, heads=2, encoder_layers=1, decoder_layers=1)
TRAIN = TrainConfig(epochs=1, lr=3e-3, batch_size=16, eval_batch_size=32)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "prepared"
    prepare(out, protocol=Protocol(last=200, history=3, forget_ratio=0.25))
    return out


@pytest.fixture(scope="session")
def splits(data_dir):
    return load_splits(data_dir)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, splits):
    """{"base": folder, "original": folder}: a tiny T5 tuned for one epoch on train."""
    root = tmp_path_factory.mktemp("models")
    build_tiny_t5([s.input for s in splits["train"]], root / "base", TINY)
    train(root / "base", splits["train"], splits["valid"], root / "original", TRAIN)
    return {"base": str(root / "base"), "original": str(root / "original"), "train": TRAIN}


@pytest.fixture
def make_task(trained, splits):
    """make_task(out, forget=None): a Task unlearning the shared original on the shared splits."""

    def make(out, forget=None) -> Task:
        return Task(
            trained["original"],
            splits["retain"],
            splits["forget"] if forget is None else forget,
            splits["valid"],
            out,
            base=trained["base"],
            train_config=trained["train"],
        )

    return make
