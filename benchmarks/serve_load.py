"""Load on `POST /v1/score` of a real `e2urec serve` on 127.0.0.1, before and during an apply.

Copies the deployment to a temporary folder (the original is never changed), starts the service
on it, then runs N concurrent clients twice: for T seconds with nothing else going on, then from
the moment one user's deletion is submitted until the service serves the new model version (at
most --max-seconds). Prints requests/s, p50/p95/p99 latency and errors for each phase and the
during/before ratios, measured in this one run. Stops by itself.

    python benchmarks/serve_load.py --deploy runs/deploy --clients 8 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from e2urec import deploy as deployment
from e2urec.data import load_splits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def score_body(folder: Path, history: int, candidates: int) -> dict:
    ids = list(json.loads((folder / "catalogue.json").read_text())["items"])
    rated = [{"item": i, "rating": 1 + k % 5} for k, i in enumerate(ids[:history])]
    return {"history": rated, "candidates": ids[history : history + candidates]}


async def client(http, body, until, latencies, errors, versions) -> None:
    while not until():
        start = time.perf_counter()
        try:
            got = await http.post("/v1/score", json=body)
        except httpx.HTTPError as err:
            errors.append(type(err).__name__)
            continue
        if got.status_code != 200:
            errors.append(got.status_code)
            continue
        latencies.append(time.perf_counter() - start)
        versions.add(got.json()["model"])


async def phase(url, token, body, clients, until) -> dict:
    latencies, errors, versions = [], [], set()
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as h:
        start = time.perf_counter()
        await asyncio.gather(
            *(client(h, body, until, latencies, errors, versions) for _ in range(clients))
        )
        seconds = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": len(latencies),
        "seconds": round(seconds, 1),
        "rps": round(len(latencies) / seconds, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "errors": len(errors),
        "versions": sorted(versions),
    }


async def run(folder: Path, url: str, token: str, args) -> dict:
    body = score_body(folder, args.history, args.candidates)
    end = time.monotonic() + args.seconds
    before = await phase(url, token, body, args.clients, lambda: time.monotonic() > end)

    # The user with the fewest training samples: the request a privacy desk sees most often.
    user = (
        args.user
        or min(
            Counter(s.user for s in load_splits(folder / "data")["train"]).items(),
            key=lambda kv: kv[1],
        )[0]
    )
    admin = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"})
    posted = await admin.post("/v1/deletions", json={"users": [user]})
    posted.raise_for_status()
    rid, start = posted.json()["id"], time.monotonic()
    done = {"state": None, "seconds": None}

    async def watch():
        while time.monotonic() - start < args.max_seconds:
            state = (await admin.get(f"/v1/deletions/{rid}")).json()["state"]
            models = (await admin.get("/v1/models")).json()
            if state == "failed" or (state == "purged" and models["serving"] == models["live"]):
                done.update(state=state, seconds=round(time.monotonic() - start, 1))
                return
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(watch())
    during = await phase(url, token, body, args.clients, watcher.done)
    await watcher
    await admin.aclose()
    return {"before": before, "during_apply": during, "apply": done, "user": user}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", required=True, help="deployment folder (copied, not changed)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20, help="length of the first phase")
    parser.add_argument("--max-seconds", dest="max_seconds", type=float, default=900)
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--user", help="user to delete (default: the one with fewest samples)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = Path(tmp) / "deploy"
        shutil.copytree(args.deploy, folder, symlinks=True)
        token = "load-test-" + os.urandom(12).hex()
        (Path(tmp) / "token").write_text(token)
        port = free_port()
        cmd = [sys.executable, "-m", "e2urec.cli", "serve", "--deploy", str(folder)]
        cmd += ["--port", str(port), "--token-file", str(Path(tmp) / "token"), "--window", "0"]
        log = Path(tmp) / "server.log"
        with log.open("w") as out:
            server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_up(url, server, log)
            result = asyncio.run(run(folder, url, token, args))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(60)
        result["live_after"] = deployment.status(folder)["live"]
    b, d = result["before"], result["during_apply"]
    result["ratio_during_over_before"] = {
        k: round(d[k] / b[k], 2) for k in ("rps", "p50_ms", "p95_ms", "p99_ms") if b[k]
    }
    result["setup"] = {k: getattr(args, k) for k in ("clients", "seconds", "history", "candidates")}
    print(json.dumps(result, indent=2))
    if b["errors"] or d["errors"] or result["apply"]["state"] != "purged":
        sys.exit(1)


def wait_up(url: str, server: subprocess.Popen, log: Path) -> None:
    for _ in range(600):
        if server.poll() is not None:
            sys.exit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/openapi.json", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    sys.exit("the server did not start within 5 minutes")


if __name__ == "__main__":
    main()
