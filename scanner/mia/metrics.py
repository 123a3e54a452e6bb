"""Membership-inference metrics, always with their sample counts: ROC AUC, TPR at a fixed FPR,
balanced accuracy at a threshold chosen elsewhere, and the ROC curve's points.
Scores follow one convention: higher means "more likely a member"."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AttackMetrics:
    auc: float
    tpr_at_1_fpr: float
    tpr_at_01_fpr: float
    balanced_accuracy: float
    threshold: float
    n_members: int
    n_nonmembers: int
    roc: list[tuple[float, float]]


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), one point per distinct score, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order].astype(bool)
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[distinct]
    fps = np.cumsum(~labels)[distinct]
    positives, negatives = labels.sum(), (~labels).sum()
    tpr = np.r_[0.0, tps / max(positives, 1)]
    fpr = np.r_[0.0, fps / max(negatives, 1)]
    return fpr, tpr, np.r_[np.inf, scores[distinct]]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability that a random member outscores a random non-member (ties count half)."""
    labels = labels.astype(bool)
    ranks = _average_ranks(scores)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> float:
    """The highest TPR among thresholds whose FPR is at most ``max_fpr``."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(tpr[fpr <= max_fpr].max())


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    labels = labels.astype(bool)
    predicted = scores >= threshold
    return float(0.5 * (predicted[labels].mean() + (~predicted[~labels]).mean()))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold with the best balanced accuracy, to be applied to *other* data."""
    _, _, thresholds = roc_curve(scores, labels)
    candidates = thresholds[1:]
    accuracies = [balanced_accuracy(scores, labels, t) for t in candidates]
    return float(candidates[int(np.argmax(accuracies))])


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float) -> AttackMetrics:
    """Metrics of one attack on an evaluation split; ``threshold`` must come from another split."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    fpr, tpr, _ = roc_curve(scores, labels)
    keep = np.unique(np.linspace(0, len(fpr) - 1, num=min(len(fpr), 101)).astype(int))
    return AttackMetrics(roc_auc(scores, labels), tpr_at_fpr(scores, labels, 0.01), tpr_at_fpr(scores, labels, 0.001),
                         balanced_accuracy(scores, labels, threshold), float(threshold), int(labels.sum()),
                         int((~labels).sum()), [(float(fpr[i]), float(tpr[i])) for i in keep])
