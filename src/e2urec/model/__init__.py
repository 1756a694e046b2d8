"""Model: load a backbone (model/loader.py reads every kind of model folder), score Yes/No (the one
scoring function), fine-tune it into a recommender. It may import data/, `metrics` (training
keeps the epoch with the best valid AUC) and the shared modules (config, memory), never methods/,
evals/ or above."""

from e2urec.model.backbone import Recommender, count_parameters, save
from e2urec.model.loader import load
from e2urec.model.scoring import encode, forward, score, yes_probability

__all__ = [
    "Recommender",
    "count_parameters",
    "encode",
    "forward",
    "load",
    "save",
    "score",
    "yes_probability",
]
