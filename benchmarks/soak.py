"""Soak: deletion requests through a real `e2urec serve` while its apply child is killed.

Builds a small deployment (tiny T5 trained on prepared MovieLens samples, as the tests do),
starts the service on 127.0.0.1, then sends N requests (users and interactions, some for the
same user, some duplicates, some unknown ids, sent at random moments so that many arrive during
applies, some for users and ratings only valid or test hold) while a killer sends SIGKILL to
the apply child K times, at random moments of random applies (as the OOM killer would). At the
end every accepted request must be carried out (purged) or refused with a reason, `ledger
verify` must pass, no row of a forgotten user or interaction may be left in the data, and the
child must have been killed K times. Prints and writes the figures (OUT/soak.json).

    python benchmarks/soak.py --requests 200 --kills 5 --out runs/soak
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

FAST = {"epochs": 1, "aug_epochs": 1, "lora_rank": 2, "lora_alpha": 4, "batch_size": 16}


def build(out: Path, samples: int) -> Path:
    """Prepared data, a tiny trained recommender and a deployment made from them."""
    import torch

    from e2urec import deploy
    from e2urec.data import Protocol, load_splits, prepare
    from e2urec.model.tiny import TinyT5, build_tiny_t5
    from e2urec.model.train import TrainConfig, train

    torch.set_num_threads(1)
    # Drawn samples (many users, few each): user-level requests must not empty the data.
    sizes = (samples, samples // 5, samples // 5)
    prepare(out / "data", protocol=Protocol(history=3, sample=sizes))
    splits = load_splits(out / "data")
    tiny = TinyT5(vocab_size=500, d_model=32, d_ff=64, heads=2, encoder_layers=1, decoder_layers=1)
    build_tiny_t5([s.input for s in splits["train"]], out / "base", tiny)
    config = TrainConfig(epochs=1, lr=3e-3, batch_size=16, eval_batch_size=32)
    train(out / "base", splits["train"], splits["valid"], out / "original", config)
    deploy.init(
        out / "data", out / "original", out / "deploy", options={**FAST, "verify": {"samples": 20}}
    )
    return out / "deploy"


def plan(splits: dict, n: int, rng: random.Random) -> list[dict]:
    """N request bodies: users, interactions, the next rating of a user whose earlier one was
    asked for (its prompt shows the earlier rating: the earlier request may purge it first),
    users and ratings found only outside train (valid, test), repeats and unknown ids."""
    from e2urec.data.deletion import shown

    train = splits["train"]
    users = sorted({s.user for s in train})
    rng.shuffle(users)
    later = [s for name in ("valid", "test") for s in splits[name]]
    outside = sorted({s.user for s in later} - set(users))
    rng.shuffle(outside)
    untrained = [s for s in later if (s.user, s.item) not in {(t.user, t.item) for t in train}]
    by_user: dict[str, list] = {}
    for s in train:
        by_user.setdefault(s.user, []).append(s)

    def echoes(s) -> list:  # the user's later train prompts that show the rating of `s`
        return [t for t in by_user[s.user] if s.item in shown(t)[0]]

    # Ratings later prompts show: the ones whose requests can overlap with a neighbour's.
    echoed = [s for s in train if echoes(s)]
    asked, bodies = [], []
    for k in range(n):
        roll = rng.random()
        if roll < 0.27 and users:
            bodies.append({"users": [users.pop()]})
        elif roll < 0.54:
            s = rng.choice(echoed if echoed and rng.random() < 0.5 else train)
            asked.append(s)
            bodies.append({"interactions": [{"user": s.user, "item": s.item}]})
        elif roll < 0.67 and asked:
            s = rng.choice([a for a in asked if a in echoed] or asked)
            t = (echoes(s) or [rng.choice(by_user[s.user])])[0]
            bodies.append({"interactions": [{"user": t.user, "item": t.item}]})
        elif roll < 0.72 and outside:
            bodies.append({"users": [outside.pop()]})  # in valid or test only
        elif roll < 0.77 and untrained:
            s = rng.choice(untrained)  # a rating of valid or test
            bodies.append({"interactions": [{"user": s.user, "item": s.item}]})
        elif roll < 0.9 and bodies:
            bodies.append(rng.choice(bodies))  # the same request again: refused, pending or done
        else:
            bodies.append({"users": [f"nobody-{k}"]})  # unknown: refused
    return bodies


def outside_train(bodies: dict[str, dict], train: list) -> int:
    """Accepted requests whose users or ratings train did not hold."""
    users, pairs = {s.user for s in train}, {(s.user, s.item) for s in train}
    return sum(
        any(u not in users for u in b.get("users", []))
        or any((p["user"], p["item"]) not in pairs for p in b.get("interactions", []))
        for b in bodies.values()
    )


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmd:
                found.append(int(entry.name))
    return found


class Killer(threading.Thread):
    """SIGKILL the apply child `kills` times, each at a random moment of a random apply."""

    def __init__(self, server_pid: int, kills: int, rng: random.Random):
        super().__init__(daemon=True)
        self.pid, self.left, self.rng, self.done, self.seen = server_pid, kills, rng, 0, set()
        self.stop = threading.Event()

    def run(self) -> None:
        while self.left > 0 and not self.stop.is_set():
            for child in children(self.pid):
                if child in self.seen:
                    continue
                self.seen.add(child)
                if self.rng.random() < 0.7:  # spare some applies, so that work gets done
                    time.sleep(self.rng.uniform(0.5, 8.0))
                    try:
                        os.kill(child, signal.SIGKILL)
                        self.done += 1
                        self.left -= 1
                    except ProcessLookupError:
                        pass  # it finished first
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(folder: Path, out: Path, window: float) -> tuple[subprocess.Popen, httpx.Client]:
    token = "soak-" + os.urandom(12).hex()
    (out / "token").write_text(token)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "e2urec.cli",
        "serve",
        "--deploy",
        str(folder),
        "--port",
        str(port),
    ]
    cmd += ["--token-file", str(out / "token"), "--window", str(window), "--max-attempts", "20"]
    log = (out / "server.log").open("a")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    http = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    for _ in range(600):
        try:
            if http.get("/v1/models").status_code == 200:
                return proc, http
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"the service did not start: {(out / 'server.log').read_text()[-2000:]}")


def check_data(folder: Path, bodies: dict[str, dict]) -> int:
    """Rows of carried-out requests' users and (user, item) pairs still in any split."""
    from e2urec.data import load_splits

    users = {u for b in bodies.values() for u in b.get("users", [])}
    pairs = {(p["user"], p["item"]) for b in bodies.values() for p in b.get("interactions", [])}
    return sum(
        s.user in users or (s.user, s.item) in pairs
        for split in load_splits(folder / "data").values()
        for s in split
    )


