"""The shared base of every unlearning method, and the tuning loop of loss-based methods.

A method is a config dataclass plus a small subclass: retraining-style methods override `run`,
loss-based methods override `loss` (and `prepare`, if they need teachers).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from e2urec.config import check_training
from e2urec.data.sample import NO, YES, Sample
from e2urec.memory import PeakMemory
from e2urec.model import backbone, loader
from e2urec.model.frozen import BottomStates, bottom_source, split, stored, top_indices, tune_top
from e2urec.model.lora import add_lora
from e2urec.model.scoring import AnswerLogits, forward
from e2urec.model.train import TrainConfig, answer_ce, answer_loss, fit


@dataclass
class MethodConfig:
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        check_training(self.epochs, self.lr, self.batch_size)


# Forget samples of the paper's ML-1M split (data_preprocess/split_ml-1m.ipynb in its code): the
# set its scripts count optimizer steps on. `steps` are scaled from it to another forget set.
ML1M_FORGET = 12_982


@dataclass
class StepsConfig(MethodConfig):
    """A loss method whose paper's scripts count optimizer steps: `steps` > 0 trains that many
    (at ML1M_FORGET forget samples; scaled by the forget set's size) instead of `epochs`."""

    steps: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0: train `epochs` epochs), got {self.steps}")


@dataclass
class ForgetTermConfig(StepsConfig):
    """Full tuning on paired batches, the loss the retain term plus or minus `weight` times a
    forget term; lr and weight from the paper's scripts (NegGrad, Bad-T)."""

    lr: float = 5e-5
    weight: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")


def scaled_steps(steps: int, forget_size: int) -> int:
    """`steps` as counted on ML-1M's forget set, for a forget set of `forget_size` samples: the
    same passes over the forget set at the same batch size."""
    return max(1, round(steps * forget_size / ML1M_FORGET))


def step_limited(epoch_batches: Callable[[int], list], steps: int) -> tuple[int, Callable]:
    """(epochs, epoch_batches) that make exactly `steps` optimizer steps: whole epochs, then the
    first batches of one more, as a script that saves its checkpoint at a step count does."""
    sizes: list[int] = []
    while sum(sizes) < steps:
        sizes.append(len(epoch_batches(len(sizes))))
        if not sizes[-1]:
            raise ValueError("an epoch without batches: cannot reach the step count")
    return len(sizes), lambda epoch: epoch_batches(epoch)[: steps - sum(sizes[:epoch])]


@dataclass
class Task:
    """What a deletion request hands a method."""

    original: str  # the trained recommender's folder
    retain: list[Sample]
    forget: list[Sample]
    valid: list[Sample]
    out: Path
    base: str | None = None  # the backbone before recommendation tuning (for retraining)
    train_config: TrainConfig = field(default_factory=TrainConfig)
    # The frozen bottom's stored states of the backbone (train_config.top_layers), if any.
    bottom_cache: str | None = None
    answers: tuple[str, str] = (YES, NO)  # the data's answer words (its manifest's)

    def retained_valid(self) -> list[Sample]:
        """Valid samples of users with nothing in the forget set: what an exact method may
        choose its epoch on (a forgotten user's later prompts show the forgotten ratings)."""
        gone = {s.user for s in self.forget}
        return [s for s in self.valid if s.user not in gone]


def frozen_bottom(
    task: Task, rec: backbone.Recommender, samples: list[Sample], batch_size: int, models=None
) -> BottomStates | None:
    """The stored states of the bottom of `models` (folders; default: the original, loaded as
    `rec`), when the bench trained them on their top `train_config.top_layers` layers from
    those states (`task.bottom_cache`) and every adapter of theirs sits there
    (`frozen.bottom_source`): `samples`' states not stored are computed once, and every pass
    can then run the top layers alone. None otherwise: every pass runs at full depth."""
    top = task.train_config.top_layers
    if not (top and task.bottom_cache):
        return None
    start = split(rec.model, top)
    sources = {bottom_source(m, start) for m in models or [task.original]}
    if None in sources or len(sources) != 1:
        return None
    dtype = task.train_config.bottom_dtype
    return stored(rec, top, dtype, task.bottom_cache, sources.pop(), samples, batch_size)


