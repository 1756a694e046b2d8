"""Retrain: the gold standard. Train the backbone from scratch on the retain set only."""

from __future__ import annotations

from e2urec.methods.base import Method, Task
from e2urec.model.train import train


class Retrain(Method):
    name = "retrain"
    needs_original = False

    def run(self, task: Task) -> tuple[str, int, dict]:
        if task.base is None:
            raise ValueError("retrain needs the backbone the original was trained from (task.base)")
        config = task.train_config
        report = train(
            task.base, task.retain, task.retained_valid(), task.out, config, task.bottom_cache,
            task.answers,
        )  # fmt: skip
        info = {k: report[k] for k in ("epochs_run", "best_epoch")}
        return str(task.out), report["trainable_params"], info
