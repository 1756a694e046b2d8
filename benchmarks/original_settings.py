"""One candidate training setting of the tiny T5 original, judged on valid data only.

    OMP_NUM_THREADS=1 python benchmarks/original_settings.py DATA OUT DROPOUT LR [SEED] [FIELD=N ...]
        [tokenizer=template|prompts]

builds the demo preset's embedded T5 with DROPOUT (and any other of its sizes given as FIELD=N,
e.g. encoder_layers=2) on DATA's train split (SEED, default 0: the initialisation and the batch
order, as the bench's seeds), trains it at LR by the demo preset's rule (its `train` section:
most epochs, patience, batch size), and prints one JSON line: valid loss per epoch, the epoch
kept, seconds, valid AUC and LogLoss, and the canary exposure of forgotten and retained users'
canaries (training data, against the controls). `tokenizer=prompts` trains the tokenizer on the
train prompts, as the demo did before it learned from the prompt template over catalogue titles.
Nothing here reads test: the demo's model settings are chosen from these lines.
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

from e2urec.bench import Bench, preset
from e2urec.data import load_splits, template_texts
from e2urec.data.canaries import unique
from e2urec.evals.evaluation import exposure, model_scorer, planted_log_odds
from e2urec.metrics import scored_classification
from e2urec.model.tiny import build_tiny_t5
from e2urec.model.train import train


def main(data, out: Path, dropout, lr, seed=0, sizes=None, tokenizer="template") -> dict:
    demo = Bench.from_dict(preset("demo"))
    s = load_splits(data)
    size = replace(demo.tiny, dropout=dropout, seed=seed, **(sizes or {}))
    texts = template_texts(data) if tokenizer == "template" else [x.input for x in s["train"]]
    build_tiny_t5(texts, out / "base", size)
    config = replace(demo.train, lr=lr, seed=seed)
    report = train(out / "base", s["train"], s["valid"], out / "model", config)
    scorer = model_scorer(str(out / "model"), 64)
    valid = scored_classification(s["valid"], scorer(s["valid"], False))
    controls = planted_log_odds(scorer, s["canary_control"])
    return {
        "dropout": dropout,
        "lr": lr,
        "seed": seed,
        "tokenizer": tokenizer,
        **(sizes or {}),
        "history": [round(h["valid_loss"], 4) for h in report["history"]],
        "best": report["best_epoch"],
        "seconds": round(report["seconds"]),
        "cpu": round(report["cpu_seconds"]),
        "valid_auc": round(valid["auc"], 4),
        "valid_logloss": round(valid["logloss"], 4),
        "canary_forget": round(
            exposure(planted_log_odds(scorer, unique(s["forget"])), controls), 3
        ),
        "canary_retained": round(
            exposure(planted_log_odds(scorer, unique(s["retain"])), controls), 3
        ),
    }


if __name__ == "__main__":
    data, out, dropout, lr = sys.argv[1:5]
    seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    fields = dict(a.split("=", 1) for a in sys.argv[6:])
    tokenizer = fields.pop("tokenizer", "template")
    if tokenizer not in ("template", "prompts"):
        sys.exit(f"tokenizer must be template or prompts, got {tokenizer!r}")
    sizes = {k: int(v) for k, v in fields.items()}
    print(json.dumps(main(data, Path(out), float(dropout), float(lr), seed, sizes, tokenizer)))
