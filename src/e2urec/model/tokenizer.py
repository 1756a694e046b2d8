"""A BPE tokenizer trained on the prepared prompts, for the from-scratch default model."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from e2urec.data.sample import NO, YES

SPECIALS = ["<pad>", "</s>", "<unk>"]
# Words keep their leading space as "▁" (T5's own Metaspace scheme), so BPE merges across
# punctuation ("▁(1995)", "▁stars)',"): demo prompts take ~132 tokens instead of ~214 when
# every punctuation mark was a token. The answers "Yes." / "No." alone are cut before their
# full stop, so their first tokens stay the words "Yes" and "No" that scoring reads.
PRE_TOKENIZER = pre_tokenizers.Sequence(
    [
        pre_tokenizers.Metaspace(prepend_scheme="never"),
        pre_tokenizers.Split(Regex(r"(?<=^Yes)\.|(?<=^No)\."), "isolated"),
    ]
)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 4000, answers: tuple[str, str] = (YES, NO)
) -> PreTrainedTokenizerFast:
    """BPE over Metaspace words and the `answers`; "Yes" and "No" are kept as whole tokens."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = PRE_TOKENIZER
    tok.decoder = decoders.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False
    )
    tok.train_from_iterator(list(texts) + list(answers) * 100, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    # T5 appends </s> to every sequence; do the same so answers end like real T5 checkpoints.
    fast.backend_tokenizer.post_processor = TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return fast
