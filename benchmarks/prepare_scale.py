"""Time `e2urec prepare --dataset ml-1m` on a synthetic set the size of MovieLens 1M.

Writes 1,000,209 ratings by 6,040 users on 3,900 movies in the GroupLens format to a temporary
folder, runs `prepare` in a fresh interpreter (so its peak RSS is its own, not the generator's),
and prints seconds, peak MB and the protocol counts next to the ones the ML-1M protocol predicts.

    python benchmarks/prepare_scale.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

USERS, MOVIES, RATINGS, MIN_PER_USER = 6040, 3900, 1_000_209, 20
START, END = 956_703_932, 1_046_454_590  # first and last ML-1M timestamps (2000-04-25, 2003-02-28)
AGES = (1, 18, 25, 35, 45, 50, 56)


def ratings_per_user(rng: np.random.Generator) -> np.ndarray:
    # Long-tailed like ML-1M (20 to ~2,300 a user), rescaled to the exact total.
    raw = rng.lognormal(mean=0.0, sigma=1.0, size=USERS)
    counts = MIN_PER_USER + np.floor(raw / raw.sum() * (RATINGS - MIN_PER_USER * USERS)).astype(int)
    counts = np.minimum(counts, MOVIES)
    counts[np.argsort(counts)[: RATINGS - counts.sum()]] += 1  # fewer than USERS short
    assert counts.sum() == RATINGS
    return counts


def timestamps(rng: np.random.Generator, n: int) -> np.ndarray:
    # Most users join in 2000 and rate in a few sessions, many ratings in the same second (as in
    # ML-1M); now and then one comes back weeks later, which is who the last 100,000 ratings are.
    start = START + int(rng.beta(0.6, 4.0) * (END - START))
    gaps = [0, 1, 2, 5, 30, 600, 86_400 * 30]
    steps = rng.choice(gaps, size=n, p=[0.3, 0.2, 0.15, 0.15, 0.12, 0.075, 0.005])
    offsets = np.cumsum(steps)
    if start + offsets[-1] > END:  # squeeze rather than clip, or heavy users pile up at END
        offsets = offsets * (END - start) // offsets[-1]
    return start + offsets


def write_ml1m(folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, MOVIES + 1) ** 0.9
    popularity /= popularity.sum()
    lines = []
    for user, n in enumerate(ratings_per_user(rng), 1):
        movies = rng.choice(MOVIES, size=n, replace=False, p=popularity) + 1
        stars = rng.choice(5, size=n, p=[0.06, 0.11, 0.26, 0.35, 0.22]) + 1
        times = timestamps(rng, n)
        lines += [f"{user}::{m}::{s}::{t}\n" for m, s, t in zip(movies, stars, times)]
    (folder / "ratings.dat").write_text("".join(lines), encoding="ascii")
    users = [
        f"{u}::{rng.choice(['M', 'F'])}::{rng.choice(AGES)}::{rng.integers(21)}::00000\n"
        for u in range(1, USERS + 1)
    ]
    (folder / "users.dat").write_text("".join(users), encoding="ascii")
    movies = [
        f"{m}::Movie {m} à la carte ({1919 + m % 81})::Drama|Comedy\n" for m in range(1, MOVIES + 1)
    ]
    (folder / "movies.dat").write_text("".join(movies), encoding="iso-8859-1")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "ml-1m", Path(tmp) / "prepared"
        raw.mkdir()
        write_ml1m(raw)
        command = [sys.executable, "-m", "e2urec.cli", "prepare", "--dataset", "ml-1m"]
        started = time.perf_counter()
        subprocess.run(
            [*command, "--raw", str(raw), "--out", str(out)], check=True, stdout=subprocess.DEVNULL
        )
        seconds = time.perf_counter() - started
        manifest = json.loads((out / "manifest.json").read_text())
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    train_users = manifest["users"]["train"]
    expected = {
        "candidates": RATINGS - 5 * USERS,  # every user has >= 20 ratings, so all but 5 each count
        "train/valid/test": [60_000, 20_000, 20_000],
        "forgotten": round(0.2 * train_users),
    }
    got = {
        "candidates": manifest["candidates"],
        "train/valid/test": [manifest["counts"][k] for k in ("train", "valid", "test")],
        "forgotten": manifest["users"]["forgotten"],
    }
    report = {
        "ratings": RATINGS,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_mb),
        "train_users": train_users,
        "counts": manifest["counts"],
        "expected": expected,
        "got": got,
        "ok": got == expected,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
