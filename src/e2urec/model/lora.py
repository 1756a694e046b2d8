"""LoRA on the attention projections the paper adapts: q and v."""

from __future__ import annotations

from peft import LoraConfig, TaskType, get_peft_model

# The paper's q/v, under each architecture's own module names.
TARGETS = {"t5": ["q", "v"], "mt5": ["q", "v"], "gpt2": ["c_attn"]}
DEFAULT_TARGETS = ["q_proj", "v_proj"]


def add_lora(model, rank: int = 16, alpha: int = 32, dropout: float = 0.05, name: str = "default"):
    """Freeze `model` and wrap it with trainable LoRA modules (the adapter called `name`)."""
    return get_peft_model(model, lora_config(model, rank, alpha, dropout), adapter_name=name)


def lora_config(model, rank: int, alpha: int, dropout: float) -> LoraConfig:
    seq2seq = getattr(model.config, "is_encoder_decoder", False)
    return LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=TARGETS.get(model.config.model_type, DEFAULT_TARGETS),
    )