@dataclass
class Result:
    method: str
    model: str  # a folder `backbone.load` opens
    seconds: float
    trainable_params: int
    peak_rss_mb: float
    config: dict
    info: dict = field(default_factory=dict)


class Method:
    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # Exact methods train from the backbone (task.base), not from the original: a bench can
    # run them while the original is still training.
    needs_original: ClassVar[bool] = True

    def __init__(self, config: MethodConfig | None = None):
        self.config = config or self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{self.name} expects a {self.Config.__name__}")

    def unlearn(self, task: Task) -> Result:
        """Run the method, timing it and tracking its peak memory; writes `unlearn_report.json`."""
        if not task.forget:
            raise ValueError("the forget set is empty: nothing to unlearn")
        task.out = Path(task.out)
        task.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.config.seed)
        start, cpu = time.perf_counter(), time.process_time()
        with PeakMemory() as peak:
            model_dir, params, info = self.run(task)
        info["wall_seconds"] = time.perf_counter() - start
        # On shared cores wall time follows the machine's load; CPU time follows the work.
        info["cpu_seconds"] = time.process_time() - cpu
        if peak.gpu_mb:
            info["peak_gpu_mb"] = peak.gpu_mb
        result = Result(
            self.name,
            str(model_dir),
            # Methods that prepare before the deletion request (shard training) time the rest.
            info.get("unlearning_seconds", info["wall_seconds"]),
            params,
            peak.mb,
            asdict(self.config),
            info,
        )
        report = {
            **asdict(result),
            "forget_size": len(task.forget),
            "retain_size": len(task.retain),
        }
        (task.out / "unlearn_report.json").write_text(json.dumps(report, indent=2) + "\n")
        return result

    def run(self, task: Task) -> tuple[str, int, dict]:
        """Return (model folder, trainable parameters, extra info).

        Info may hold `unlearning_seconds`: the time to report when part of the run is work done
        before the deletion request (e.g. training the shards that keep their data)."""
        raise NotImplementedError


@dataclass
class Pair:
    """A forget batch travelling with a retain batch, with indices for cached teacher outputs."""

    forget: list[Sample]
    forget_idx: list[int]
    retain: list[Sample]
    retain_idx: list[int]

    def __len__(self) -> int:
        return len(self.forget) + len(self.retain)

    def part(self, rank: int, world: int) -> Pair:
        """Process `rank`'s share of both halves under `accelerate launch`."""
        cut = slice(rank, None, world)
        return Pair(self.forget[cut], self.forget_idx[cut], self.retain[cut], self.retain_idx[cut])


def paired_batches(task: Task, batch_size: int, seed: int) -> list[Pair]:
    """One pass over the forget set; each batch gets an equally sized random retain batch."""
    rng = random.Random(seed)
    f_order = rng.sample(range(len(task.forget)), len(task.forget))
    r_order: list[int] = []
    while len(r_order) < len(f_order) and task.retain:
        r_order += rng.sample(range(len(task.retain)), len(task.retain))
    pairs = []
    for i in range(0, len(f_order), batch_size):
        fi = f_order[i : i + batch_size]
        ri = r_order[i : i + len(fi)]  # the last forget batch may be short
        pairs.append(Pair([task.forget[j] for j in fi], fi, [task.retain[j] for j in ri], ri))
    return pairs


