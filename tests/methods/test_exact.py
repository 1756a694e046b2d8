"""The exact methods (Retrain, SISA, RecEraser, APA) never see a forgotten user's data: not in what
they train on, not in what chooses their epochs or their aggregation, not in the vocabulary of
the backbone they start from."""

from __future__ import annotations

from dataclasses import replace

import pytest

import e2urec.methods.apa
import e2urec.methods.receraser
import e2urec.methods.retrain
import e2urec.methods.sisa
import e2urec.model.tiny
from e2urec.bench import Bench, merge, preset
from e2urec.bench.run import setup
from e2urec.data.prompt import MOVIE, STAR_VALUES, stars, template_prompts
from e2urec.methods import get_method


@pytest.fixture
def seen(monkeypatch):
    """Every sample set handed to training, epoch choice, aggregation or the tokenizer."""
    log = {"train": [], "valid": [], "aggregator": [], "tokenizer": []}

    def spy_train(module):
        real = module.train

        def train(base, samples, valid, out, config, *rest, **options):
            log["train"].append(list(samples))
            log["valid"].append(list(valid))
            return real(base, samples, valid, out, config, *rest, **options)

        monkeypatch.setattr(module, "train", train)

    spy_train(e2urec.methods.retrain)
    spy_train(e2urec.methods.sisa)
    spy_train(e2urec.methods.apa)
    real_score = e2urec.methods.apa.score

    def pool(rec, samples, *rest, **options):  # what APA's weights are computed from
        log["valid"].append(list(samples))
        return real_score(rec, samples, *rest, **options)

    monkeypatch.setattr(e2urec.methods.apa, "score", pool)
    real_batches = e2urec.methods.receraser.shuffled_batches

    def batches(items, size, seed, sizes=None):
        log["aggregator"].append(list(items))
        return real_batches(items, size, seed, sizes)

    monkeypatch.setattr(e2urec.methods.receraser, "shuffled_batches", batches)
    real_tokenizer = e2urec.model.tiny.train_tokenizer

    def tokenizer(texts, vocab_size, *answers):
        log["tokenizer"].append(list(texts))
        return real_tokenizer(texts, vocab_size, *answers)

    monkeypatch.setattr(e2urec.model.tiny, "train_tokenizer", tokenizer)
    return log


def test_no_forgotten_users_data_reaches_an_exact_method(tmp_path, seen):
    bench = Bench.from_dict(merge(preset("smoke"), {"protocol": {"last": 1500, "canaries": 0}}))
    run = setup(bench, tmp_path, original=False)
    forget, retain = run.splits["forget"], run.splits["retain"]
    gone = {s.user for s in forget}
    assert gone and any(s.user in gone for s in run.splits["valid"])  # the test can fail
    options = {"sisa": {"shards": 2}, "receraser": {"shards": 2, "epochs": 1}, "apa": {"shards": 2}}
    for name in ("retrain", "sisa", "receraser", "apa"):
        get_method(name, options.get(name)).unlearn(run.task(name, replace(bench.train)))
    assert seen["train"] and seen["valid"] and seen["aggregator"] and seen["tokenizer"]
    kept = {s.input for s in retain}
    for samples in seen["train"] + seen["aggregator"]:
        assert {s.input for s in samples} <= kept
    for samples in seen["valid"]:
        assert samples and not {s.user for s in samples} & gone
    prompts = {s.input for split in run.splits.values() for s in split}
    for texts in seen["tokenizer"]:  # the template over catalogue titles: no user's prompt
        assert texts and not set(texts) & prompts


def test_template_prompts_show_every_title_beside_every_star_value():
    titles = [f"Film {i}" for i in range(7)]
    texts = template_prompts(titles, MOVIE, history=3)
    for title in titles[:3]:  # the first prompt's history; Film 3 is its target
        shown = {value for value in STAR_VALUES for t in texts if f"{title} ({stars(value)})" in t}
        assert shown == set(STAR_VALUES)
    assert all("***Film 3***" in t for t in texts[::2])  # each pass: the same two prompts
