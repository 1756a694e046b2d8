"""The paper preset is the paper's setting: each value held to the official script it comes from
(github.com/justarter/E2URec), and the step counts those scripts keep are the steps that run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

import e2urec.methods.base
import e2urec.methods.e2urec
from e2urec.bench.config import Bench, preset
from e2urec.data.sample import YES, Sample
from e2urec.methods import Task, get_method
from e2urec.methods.base import ML1M_FORGET, step_limited
from e2urec.model.train import shuffled_batches

# (preset field, official value, where it is set in the official code)
OFFICIAL = [
    ("train.lr", 5e-4, "train_normal.sh:11, --lr 0.0005 (the original)"),
    ("train.batch_size", 32, "normal_train.py:184, default (train_normal.sh passes none)"),
    ("train.epochs", 100, "normal_train.py:182, default --epochs 100"),
    ("train.patience", 3, "normal_train.py:190, default --endure_times 3"),
    ("e2urec.lr", 1e-3, "train_e2urec.sh:27, --lr 0.001"),
    ("e2urec.batch_size", 16, "train_e2urec.sh:27, --batch_size 16"),
    ("e2urec.weight", 0.6, "train_e2urec.sh:27, --weight 0.6"),
    ("e2urec.alpha", 2.0, "train_e2urec.sh:27, --alpha 2"),
    ("e2urec.steps", 1000, "train_e2urec.sh:35, model_1000.pt evaluated"),
    ("e2urec.forget_epochs", 1, "unlearning_e2urec.py:224, default --forget_epoch 1"),
    ("e2urec.lora_rank", 16, "unlearning_e2urec.py:49, r=16"),
    ("e2urec.lora_alpha", 32, "unlearning_e2urec.py:50, lora_alpha=32"),
    ("e2urec.lora_dropout", 0.05, "unlearning_e2urec.py:52, lora_dropout=0.05"),
    ("e2urec.target", "vocabulary", "utils.py:270-296, compute_forced_kl: softmax over all logits"),
    ("e2urec.aug_mode", "full", "finetune_aug.py:41-44, AdamW over every parameter"),
    ("e2urec.aug_lr", 5e-5, "train_e2urec.sh:7, --lr 5e-5"),
    ("e2urec.aug_steps", 1200, "train_e2urec.sh:25, --forget_model_path .../model_1200.pt"),
    ("neggrad.lr", 5e-5, "train_ga.sh:11, --lr 5e-5"),
    ("neggrad.batch_size", 16, "train_ga.sh:11, --batch_size 16"),
    ("neggrad.weight", 0.2, "train_ga.sh:11, --weight 0.2"),
    ("neggrad.steps", 3000, "train_ga.sh:19, model_3000.pt evaluated"),
    ("bad_t.lr", 5e-5, "train_rl.sh:11, --lr 5e-5"),
    ("bad_t.batch_size", 16, "train_rl.sh:11, --batch_size 16"),
    ("bad_t.weight", 0.2, "train_rl.sh:11, --weight 0.2"),
    ("bad_t.steps", 2400, "train_rl.sh:19, model_2400.pt evaluated"),
]


@pytest.fixture(scope="module")
def paper():
    return Bench.from_dict(preset("paper"))


def value(bench: Bench, field: str):
    """A field's value as the bench runs it: preset options over the configs' defaults."""
    section, name = field.split(".")
    if section == "train":
        return getattr(bench.train, name)
    return getattr(get_method(section, bench.method_options.get(section)).config, name)


def test_paper_preset_follows_the_official_scripts(paper):
    wrong = [
        f"{field} = {value(paper, field)!r}, official {official!r} ({where})"
        for field, official, where in OFFICIAL
        if value(paper, field) != pytest.approx(official)
    ]
    assert not wrong, "\n".join(wrong)


def test_steps_are_counted_on_ml1m_forget_set():
    # data_preprocess/split_ml-1m.ipynb prints "12982 47018": forget and retain samples at 20%.
    assert ML1M_FORGET == 12_982


def fake(n: int, user: str) -> list[Sample]:
    return [Sample(f"{user} {i}", YES, user, f"item{i}", 4.0, i) for i in range(n)]


@pytest.mark.parametrize(
    "name, forget, epochs",
    [
        # 812 batches of 16 an epoch: the checkpoint steps of the official scripts.
        ("e2urec", ML1M_FORGET, [812, 188]),  # the forget-only epoch, then 188 mixed steps
        ("neggrad", ML1M_FORGET, [812, 812, 812, 564]),  # 3,000 steps: about 3.7 epochs
        ("bad_t", ML1M_FORGET, [812, 812, 776]),  # 2,400 steps: about 3.0 epochs
        ("e2urec", ML1M_FORGET // 2, [406, 94]),  # half the forget set: half the steps
    ],
)
def test_paper_step_counts_become_epochs_of_the_forget_set(paper, name, forget, epochs):
    method = get_method(name, paper.method_options[name])
    task = Task("unused", fake(30_000, "r"), fake(forget, "f"), [], Path("unused"))
    n, batches = method.schedule(task)
    assert [len(batches(e)) for e in range(n)] == epochs


def test_the_augmented_models_1200_steps_are_one_and_a_half_epochs():
    items = list(range(ML1M_FORGET))
    n, batches = step_limited(lambda e: shuffled_batches(items, 16, e), 1200)
    assert [len(batches(e)) for e in range(n)] == [812, 388]


class Steps:
    """Counts optimizer steps (every torch optimizer), and those made inside each `fit` call."""

    def __init__(self, monkeypatch, modules):
        self.total, self.runs = 0, []
        for module in modules:
            monkeypatch.setattr(module, "fit", self._counting(module.fit))

    def _step(self, *args):
        self.total += 1

    def _counting(self, real):
        def fit(*args, desc, **kwargs):
            before = self.total
            out = real(*args, desc=desc, **kwargs)
            self.runs.append((desc, self.total - before))
            return out

        return fit


@pytest.fixture
def steps(monkeypatch):
    counter = Steps(monkeypatch, [e2urec.methods.base, e2urec.methods.e2urec])
    handle = register_optimizer_step_post_hook(counter._step)
    yield counter
    handle.remove()


def expected(steps: int, forget: int) -> int:
    return max(1, round(steps * forget / ML1M_FORGET))


@pytest.mark.parametrize("forget_size", [41, 20])
def test_neggrad_runs_its_scaled_steps(splits, make_task, tmp_path, steps, forget_size):
    forget = splits["forget"][:forget_size]
    method = get_method("neggrad", {"steps": 3166, "batch_size": 8, "epochs": 1, "lr": 1e-4})
    method.unlearn(make_task(tmp_path, forget=forget))
    # Past one epoch (6 or 3 batches of 8), though the config says 1: steps win.
    assert expected(3166, len(forget)) > math.ceil(len(forget) / 8)
    assert steps.runs == [("neggrad", expected(3166, len(forget)))]


def test_e2urec_runs_its_scaled_steps_forget_only_epoch_first(splits, make_task, tmp_path, steps):
    options = {"steps": 3166, "aug_steps": 3000, "batch_size": 8, "lr": 1e-4, "aug_lr": 1e-4}
    method = get_method("e2urec", {**options, "lora_rank": 4, "lora_alpha": 8, "epochs": 1})
    epochs = []
    inner = method.loss
    method.loss = lambda m, b, e: epochs.append(e) or inner(m, b, e)
    n = len(splits["forget"])
    method.unlearn(make_task(tmp_path))
    assert steps.runs == [
        ("e2urec augmented", expected(3000, n)),
        ("e2urec", expected(3166, n)),
    ]
    one_pass = math.ceil(n / 8)
    assert epochs.count(0) == one_pass  # the forget-only epoch is whole
    assert len(epochs) == expected(3166, n) > one_pass  # then mixed steps up to the count
