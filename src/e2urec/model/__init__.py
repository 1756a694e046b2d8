"""Model: load a backbone, score Yes/No, fine-tune it into a recommender."""

from e2urec.model.backbone import Recommender, count_parameters, load, save
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
