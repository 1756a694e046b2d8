"""LoRA on the attention projections the paper adapts: q and v."""

from __future__ import annotations

from peft import LoraConfig, TaskType, get_peft_model

# The paper's q/v, under each architecture's own module names.
TARGETS = {"t5": ["q", "v"], "mt5": ["q", "v"], "gpt2": ["c_attn"]}
DEFAULT_TARGETS = ["q_proj", "v_proj"]


def add_lora(
    model,
    rank: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    name: str = "default",
    layers: list[int] | None = None,
):
    """Freeze `model` and wrap it with trainable LoRA modules (the adapter called `name`), on
    every layer or only on the decoder layers numbered in `layers`."""
    config = lora_config(model, rank, alpha, dropout, layers)
    return get_peft_model(model, config, adapter_name=name)


def lora_config(
    model, rank: int, alpha: int, dropout: float, layers: list[int] | None = None
) -> LoraConfig:
    seq2seq = getattr(model.config, "is_encoder_decoder", False)
    return LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=TARGETS.get(model.config.model_type, DEFAULT_TARGETS),
        layers_to_transform=layers,
    )
