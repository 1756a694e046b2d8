"""APA (Hu et al., 2024, "Exact and Efficient Unlearning for LLM-based Recommendation"): exact
unlearning at adapter cost.

Users are dealt into `shards` shards, balanced by their samples (train and valid), or with
`partition: kmeans` grouped by their prompts' keys as APA groups similar samples, under the same
balance; the assignment is fixed at training time and stored, so a deletion never moves another
user. Each shard trains one LoRA adapter on the frozen backbone (which never saw user data) with
the recommender's TrainConfig (`lora` on, the seed moved by the shard's number), choosing its
epoch on the valid samples of its own users only (on its own train samples if they have
none): no other shard's users reach it. The adapters
are mixed per sample at the parameter level (model/apa.py) with weights computed, not learned,
from their losses on a pool: the valid samples of retained users.

A deletion retrains the shards that held the forgotten users on what they keep, scores the pool
with them and drops the forgotten users' pool rows; every other part stays. The result equals
training on the retained data from scratch with the stored assignment
(tests/methods/test_apa.py).
Result.seconds is that work alone; as in SISA, a shard that holds forgotten users is trained
once, on its kept data, when the bench simulates the request.

Each shard validates once an epoch on its own users' valid samples, which together are
Retrain's; it then scores the pool once. Shards trained on their top layers (`top_layers`) do
both from the backbone's bottom states (the bench's stored ones, else the pool's computed once
for all shards), running only those layers, as Retrain does.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from e2urec.config import from_dict
from e2urec.data.deletion import sample_key
from e2urec.data.sample import NO, YES, Sample
from e2urec.methods.base import Method, MethodConfig, Task
from e2urec.methods.receraser import balanced_homes
from e2urec.model import apa, backbone, loader
from e2urec.model.frozen import BottomStates, bottom_source, split, stored
from e2urec.model.scoring import score
from e2urec.model.train import TrainConfig, answer_pass, train

PARTITIONS = ("balanced", "kmeans")


@dataclass
class ApaConfig(MethodConfig):
    """The shards train with the task's TrainConfig as LoRA adapters; epochs / lr / batch_size
    here are not used (an exact method trains as the recommender does)."""

    shards: int = 4
    partition: str = "balanced"
    neighbours: int = 10  # pool samples whose losses weigh the adapters for one sample
    temperature: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.shards < 2:
            raise ValueError(f"shards must be at least 2 (one shard is Retrain), got {self.shards}")
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if self.neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, got {self.neighbours}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class Apa(Method):
    name = "apa"
    Config = ApaConfig
    needs_original = False

    def run(self, task: Task) -> tuple[str, int, dict]:
        if task.base is None:
            raise ValueError("apa trains adapters on the backbone: it needs task.base")
        homes = self.assign(task.base, task.retain + task.forget, task.valid, task.answers)
        affected = sorted({homes[s.user] for s in task.forget})
        start = time.perf_counter()
        gone = {s.user for s in task.forget}
        shards = Shards(
            self, task.base, task.train_config, homes, task.out, gone, task.bottom_cache,
            task.answers,
        )  # fmt: skip
        shards.fit(task.retain, task.valid, skip=affected)
        before = time.perf_counter() - start
        start = time.perf_counter()  # the deletion request arrives
        params = shards.fit(task.retain, task.valid, only=affected)
        shards.save(task.valid)
        info = {
            "unlearning_seconds": time.perf_counter() - start,
            "kept_shards_seconds": before,
            "retrained_shards": affected,
            "shard_sizes": shards.sizes(task.retain + task.forget),
        }
        return str(task.out), params, info

    def assign(
        self, base: str, samples: list[Sample], valid: list[Sample], answers=None
    ) -> dict[str, int]:
        """Each user's shard, from their train and valid samples."""
        counts = Counter(s.user for s in samples + valid)
        c = self.config
        if c.partition == "balanced":
            return balanced_homes(counts, c.shards, c.seed)
        return kmeans_homes(base, samples + valid, counts, c.shards, c.seed, answers)


