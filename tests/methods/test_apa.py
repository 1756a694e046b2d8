"""APA: its unlearning is exact (equal to training on the retained data from scratch), a request
retrains only the shards that held the user, and the mixture is a per-sample sum of adapters."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from conftest import TRAIN

import e2urec.methods.apa
from e2urec.data import load_splits, prepare
from e2urec.data.protocol import Protocol
from e2urec.methods import Task, get_method
from e2urec.methods.apa import forget, read_homes, train_apa
from e2urec.model import apa, loader
from e2urec.model.scoring import score
from e2urec.model.tiny import TinyT5, build_tiny_t5

OPTIONS = {"shards": 2, "neighbours": 5}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Enough users that each shard holds some, with valid samples (the shared splits have one)."""
    folder = tmp_path_factory.mktemp("apa") / "data"
    prepare(
        folder, protocol=Protocol(last=20000, history=3, forget_ratio=0.2, sample=(200, 80, 80))
    )
    return load_splits(folder)


@pytest.fixture(scope="module")
def base(tmp_path_factory, data):
    """A backbone no shard has trained: the tiny T5 as built, its tokenizer on train's prompts."""
    folder = tmp_path_factory.mktemp("apa") / "base"
    config = TinyT5(
        vocab_size=500, d_model=32, d_ff=64, heads=2, encoder_layers=1, decoder_layers=1
    )
    build_tiny_t5([s.input for s in data["train"]], folder, config)
    return str(folder)


@pytest.fixture
def trains(monkeypatch):
    """The sample sets each shard trains on."""
    seen = []
    real = e2urec.methods.apa.train

    def spy(base, samples, valid, out, config, **options):
        seen.append(list(samples))
        return real(base, samples, valid, out, config, **options)

    monkeypatch.setattr(e2urec.methods.apa, "train", spy)
    return seen


def test_unlearning_equals_training_from_scratch_on_the_retained_data(tmp_path, base, data, trains):
    train, valid, test = data["train"], data["valid"], data["test"]
    config = TRAIN
    train_apa(base, train, valid, tmp_path / "full", config, OPTIONS)
    homes = read_homes(tmp_path / "full")
    user = Counter(s.user for s in train).most_common(1)[0][0]
    kept = [s for s in train if s.user != user]
    trains.clear()
    info = forget(tmp_path / "full", [user], kept, valid, tmp_path / "unlearned")
    assert info["retrained_shards"] == [homes[user]] and len(trains) == 1  # one shard retrained
    assert trains[0] == [s for s in kept if homes[s.user] == homes[user]]
    rest = [s for s in valid if s.user != user]
    train_apa(base, kept, rest, tmp_path / "scratch", config, OPTIONS, homes=homes)
    logits = {
        name: score(loader.load(tmp_path / name), test, 64)["log_odds"]
        for name in ("full", "unlearned", "scratch")
    }
    assert logits["unlearned"] == pytest.approx(logits["scratch"], abs=1e-4)
    assert logits["unlearned"] != pytest.approx(logits["full"], abs=1e-4)  # the test can fail
    pool = apa.read_pool(tmp_path / "unlearned")["samples"]
    assert pool and user not in {row[0] for row in pool}
    assert user not in read_homes(tmp_path / "unlearned")


def test_forget_refuses_training_data_that_still_holds_the_user(tmp_path, base, data):
    train, valid = data["train"], data["valid"]
    train_apa(base, train, valid, tmp_path / "full", TRAIN, OPTIONS)
    user = train[0].user
    with pytest.raises(ValueError, match=f"still holds samples of user.*{user}"):
        forget(tmp_path / "full", [user], train, valid, tmp_path / "out")


def test_the_mixture_is_the_sample_weighted_sum_of_the_adapters_updates():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    down, up = torch.randn(3, 2, 6), torch.randn(3, 5, 2)
    router = type("R", (), {})()
    router.weights = torch.softmax(torch.randn(4, 3), dim=1)  # 4 samples, 3 adapters
    mixed = apa.MixedLinear(layer, down, up, 0.5, router)
    x = torch.randn(4, 7, 6)
    for b in range(4):
        delta = sum(router.weights[b, k] * up[k] @ down[k] for k in range(3))
        merged = torch.nn.functional.linear(x[b], layer.weight + 0.5 * delta, layer.bias)
        torch.testing.assert_close(mixed(x)[b], merged, atol=1e-5, rtol=1e-5)


def test_a_causal_prompts_key_does_not_see_the_answer_being_scored():
    embeddings = torch.nn.Embedding(20, 8)
    yes, no = [11, 12, 2], [13, 12, 2]
    prompt = [0, 0, 5, 6, 7]  # left padding (mask 0), then the prompt
    ids = torch.tensor([prompt + yes, prompt + no])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]] * 2)
    keys = apa.prompt_keys(embeddings, ids, mask, [yes, no])
    torch.testing.assert_close(keys[0], keys[1])
    alone = apa.prompt_keys(embeddings, torch.tensor([[5, 6, 7]]), None, [])
    torch.testing.assert_close(keys[0], alone[0])
    blind = apa.prompt_keys(embeddings, ids, mask, [])  # without the cut the answer shows
    assert not torch.allclose(blind[0], blind[1])


def test_e2urec_on_an_apa_model_keeps_the_mixture(tmp_path, base, data):
    """The approximate phase of a deletion runs E2URec on the live APA model."""
    train, valid, test = data["train"], data["valid"], data["test"]
    train_apa(base, train, valid, tmp_path / "apa", TRAIN, OPTIONS)
    live = loader.load(tmp_path / "apa")
    twin = copy.deepcopy(live.model)  # E2URec's augmented model is a deep copy (aug_mode full)
    before = score(live, test, 64)["log_odds"]
    assert score(live, test, 64, model=twin)["log_odds"] == pytest.approx(before, abs=1e-6)
    user = train[0].user
    task = Task(
        str(tmp_path / "apa"),
        [s for s in train if s.user != user],
        [s for s in train if s.user == user],
        valid,
        tmp_path / "e2urec",
    )
    options = {"epochs": 1, "aug_epochs": 1, "lora_rank": 4, "lora_alpha": 8, "aug_mode": "full"}
    get_method("e2urec", options).unlearn(task)
    after = loader.load(tmp_path / "e2urec")
    mixed = [m for m in after.model.modules() if isinstance(m, apa.MixedLinear)]
    assert mixed and score(after, test, 64)["log_odds"] != pytest.approx(before, abs=1e-4)


def test_a_later_request_keeps_an_earlier_users_valid_samples_out(tmp_path, base, data):
    train, valid = data["train"], data["valid"]
    train_apa(base, train, valid, tmp_path / "v0", TRAIN, OPTIONS)
    first, second = [
        u
        for u, _ in Counter(s.user for s in valid if s.user in {t.user for t in train}).most_common(
            2
        )
    ]
    kept = [s for s in train if s.user != first]
    forget(tmp_path / "v0", [first], kept, valid, tmp_path / "v1")
    kept = [s for s in kept if s.user != second]
    forget(tmp_path / "v1", [second], kept, valid, tmp_path / "v2")  # valid still holds both
    pooled = {row[0] for row in apa.read_pool(tmp_path / "v2")["samples"]}
    assert pooled and not pooled & {first, second}
