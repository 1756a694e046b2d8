"""APA's costs as a deployment meets them, on one seed of a bench preset, in one process.

Trains APA on the whole train split (what `init --exact apa` does), then carries out single-user
deletion requests one after another: each exactly (`methods.apa.forget`: the user's shard
retrained) and approximately (E2URec on the APA model, the first phase of a deletion), beside one
Retrain for the first user; then times scoring the test split with APA against the original
(the mixture routes each batch and adds K low-rank products per adapted layer). Ratios are
measured in this one run; absolute seconds belong to the machine and its load.

    OMP_NUM_THREADS=1 python benchmarks/apa_costs.py --preset study --seed 0 \
        --run runs/study-27/seed-0 --out runs/apa-costs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from e2urec.bench import preset
from e2urec.bench.config import Bench, seeded
from e2urec.bench.run import setup
from e2urec.methods import Task, get_method
from e2urec.methods.apa import forget, train_apa
from e2urec.model import loader
from e2urec.model.scoring import score


def timed(work, *args):
    start = time.perf_counter()
    result = work(*args)
    return result, time.perf_counter() - start


def scoring_seconds(model: str, samples: list, batch_size: int) -> float:
    """Seconds per sample to score `samples`, the best of two passes (the first warms caches)."""
    rec = loader.load(model)
    best = min(timed(score, rec, samples, batch_size)[1] for _ in range(2))
    return best / len(samples)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="study")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--run", required=True, help="the seed's bench folder (its stages are reused)"
    )
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    bench = seeded(Bench.from_dict(preset(args.preset)), args.seed if args.seed >= 0 else None)
    run = setup(bench, Path(args.run))
    out = Path(args.out)
    train, valid, test = run.splits["train"], run.splits["valid"], run.splits["test"]
    options = bench.method_options.get("apa") or {}
    _, init_seconds = timed(train_apa, run.base, train, valid, out / "v0", bench.train, options)
    users = run.manifest["forgotten_halves"]["eval"][: args.requests]
    model, gone, rows = str(out / "v0"), set(), []
    for i, user in enumerate(users, 1):
        forgot = [s for s in train if s.user == user]
        gone.add(user)
        kept = [s for s in train if s.user not in gone]
        kept_valid = [s for s in valid if s.user not in gone]
        task = Task(model, kept, forgot, kept_valid, out / f"approx-{i}", train_config=bench.train)
        approx = get_method("e2urec", bench.method_options.get("e2urec")).unlearn(task)
        info, seconds = timed(forget, model, [user], kept, kept_valid, out / f"v{i}")
        rows.append(
            {"user": i, "samples": len(forgot), "exact_seconds": seconds,
             "retrained_shards": info["retrained_shards"], "approximate_seconds": approx.seconds}
        )  # fmt: skip
        model = str(out / f"v{i}")
    first = [s for s in train if s.user == users[0]]
    kept = [s for s in train if s.user != users[0]]
    valid_1 = [s for s in valid if s.user != users[0]]
    retrain = Task(run.original, kept, first, valid_1, out / "retrain", base=run.base,
                   train_config=bench.train)  # fmt: skip
    retrain_seconds = get_method("retrain").unlearn(retrain).seconds
    result = {
        "preset": args.preset,
        "seed": args.seed,
        "apa_init_seconds": init_seconds,
        "original_train_seconds": run.rows["original"]["seconds"],
        "requests": rows,
        "retrain_seconds": retrain_seconds,
        "exact_over_retrain": [r["exact_seconds"] / retrain_seconds for r in rows],
        "approximate_over_retrain": [r["approximate_seconds"] / retrain_seconds for r in rows],
        "scoring_seconds_per_sample": {
            "original": scoring_seconds(run.original, test, bench.eval_batch_size),
            "apa": scoring_seconds(model, test, bench.eval_batch_size),
        },
    }
    s = result["scoring_seconds_per_sample"]
    s["apa_over_original"] = s["apa"] / s["original"]
    (out / "apa_costs.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