class Shards:
    """One APA model being built: the shards' adapters in `out/shard_<s>` and their pool, for
    data without the users in `gone`."""

    def __init__(
        self,
        method: Apa,
        base: str,
        config: TrainConfig,
        homes: dict,
        out: Path,
        gone: set,
        bottom_cache: str | None = None,
        answers: tuple[str, str] | None = None,  # the data's answer words
    ):
        self.method, self.base, self.homes, self.out = method, base, homes, Path(out)
        self.answers = tuple(answers or (YES, NO))
        self.config, self.gone, self.bottom_cache = replace(config, lora=True), gone, bottom_cache
        self.dirs: dict[int, Path] = {}
        self.columns: dict[int, np.ndarray] = {}  # each adapter's losses on the pool
        self.states: BottomStates | None = None  # the backbone's bottom, with `top_layers`

    def mine(self, samples: list[Sample], shard: int) -> list[Sample]:
        return [s for s in samples if self.homes.get(s.user) == shard and s.user not in self.gone]

    def sizes(self, samples: list[Sample]) -> list[int]:
        return [
            sum(self.homes.get(s.user) == k for s in samples)
            for k in range(self.method.config.shards)
        ]

    def pool(self, valid: list[Sample]) -> list[Sample]:
        return [s for s in valid if s.user not in self.gone]

    def fit(self, train_samples, valid, skip=(), only=None) -> int:
        """Train the shards (those in `only`, or all but `skip`) on their users' samples and
        score the pool with them; their trainable parameters."""
        params = 0
        for shard in range(self.method.config.shards):
            if shard in skip or (only is not None and shard not in only):
                continue
            rows = self.mine(train_samples, shard)
            if not rows:  # a shard left without users drops out of the mixture
                continue
            # Users without valid samples: the shard chooses its epoch on its own train
            # samples rather than on another shard's users.
            mine_valid = self.mine(valid, shard) or rows
            folder = self.out / f"shard_{shard}"
            config = replace(self.config, seed=self.config.seed + shard)
            stored = {"bottom_cache": self.bottom_cache} if self.bottom_cache else {}
            report = train(
                self.base, rows, mine_valid, folder, config, answers=self.answers, **stored
            )
            self.dirs[shard] = folder
            pool = self.pool(valid)
            self.columns[shard] = self._pool_losses(loader.load(folder), pool)
            params += report["trainable_params"]
        return params

    def _pool_losses(self, rec: backbone.Recommender, pool: list[Sample]) -> np.ndarray:
        """A shard's loss on each pool sample's answer token (`score`'s "loss"): with
        `top_layers`, its top layers alone from the backbone's bottom states, as it trained."""
        size, top = self.config.eval_batch_size, self.config.top_layers
        if not pool:
            return np.zeros(0)
        if not top:
            return score(rec, pool, size, desc="apa pool")["loss"]
        if self.states is None:  # filled with the shard: its bottom is the backbone's
            source = bottom_source(self.base, split(rec.model, top))
            dtype = self.config.bottom_dtype
            self.states = stored(rec, top, dtype, self.bottom_cache, source, pool, size)
        else:
            self.states.fill(rec.model, pool, size)
        return answer_pass(rec, rec.model, pool, size, self.states)["decision_loss"]

    def save(self, valid: list[Sample]) -> None:
        """The APA model over the trained shards and the pool."""
        if not self.dirs:
            raise ValueError("every shard held only forgotten users: nothing is left to train")
        pool = self.pool(valid)
        order = sorted(self.dirs)
        keys = apa.sample_keys(loader.load(self.base, answers=self.answers), pool)
        arrays = apa.pool_arrays(
            keys, [self.columns[s] for s in order], [sample_key(s) for s in pool]
        )
        c = self.method.config
        apa.save_apa(
            self.out, self.base, [self.dirs[s] for s in order], pool=arrays,
            neighbours=c.neighbours, temperature=c.temperature, method="apa",
            answers=list(self.answers),
            config=asdict(c), train=asdict(self.config),
            homes={u: h for u, h in self.homes.items() if u not in self.gone},
        )  # fmt: skip


def train_apa(
    base: str, samples, valid, out, config: TrainConfig, options=None, homes=None, answers=None
) -> dict:
    """An APA model trained from the backbone `base` on `samples` into `out` (`options`: an
    ApaConfig mapping); `homes` fixes the users' shards (a stored assignment), else they are
    dealt here. Returns the shards' sizes and trainable parameters."""
    method = Apa(from_dict(ApaConfig, options, where="apa"))
    homes = homes or method.assign(base, samples, valid, answers)
    shards = Shards(method, base, config, homes, Path(out), gone=set(), answers=answers)
    params = shards.fit(samples, valid)
    shards.save(valid)
    return {"trainable_params": params, "shard_sizes": shards.sizes(samples)}


