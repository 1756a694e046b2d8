"""Shared maths for unlearning and evaluation: pure functions over logits or probabilities."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-12


def kl_rows(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) of each row, from logits over the last dim softened by T."""
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(-1)


def kl_div(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over rows of `kl_rows`."""
    return kl_rows(teacher_logits, student_logits, temperature).mean()


def forgetting_teacher(
    original: torch.Tensor, augmented: torch.Tensor, alpha: float
) -> torch.Tensor:
    """E2URec's forgetting teacher: step away from what tuning on the forget data added."""
    return original - alpha * F.relu(augmented - original)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence per row, base 2 (in [0, 1]); rows are distributions."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)
    return 0.5 * _kl_rows(p, m, np.log2) + 0.5 * _kl_rows(q, m, np.log2)


def symmetric_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """0.5 * (KL(p||q) + KL(q||p)), natural log: what the paper's code reports as "JSD"."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    return 0.5 * (_kl_rows(p, q, np.log, EPS) + _kl_rows(q, p, np.log, EPS))


def l2_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(p, np.float64) - np.asarray(q, np.float64), axis=-1)


def _kl_rows(p, q, log, eps: float = 0.0) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (log(p + eps) - log(q + eps)), 0.0)
    return terms.sum(-1)
