"""Time one single-user deletion request through a deployment, beside `e2urec forget` for the same
user on the same model, in one run (so the ratio holds whatever else the machine is doing).

    e2urec prepare --out runs/d --last 5000
    e2urec train --data runs/d --out runs/original
    python benchmarks/deploy_apply.py --data runs/d --model runs/original --out runs/deploy-bench

Prints the `uptime` load before and after, the seconds of init, request, apply (and, inside it,
the unlearning run the ledger records), ledger verify and forget, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from e2urec import api, deploy
from e2urec.data import load_splits
from e2urec.deploy import integrity, ledger


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True, help="scratch folder (replaced)")
    parser.add_argument("--user", help="default: the train user with the median sample count")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    counts = Counter(s.user for s in load_splits(args.data)["train"])
    ranked = sorted(counts, key=lambda u: (counts[u], u))
    user = args.user or ranked[len(ranked) // 2]
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    _, t_init = timed(deploy.init, args.data, args.model, out / "deploy")
    rid, t_request = timed(deploy.request, out / "deploy", users=[user])
    [outcome], t_apply = timed(deploy.apply, out / "deploy")
    check, t_verify = timed(integrity.verify, out / "deploy")
    with ledger.Ledger(out / "deploy" / "ledger.sqlite") as book:
        rows = book.records()
    run = next(r for r in rows if r["event"] == "verified")["details"]["run"]
    report, t_forget = timed(api.forget, args.data, args.model, out / "forget", users=[user])
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result = {
        "user_samples": counts[user],
        "state": outcome["state"],
        "ledger_ok": check["ok"],
        "seconds": {
            "init": round(t_init, 2),
            "request": round(t_request, 2),
            "apply": round(t_apply, 2),
            "apply_unlearning": run["unlearning_seconds"],
            "ledger_verify": round(t_verify, 2),
            "forget": round(t_forget, 2),
            "forget_unlearning": report["seconds"],
        },
        "apply_over_forget": round(t_apply / t_forget, 3),
        "unlearning_share_of_apply": round(run["unlearning_seconds"] / t_apply, 3),
        "verification": outcome["verification"],
        "uptime_before": load_before,
        "uptime_after": load_after,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