def kmeans_homes(
    base: str, samples: list[Sample], counts: Counter, shards: int, seed: int, answers=None
) -> dict:
    """Users grouped by k-means on the mean key of their prompts (from the backbone), each
    placed in its nearest group with room (at most 1.1x an equal share of samples)."""
    from sklearn.cluster import KMeans

    rec = loader.load(base, answers=answers)
    keys = apa.sample_keys(rec, samples).numpy()
    users = sorted(counts)
    index = {u: i for i, u in enumerate(users)}
    means = np.zeros((len(users), keys.shape[1]))
    np.add.at(means, [index[s.user] for s in samples], keys)
    means /= np.maximum(1, np.bincount([index[s.user] for s in samples], minlength=len(users)))[
        :, None
    ]
    km = KMeans(shards, n_init=10, random_state=seed).fit(means)
    distance = km.transform(means)
    cap = math.ceil(1.1 * sum(counts.values()) / shards)
    load, homes = [0] * shards, {}
    order = random.Random(seed).sample(users, len(users))
    order.sort(key=lambda u: -counts[u])
    for user in order:
        ranked = np.argsort(distance[index[user]]).tolist()
        roomy = [g for g in ranked if load[g] + counts[user] <= cap]
        homes[user] = roomy[0] if roomy else load.index(min(load))
        load[homes[user]] += counts[user]
    return homes


def forget(model: str | Path, users, train_samples, valid, out: str | Path, shards=()) -> dict:
    """Exact unlearning of `users` from the APA model in `model`, into the new folder `out`:
    the shards that held them retrained on `train_samples` (the data left after every deletion
    so far: it must hold none of theirs), the pool rescored by them and cut to retained users;
    the other shards' adapters and pool losses are copied. `shards`: more shards to retrain,
    whose users stay (ratings of theirs deleted: `train_samples` and `valid` no longer hold
    them)."""
    meta = backbone.read_meta(model)
    if meta.get("kind") != "apa":
        raise ValueError(
            f"{model} is not an APA model (its e2urec.json kind is {meta.get('kind')!r})"
        )
    users = set(users)
    leaked = sorted({s.user for s in train_samples} & users)
    if leaked:
        raise ValueError(
            f"the training data still holds samples of user(s) {', '.join(leaked[:5])}"
        )
    homes = meta["homes"]
    method = Apa(from_dict(ApaConfig, meta["config"], where=f"{model}/e2urec.json"))
    affected = sorted({homes[u] for u in users if u in homes} | set(shards))
    base = backbone.resolve(model, meta["base"])
    config = from_dict(TrainConfig, meta["train"], where=f"{model}/e2urec.json")
    # Valid samples of users an earlier request forgot (not in `homes`) stay out too.
    gone = users | {s.user for s in valid if s.user not in homes}
    shards = Shards(method, base, config, homes, Path(out), gone, answers=meta.get("answers"))
    start = time.perf_counter()
    shards.fit(train_samples, valid, only=affected)
    old = apa.read_pool(model)
    where = {tuple(k): i for i, k in enumerate(old["samples"])}
    pool = shards.pool(valid)
    for col, (s, folder) in enumerate(zip(_numbers(meta), meta["shards"])):
        if s in affected:
            continue
        shards.dirs[s] = Path(out) / f"shard_{s}"
        shutil.copytree(backbone.resolve(model, folder), shards.dirs[s])
        try:
            rows = [where[sample_key(v)] for v in pool]
        except KeyError as err:
            raise ValueError(
                f"valid sample {err} is not in {model}'s pool: was valid changed?"
            ) from None
        shards.columns[s] = old["losses"][rows, col].numpy()
    shards.save(valid)
    return {"retrained_shards": affected, "seconds": time.perf_counter() - start}


def _numbers(meta: dict) -> list[int]:
    return [int(Path(folder).name.removeprefix("shard_")) for folder in meta["shards"]]


def read_homes(model: str | Path) -> dict[str, int]:
    """The APA model's users and their shards."""
    return backbone.read_meta(model)["homes"]
