"""Does SmolLM2 see what the answer depends on? A linear probe on its frozen states.

    OMP_NUM_THREADS=1 python benchmarks/smollm_probe.py DATA [--train N] [--top-layers L]

DATA: a folder of `e2urec prepare --dataset ml-100k` (as for benchmarks/smollm_settings.py,
whose stored bottom states are read and extended: bottom-top{L}-float16.safetensors). For a
seeded N train samples and every valid sample it takes the untuned model's hidden state at the
last prompt token (where the answer is read) below the top L layers and after the last layer,
fits a logistic regression on train (its C by 5-fold cross-validation on train) and prints
the valid AUC of each, beside `history_mean` (the mean stars shown in the prompt) alone and
stacked with each. If a probe on frozen states ranks valid near history_mean, the LoRA training
recipe is what fails to learn; if it ranks near 0.5, the features are not there to read and the
adapters must build them. Nothing here reads test.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from e2urec.data import load_splits
from e2urec.evals.evaluation import shown_mean
from e2urec.model import loader
from e2urec.model.frozen import BottomStates, decoder, only_layers, split
from e2urec.model.scoring import token_ids


@torch.no_grad()
def features(states: BottomStates, model, samples: list) -> tuple[np.ndarray, np.ndarray]:
    """[n, d] states at each sample's last prompt token: below the top, and after the model."""
    low, high = [], []
    for start in range(0, len(samples), 16):
        chunk = samples[start : start + 16]
        batch = states.inputs(chunk)
        ends = [len(ids) for ids in token_ids(states.rec, [s.output for s in chunk], "answer")]
        with only_layers(model, states.start, None):
            out = decoder(model)(
                inputs_embeds=batch["inputs_embeds"],
                attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"],
                use_cache=False,
            ).last_hidden_state
        width = batch["inputs_embeds"].shape[1]
        for row, end in enumerate(ends):
            at = width - end - 1  # left padded: the answer's `end` tokens close each row
            low.append(batch["inputs_embeds"][row, at].numpy())
            high.append(out[row, at].float().numpy())
    return np.stack(low), np.stack(high)


def probe(train_x, train_y, valid_x, valid_y) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=8, cv=5, max_iter=2000))
    model.fit(train_x, train_y)
    return float(roc_auc_score(valid_y, model.decision_function(valid_x)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--top-layers", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    s = load_splits(args.data)
    train = random.Random(0).sample(s["train"], min(args.train, len(s["train"])))
    valid = s["valid"]
    rec = loader.load("smollm2")
    states = BottomStates(rec, split(rec.model, args.top_layers))
    cache = Path(args.data) / f"bottom-top{args.top_layers}-float16.safetensors"
    if cache.is_file():
        states.load(cache)
    if states.fill(rec.model, train + valid):
        states.save(cache)
    y_train = np.array([x.label for x in train])
    y_valid = np.array([x.label for x in valid])
    rule = {
        n: np.array([[shown_mean(x)] for x in part])
        for n, part in (("train", train), ("valid", valid))
    }
    result = {"train": len(train), "valid": len(valid), "top_layers": args.top_layers}
    result["history_mean"] = float(roc_auc_score(y_valid, rule["valid"][:, 0]))
    (low_t, high_t), (low_v, high_v) = (
        features(states, rec.model, train),
        features(states, rec.model, valid),
    )
    for name, (ft, fv) in {"below_top": (low_t, low_v), "last_layer": (high_t, high_v)}.items():
        result[f"probe_{name}"] = probe(ft, y_train, fv, y_valid)
        both_t, both_v = np.hstack([ft, rule["train"]]), np.hstack([fv, rule["valid"]])
        result[f"probe_{name}_with_history_mean"] = probe(both_t, y_train, both_v, y_valid)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