def refusal_reasons(folder: Path) -> dict[str, int]:
    from e2urec.deploy.ledger import Ledger

    with Ledger(folder / "ledger.sqlite") as book:
        rows = book.records()
    return dict(Counter(r["details"]["reason"] for r in rows if r["event"] == "refused"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--samples", type=int, default=1500, help="train samples drawn (1500)")
    p.add_argument("--window", type=float, default=2.0, help="the service's --window")
    p.add_argument("--gap", type=float, default=0.5, help="mean seconds between requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="a new folder for the run")
    p.add_argument("--max-minutes", type=float, default=120)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    os.environ.setdefault("E2UREC_KEY_DIR", str(out / "keys"))
    os.environ.setdefault("TQDM_DISABLE", "1")
    rng = random.Random(args.seed)
    start = time.monotonic()
    folder = build(out, args.samples)
    built = time.monotonic()

    from e2urec import deploy
    from e2urec.data import load_splits

    splits = load_splits(folder / "data")
    bodies = plan(splits, args.requests, rng)
    proc, http = serve(folder, out, args.window)
    killer = Killer(proc.pid, args.kills, rng)
    killer.start()
    accepted, answers = {}, Counter()
    try:
        for body in bodies:
            got = http.post("/v1/deletions", json=body)
            answers[got.status_code] += 1
            if got.status_code == 202:
                accepted[got.json()["id"]] = body
            time.sleep(rng.expovariate(1 / args.gap))
        deadline = time.monotonic() + 60 * args.max_minutes
        while time.monotonic() < deadline:
            waiting = deploy.pending_requests(folder)
            if not waiting and (killer.left == 0 or not killer.is_alive()):
                break
            if not waiting:  # kills left but nothing to apply: stop killing
                break
            time.sleep(2)
    finally:
        killer.stop.set()
        http.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    views = {r["id"]: r for r in deploy.status(folder)["requests"]}
    ends = Counter(views[r]["state"] for r in accepted)
    carried = [r for r in accepted if views[r]["state"] == "purged"]
    check = deploy.verify(folder)
    result = {
        "requests": len(bodies),
        "answers": {str(k): v for k, v in sorted(answers.items())},
        "accepted": len(accepted),
        "accepted_outside_train": outside_train(accepted, splits["train"]),
        "kills": killer.done,
        "carried_out": len(carried),
        "already_purged": sum(views[r]["reason"] is not None for r in carried),
        "refused_at_intake": answers[422],
        "refusal_reasons": refusal_reasons(folder),
        "refused_later": ends["refused"],
        "lost": len(accepted) - len(carried) - ends["refused"],
        "failed_attempts": sum(views[r]["attempts"] for r in accepted),
        "versions": len(deploy.status(folder)["models"]),
        "ledger_verify_ok": check["ok"],
        "ledger_problems": check["problems"],
        "forgotten_rows_left": check_data(folder, {r: accepted[r] for r in carried}),
        "forgetting": Counter((views[r]["forgetting"] or {}).get("verdict") for r in carried),
        "build_seconds": round(built - start, 1),
        "wall_seconds": round(time.monotonic() - built, 1),
        "args": vars(args),
    }
    result["failures"] = failures(result)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["failures"] else 0)


def failures(result: dict) -> list[str]:
    """Why the soak failed; none when it passed. Fewer kills than asked is a failure: the run
    did not test what it says it tested."""
    found = []
    if result["lost"]:
        found.append(f"{result['lost']} accepted request(s) neither carried out nor refused")
    if not result["ledger_verify_ok"]:
        found.append("ledger verify failed")
    if result["forgotten_rows_left"]:
        found.append(f"{result['forgotten_rows_left']} forgotten row(s) left in the data")
    if result["kills"] < result["args"]["kills"]:
        asked = result["args"]["kills"]
        found.append(f"killed the apply child {result['kills']} time(s), not the {asked} asked")
    return found


if __name__ == "__main__":
    main()
