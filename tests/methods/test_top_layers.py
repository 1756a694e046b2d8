"""Every row on an original the bench tuned on its top layers from the stored bottom states (the
smollm preset's `top_layers`) runs those layers alone from the states: the full-tuning methods
(NegGrad, Bad-T, Bad-Teacher, SCRUB) tune them in full with their teachers run from the states
too, RecEraser's attention and APA's pool scoring run the shards' tops from them, and nothing
below the split ever runs or changes. Tiny 4-layer Llamas from tests/tiny_causal.py, the top 2
layers tuned, the states in float32 so that each path can be checked against the same method
run at full depth with the bottom frozen."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import tiny_causal
import torch
from tiny_causal import METHOD_OPTIONS, TRAIN
from transformers.models.llama import modeling_llama

from e2urec.methods import METHODS, Task, get_method
from e2urec.methods import bad_teacher as bad_teacher_module
from e2urec.model import apa, backbone, encode, forward, frozen, loader, score
from e2urec.model import train as training
from e2urec.model.ensemble import AGGREGATOR

data = tiny_causal.data  # the module fixtures, shared: prepared ml-100k splits
ml100k_raw = tiny_causal.ml100k_raw
deep_llama_dir = tiny_causal.deep_llama_dir  # a 4-layer tiny Llama
one_thread = tiny_causal.one_thread

START = 2  # the top 2 of 4 layers train
FULL_TUNING = ["neggrad", "bad_t", "bad_teacher", "scrub"]


@pytest.fixture(scope="module")
def float32_states():
    """float32 states, not offered to users: here they make the two paths agree (and survive
    the shards' `replace` of the config, which checks it again)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "BOTTOM_DTYPES", (*training.BOTTOM_DTYPES, "float32"))
        yield


@pytest.fixture(scope="module")
def config(float32_states):
    return dataclasses.replace(
        TRAIN, top_layers=2, loss_tokens="decision", select_by="auc", bottom_dtype="float32"
    )


@pytest.fixture(scope="module")
def top_original(tmp_path_factory, deep_llama_dir, data, config):
    """(original tuned on its top 2 layers, the stored states of every train and valid sample)."""
    folder = tmp_path_factory.mktemp("top")
    cache = folder / "bottom.safetensors"
    frozen.store(str(deep_llama_dir), data["train"] + data["valid"], 2, "float32", cache)
    training.train(deep_llama_dir, data["train"], data["valid"], folder / "original", config, cache)
    return folder / "original", cache


def options(name: str, **more) -> dict:
    fields = {f.name for f in dataclasses.fields(METHODS[name].Config)}
    return {k: v for k, v in {**METHOD_OPTIONS, **more}.items() if k in fields}


def unlearn(name, top_original, deep_llama_dir, data, config, out, **more):
    original, cache = top_original
    task = Task(
        str(original), data["retain"], data["forget"], data["valid"], out,
        base=str(deep_llama_dir), train_config=config, bottom_cache=str(cache),
    )  # fmt: skip
    return get_method(name, options(name, **more)).unlearn(task)


@pytest.fixture
def watch(monkeypatch):
    """What ran: each decoder layer's forward (its index, and whether it ran while states were
    computed), the states computed, and the top-only passes from the states."""
    seen = {"layers": [], "computed": [], "runs": 0, "filling": False}
    layer_forward = modeling_llama.LlamaDecoderLayer.forward
    fill, run = frozen.BottomStates.fill, frozen.BottomStates.run

    def counted_layer(self, *args, **kwargs):
        seen["layers"].append((self.self_attn.layer_idx, seen["filling"]))
        return layer_forward(self, *args, **kwargs)

    def counted_fill(*args, **kwargs):
        seen["filling"] = True
        try:
            seen["computed"].append(fill(*args, **kwargs))
        finally:
            seen["filling"] = False
        return seen["computed"][-1]

    def counted_run(*args, **kwargs):
        seen["runs"] += 1
        return run(*args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "forward", counted_layer)
    monkeypatch.setattr(frozen.BottomStates, "fill", counted_fill)
    monkeypatch.setattr(frozen.BottomStates, "run", counted_run)
    return seen


def bottom_runs(seen) -> Counter:
    """The bottom layers' forwards outside computing states, by layer."""
    return Counter(i for i, filling in seen["layers"] if i < START and not filling)


def at_full_depth(monkeypatch):
    """From here on, the stored states' passes run every layer from the ids: the same method
    at full depth, the bottom still frozen."""
    monkeypatch.setattr(
        frozen.BottomStates, "inputs", lambda self, s, answers=None: encode(self.rec, s, answers)
    )
    monkeypatch.setattr(
        frozen.BottomStates,
        "run",
        lambda self, model, batch, parts=None: forward(self.rec, model, batch),
    )


def grafted_random_model(original_random_model):
    """The incompetent teacher at full depth: the same random draw, reading the original's
    bottom with its own (untied) random head, as it reads the stored states on the top path."""

    def build(model):
        rand = original_random_model(model)
        rand.lm_head.weight = torch.nn.Parameter(rand.lm_head.weight.detach().clone())
        rand.model.embed_tokens.load_state_dict(model.model.embed_tokens.state_dict())
        for i in range(START):
            rand.model.layers[i].load_state_dict(model.model.layers[i].state_dict())
        return rand

    return build


def split_parameters(model) -> tuple[dict, dict]:
    """(bottom: embeddings and layers below START, top: the layers from START), by name."""
    bottom, top = {}, {}
    for name, p in model.named_parameters():
        layer = int(name.split(".layers.")[1].split(".")[0]) if ".layers." in name else None
        if layer is not None and layer >= START:
            top[name] = p.detach()
        elif layer is not None or "embed_tokens" in name:
            bottom[name] = p.detach()
    return bottom, top


@pytest.mark.parametrize("name", FULL_TUNING)
def test_full_tuning_on_a_top_layers_original_tunes_the_top_from_the_stored_states(
    name, top_original, deep_llama_dir, data, config, tmp_path, monkeypatch, watch
):
    args = (top_original, deep_llama_dir, data, config)
    result = unlearn(name, *args, tmp_path / name)
    forget = data["forget"]
    flipped = len({frozen.key(s.input, s.output) for s in forget})  # none stored: computed
    assert watch["computed"] == [0] + ([flipped] if name == "bad_t" else [])
    assert watch["runs"] > 0 and not bottom_runs(watch)  # student and teachers from the states
    assert result.info["tuned_layers"] == [2, 3]

    # Saved as a full model, as before; its bottom is the backbone's, so it scores right at full
    # depth; the top layers moved.
    assert backbone.read_meta(result.model)["kind"] == "full"
    saved, original = loader.load(result.model), loader.load(top_original[0])
    backbone_bottom, _ = split_parameters(loader.load(deep_llama_dir).model)
    bottom, top = split_parameters(saved.model)
    assert bottom.keys() == backbone_bottom.keys() and len(bottom) > 1
    assert all(torch.equal(bottom[k], backbone_bottom[k]) for k in bottom)
    _, top_before = split_parameters(original.model)
    assert all(not torch.equal(top[k], top_before[k]) for k in top if k.endswith("proj.weight"))
    head = saved.model.get_output_embeddings().weight
    assert head is saved.model.get_input_embeddings().weight  # tied: frozen with them
    assert result.trainable_params == sum(p.numel() for p in top.values()) + 32  # + final norm
    after = score(saved, forget)["log_odds"]
    assert not np.allclose(after, score(original, forget)["log_odds"], atol=1e-3)

    # The same method at full depth, the bottom frozen (Bad-Teacher's random teacher reading the
    # original's bottom): the same model. SCRUB's first max step starts where the student is its
    # teacher, at a zero gradient that Adam turns rounding noise into steps from: its min steps
    # alone are compared.
    if name == "scrub":
        after = score(loader.load(unlearn(name, *args, tmp_path / "min", msteps=0).model), forget)
        after = after["log_odds"]
    at_full_depth(monkeypatch)
    real = bad_teacher_module.random_model
    monkeypatch.setattr(bad_teacher_module, "random_model", grafted_random_model(real))
    more = {"msteps": 0} if name == "scrub" else {}
    full = unlearn(name, *args, tmp_path / f"{name}-full-depth", **more)
    assert full.trainable_params == result.trainable_params
    full_after = score(loader.load(full.model), forget)["log_odds"]
    np.testing.assert_allclose(after, full_after, atol=2e-5, rtol=0)


def test_bad_teachers_vocabulary_teachers_run_from_the_stored_states(
    top_original, deep_llama_dir, data, config, tmp_path, monkeypatch, watch
):
    """With `target: vocabulary` and a budget too small to cache them, both teachers (a frozen
    copy of the original, the random model) are computed again at each use: from the states."""
    monkeypatch.setattr(bad_teacher_module, "BUDGET_MB", 1e-3)
    args = (top_original, deep_llama_dir, data, config)
    result = unlearn("bad_teacher", *args, tmp_path / "top", target="vocabulary")
    # Each batch: the student's two passes and the two teachers'.
    assert watch["runs"] == 4 * len(range(0, len(data["forget"]), 8))
    assert watch["computed"] == [0] and not bottom_runs(watch)
    after = score(loader.load(result.model), data["forget"])["log_odds"]
    at_full_depth(monkeypatch)
    real = bad_teacher_module.random_model
    monkeypatch.setattr(bad_teacher_module, "random_model", grafted_random_model(real))
    full = unlearn("bad_teacher", *args, tmp_path / "full", target="vocabulary")
    full_after = score(loader.load(full.model), data["forget"])["log_odds"]
    np.testing.assert_allclose(after, full_after, atol=2e-5, rtol=0)


def test_receraser_trains_its_attention_on_the_shards_tops_from_the_stored_states(
    top_original, deep_llama_dir, data, config, tmp_path, monkeypatch, watch
):
    args = (top_original, deep_llama_dir, data, config)
    result = unlearn("receraser", *args, tmp_path / "top", shards=2)
    assert watch["computed"] == [0, 0, 0]  # the states read: two shards' trainings, the attention
    assert not bottom_runs(watch)
    attention = torch.load(tmp_path / "top" / AGGREGATOR, weights_only=True)
    assert attention["query"].abs().max() > 0  # trained (it starts at zero)
    at_full_depth(monkeypatch)
    unlearn("receraser", *args, tmp_path / "full", shards=2)
    full = torch.load(tmp_path / "full" / AGGREGATOR, weights_only=True)
    for k in attention:
        torch.testing.assert_close(attention[k], full[k], atol=1e-6, rtol=1e-5)
    assert backbone.read_meta(result.model)["kind"] == "ensemble"


def test_sisa_shards_run_from_the_stored_states(
    top_original, deep_llama_dir, data, config, tmp_path, watch
):
    unlearn("sisa", top_original, deep_llama_dir, data, config, tmp_path / "sisa", shards=2)
    assert watch["computed"] == [0, 0] and watch["runs"] > 0 and not bottom_runs(watch)


def test_apa_scores_its_pool_from_the_stored_states_and_validates_as_retrain_does(
    top_original, deep_llama_dir, data, config, tmp_path, monkeypatch, watch
):
    """APA's shards validate once an epoch on their own users' valid samples, which together
    are Retrain's (the retained users'); the pool (every retained user's valid samples) is then
    scored by each shard's top layers from the states, not at full depth."""
    validated = []
    valid_metrics = training.valid_metrics

    def counted(rec, model, samples, *args, **kwargs):
        validated.append(len(samples))
        return valid_metrics(rec, model, samples, *args, **kwargs)

    monkeypatch.setattr(training, "valid_metrics", counted)
    args = (top_original, deep_llama_dir, data, config)
    result = unlearn("apa", *args, tmp_path / "apa", shards=2)
    assert watch["computed"] == [0, 0, 0, 0]  # two shards' trainings, the pool for each
    assert watch["runs"] > 0 and not bottom_runs(watch)
    by_apa, validated[:] = list(validated), []
    retrain = unlearn("retrain", *args, tmp_path / "retrain")
    assert retrain.info["epochs_run"] == 1 and len(validated) == 1
    assert len(by_apa) == 2 and sum(by_apa) <= validated[0]  # one epoch a shard, as Retrain

    # The pool's losses are each shard's at full depth.
    pool = apa.read_pool(result.model)
    meta = backbone.read_meta(result.model)
    shard_dirs = [backbone.resolve(result.model, s) for s in meta["shards"]]
    gone = {s.user for s in data["forget"]}
    valid = [s for s in data["valid"] if s.user not in gone]
    assert pool["samples"] == [[s.user, s.item, s.timestamp] for s in valid]
    for col, folder in enumerate(shard_dirs):
        full = score(loader.load(folder), valid)["loss"]
        np.testing.assert_allclose(pool["losses"][:, col].numpy(), full, atol=1e-5, rtol=1e-5)
    assert not torch.equal(pool["losses"][:, 0], pool["losses"][:, 1])


def test_an_original_tuned_at_full_depth_is_still_tuned_at_full_depth(
    deep_llama_dir, data, config, tmp_path, top_original, watch
):
    """With the bench's stored states but an original whose adapters reach below the split
    (`frozen.bottom_source` finds no shared bottom), every weight tunes, at full depth."""
    deep = dataclasses.replace(config, top_layers=0)
    training.train(deep_llama_dir, data["train"], data["valid"], tmp_path / "original", deep)
    task = Task(
        str(tmp_path / "original"), data["retain"], data["forget"], data["valid"],
        tmp_path / "neggrad", train_config=config, bottom_cache=str(top_original[1]),
    )  # fmt: skip
    result = get_method("neggrad", options("neggrad")).unlearn(task)
    assert "tuned_layers" not in result.info and not watch["computed"] and not watch["runs"]
    assert bottom_runs(watch)
    every = sum(p.numel() for p in loader.load(deep_llama_dir).model.parameters())
    assert result.trainable_params == every


@pytest.mark.parametrize("name", ["neggrad", "bad_t", "scrub"])
def test_cross_entropy_terms_read_the_originals_loss_tokens(
    name, top_original, deep_llama_dir, data, config, tmp_path, monkeypatch
):
    """An original trained on the Yes/No token alone (`loss_tokens: decision`): the baselines'
    recommendation losses are on that token too, not on the format tokens it never learned."""
    tokens = []
    ce = training.answer_ce
    monkeypatch.setattr(
        "e2urec.methods.base.answer_ce", lambda out, t="all": tokens.append(t) or ce(out, t)
    )
    unlearn(name, top_original, deep_llama_dir, data, config, tmp_path / name)
    assert tokens and set(tokens) == {"decision"}


def test_ensembles_are_scored_from_the_stored_states_and_apa_at_full_depth(
    top_original, deep_llama_dir, data, config, tmp_path, watch
):
    """The bench's evaluation (StoredBottom): an ensemble whose shards all kept the backbone's
    bottom runs only their tops, with the scores of full depth; APA, which routes by token ids,
    runs at full depth instead of failing."""
    _, cache = top_original
    stored = frozen.StoredBottom(str(deep_llama_dir), 2, "float32", str(cache))
    samples = data["test"] + data["valid"]
    sisa = unlearn("sisa", top_original, deep_llama_dir, data, config, tmp_path / "sisa")
    rec = loader.load(sisa.model)
    full = score(rec, samples)
    runs, seen = watch["runs"], len(watch["layers"])
    states = stored.states_for(rec)
    assert states is not None and len(states.parts) == 2
    from_states = score(rec, samples, states=states)
    after = {**watch, "layers": watch["layers"][seen:]}
    assert watch["runs"] > runs and not bottom_runs(after)
    np.testing.assert_allclose(from_states["log_odds"], full["log_odds"], atol=1e-4)
    apa_model = unlearn("apa", top_original, deep_llama_dir, data, config, tmp_path / "apa")
    assert stored.states_for(loader.load(apa_model.model)) is None
