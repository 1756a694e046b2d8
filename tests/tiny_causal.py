"""A tiny Llama (byte-level BPE like SmolLM2's) on RecBole ml-100k files, and the module fixtures
the causal-LM tests share: a test module takes one as `data = tiny_causal.data`."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from e2urec.data import Protocol, load_splits, prepare
from e2urec.model import frozen, gguf, loader
from e2urec.model.train import TrainConfig, train

TRAIN = TrainConfig(epochs=1, lr=5e-3, batch_size=8, eval_batch_size=16, lora=True, lora_rank=4)


# Small and fast; each method takes the options its config has.
METHOD_OPTIONS = {
    "epochs": 1,
    "lr": 5e-3,
    "aug_lr": 5e-3,
    "batch_size": 8,
    "lora_rank": 4,
    "lora_alpha": 8,
    "shards": 2,
    "msteps": 1,
    "attention_size": 8,
}


HEADERS = {
    "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
    "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and lose much when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_ml100k(folder, users, items, ratings):
    """RecBole atomic files from rows of fields (tab-joined under the typed header)."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, rows in (("user", users), ("item", items), ("inter", ratings)):
        lines = [HEADERS[suffix], *("\t".join(map(str, r)) for r in rows)]
        (folder / f"ml-100k.{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def byte_level_tokenizer(texts: list[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE like SmolLM2's: " Yes" and " No" become single tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts + [" Yes. No."] * 200, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_llama(tokenizer, layers: int = 2) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def ml100k_raw(tmp_path_factory):
    """RecBole files of 8 users x 10 ratings."""
    root = tmp_path_factory.mktemp("ml100k")
    jobs = ["technician", "writer", "student", "other"]
    users = [(u, 20 + u, "MF"[u % 2], jobs[u % 4], "00000") for u in range(1, 9)]
    # Titles of different lengths, so prompts in a batch differ in length and get padded.
    items = [(i, "The Film" + " of Many Words" * (i % 3), 1990 + i, "Drama") for i in range(1, 13)]
    # User u rates items u+1, u+2, ... (wrapping) at times k = 0..9.
    ratings = [
        (u, (u + k) % 12 + 1, (3 * u + k) % 5 + 1, 1000 * k + u)
        for u in range(1, 9)
        for k in range(10)
    ]
    return write_ml100k(root / "raw", users, items, ratings)


PROTOCOL = Protocol(last=48, history=3, forget_ratio=0.25)


@pytest.fixture(scope="module")
def data(tmp_path_factory, ml100k_raw):
    """Splits prepared by the ml-100k loader from `ml100k_raw`."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(out, "ml-100k", ml100k_raw, PROTOCOL)
    return load_splits(out)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, data):
    """A tiny Llama saved as gguf.save_plain saves the converted SmolLM2 (no GGUF here)."""
    tokenizer = byte_level_tokenizer([s.input for s in data["train"]])
    model = tiny_llama(tokenizer)
    model.config.quantization_config = {"quant_method": "gguf"}  # as a GGUF load leaves it
    out = tmp_path_factory.mktemp("llama") / "base"
    gguf.save_plain(model, tokenizer, out, {"kind": "full"})
    return out


@pytest.fixture(scope="module")
def original(tmp_path_factory, llama_dir, data):
    out = tmp_path_factory.mktemp("original") / "model"
    train(llama_dir, data["train"], data["valid"], out, TRAIN)
    return out


@pytest.fixture(scope="module")
def deep_llama_dir(tmp_path_factory, data):
    tokenizer = byte_level_tokenizer([s.input for s in data["train"]])
    out = tmp_path_factory.mktemp("deep") / "base"
    gguf.save_plain(tiny_llama(tokenizer, layers=4), tokenizer, out, {"kind": "full"})
    return out


@pytest.fixture(scope="module")
def deep_llama(deep_llama_dir):
    """A 4-layer tiny Llama, adapters on its top 2 layers with LoRA B drawn (not zero), so
    that the adapters change the output."""
    rec = loader.load(deep_llama_dir)
    net = frozen.add_top_lora(rec.model, 2, rank=4, alpha=8, dropout=0.0)
    torch.manual_seed(1)
    for name, p in net.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    return rec, net