class LossMethod(Method):
    """Tune a student from the original on forget/retain pairs; subclasses give the loss.

    On an original the bench tuned on its top layers from the stored states of its bottom
    (`frozen_bottom`), the student and every teacher run those layers alone from the states,
    and full tuning tunes what lies above them (`frozen.tune_top`): the bottom the states
    stand for never changes. Passes go through `_pass` / `_run`, teachers read `_inputs`."""

    lora: ClassVar[bool] = False  # True: frozen original + LoRA (E2URec); False: full tuning
    states: BottomStates | None = None  # the original's stored bottom states, if it has them

    def prepare(self, task: Task, rec: backbone.Recommender) -> dict:
        """Build teachers etc. before tuning; returns info for the report."""
        return {}

    def frozen_bottom(self, task: Task, rec: backbone.Recommender) -> BottomStates | None:
        """The original's stored bottom states for the forget and retain samples, if any."""
        return frozen_bottom(task, rec, task.forget + task.retain, self.config.batch_size)

    def _run(self, model, batch: dict) -> AnswerLogits:
        """`scoring.forward` of an `_inputs` batch, from the stored bottom if any."""
        if self.states is None:
            return forward(self.rec, model, batch)
        return self.states.run(model, batch)

    def _logits(self, model, batch: dict) -> torch.Tensor:
        return self._run(model, batch).logits

    def _inputs(self) -> dict:
        """A `Teacher`'s `inputs` argument: the stored states in place of the ids, if any."""
        return {} if self.states is None else {"inputs": self.states.inputs}

    def _pass(self, model, samples: list[Sample], tokens: str = "all", answers=None):
        """(cross-entropy on the answer `tokens`, forward output), from the stored bottom if any."""
        if self.states is None:
            return answer_loss(self.rec, model, samples, answers, tokens)
        out = self.states.forward(model, samples, answers)
        return answer_ce(out, tokens), out

    def loss(self, model, batch: Pair, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def drawn(self, task: Task, epochs: Iterable[int]) -> tuple[set[int], set[int]]:
        """Forget and retain indices that these epochs' batches use: what teachers must cover."""
        forget: set[int] = set()
        retain: set[int] = set()
        for epoch in epochs:
            for batch in self.batches(task, epoch):
                forget.update(batch.forget_idx)
                retain.update(batch.retain_idx)
        return forget, retain

    def student(self, rec: backbone.Recommender):
        if self.lora:
            c = self.config
            return add_lora(rec.model, c.lora_rank, c.lora_alpha, c.lora_dropout)
        if self.states is not None:  # what lies above the stored states; their papers tune all
            return tune_top(rec.model, self.states.start)
        return rec.model.requires_grad_(True)  # a merged LoRA recommender loads frozen

    def run(self, task: Task) -> tuple[str, int, dict]:
        # An original that is an adapter made elsewhere sits on the backbone (its `--base`).
        self.rec = loader.load(task.original, base=task.base, answers=task.answers)
        self.states = self.frozen_bottom(task, self.rec)
        # The recommendation loss as the original was trained on it: its loss tokens (a SmolLM2
        # original learned the Yes/No token alone; its untrained format tokens would dominate
        # a descent on retain and make an ascent on forget trivially large).
        self.tokens = task.train_config.loss_tokens
        info = self.prepare(task, self.rec)
        if self.states is not None and not self.lora:
            info["tuned_layers"] = top_indices(self.rec.model, task.train_config.top_layers)
        net = self.student(self.rec)
        net = backbone.to_device(net)
        cfg = self.config
        epochs, batches = self.schedule(task)
        fit(net, lambda m, b: self.loss(m, b, self._epoch), batches, epochs, cfg.lr, desc=self.name)
        backbone.save(
            self.rec,
            net,
            task.out,
            base=task.original if self.lora else None,
            method=self.name,
            config=asdict(cfg),
        )
        return str(task.out), backbone.count_parameters(net), info

    def schedule(self, task: Task) -> tuple[int, Callable[[int], list[Pair]]]:
        """(epochs, each epoch's batches) the student trains on: `epochs` whole epochs, or with
        `steps`, as many batches as that many optimizer steps (scaled to the forget set)."""
        steps = self.config.steps if isinstance(self.config, StepsConfig) else 0
        if not steps:
            return self.config.epochs, self._batches(task)
        return step_limited(self._batches(task), scaled_steps(steps, len(task.forget)))

    def batches(self, task: Task, epoch: int) -> list[Pair]:
        """One epoch's batches: by default a pass over forget, each batch paired with retain."""
        return paired_batches(task, self.config.batch_size, self.config.seed + epoch)

    def _batches(self, task: Task):
        def for_epoch(epoch: int) -> list[Pair]:
            self._epoch = epoch
            return self.batches(task, epoch)

        return for_epoch
