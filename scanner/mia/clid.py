"""CLiD (Zhai et al., NeurIPS 2024): the conditional likelihood discrepancy.

A member's loss drops much more when its true caption replaces a weakened one than a
non-member's does. For weakened conditions ``c*_i`` (the caption with its 30%, 50%, 70% most
important words replaced by the end-of-text token, and the null condition: the empty string,
tokenized and padded) ``D_i = mean_t [L(x, c*_i, t) - L(x, c, t)]`` under shared noise.

``CLiD_th`` = alpha * S(mean_i D_i) + (1 - alpha) * S(-L) with a robust scaler S (median and
interquartile range); S, alpha and the decision threshold are fitted on an auxiliary split and
applied unchanged to the evaluated one. ``CLiD_vec`` feeds the vector ``[D_1..D_k, L]`` to a small
classifier trained on the auxiliary half (gradient-boosted trees, ``scanner.mia.classifier``, as the
paper's XGBoost). (DESIGN.md writes the same rule with both signs flipped,
lower = member; memscan's scores are all "higher = member".)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scanner.mia.attack import Attack, Features, Fitted, classifier_fit
from scanner.mia.classifier import BoostedTrees
from scanner.mia.metrics import best_threshold, roc_auc
from scanner.models.base import DENOISE

WEAKENING_SHARES = (0.3, 0.5, 0.7)


def word_importance(caption: str, encode) -> list[float]:
    """How far the caption's condition moves when each word is dropped (``encode``: texts -> array)."""
    words = caption.split()
    if len(words) < 2:
        return [1.0] * len(words)
    variants = [caption] + [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
    embedded = encode(variants)
    return [float(np.linalg.norm(embedded[i + 1] - embedded[0])) for i in range(len(words))]


def weakened_captions(caption: str, importance: Sequence[float], end_token: str,
                      shares: Sequence[float] = WEAKENING_SHARES) -> list[str]:
    """The caption with its ``share`` most important words replaced by ``end_token``, per share."""
    words = caption.split()
    order = np.argsort(-np.asarray(importance), kind="stable")
    out = []
    for share in shares:
        drop = set(order[:max(1, int(round(share * len(words))))].tolist())
        out.append(" ".join(end_token if i in drop else w for i, w in enumerate(words)))
    return out


def discrepancies(losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``losses`` [conditions, items, repeats, timesteps] with condition 0 the true caption:
    returns (D [items, weakened conditions], L [items])."""
    true = losses[0].mean(axis=(1, 2))
    weakened = losses[1:].mean(axis=(2, 3)).T
    return weakened - true[:, None], true


@dataclass(frozen=True)
class RobustScaler:
    median: float
    scale: float

    @classmethod
    def fit(cls, values: np.ndarray) -> "RobustScaler":
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return cls(float(median), float(q3 - q1) or 1.0)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return (values - self.median) / self.scale


@dataclass(frozen=True)
class ClidThreshold:
    """The thresholded CLiD attack, fitted on auxiliary members and non-members."""

    alpha: float
    d_scaler: RobustScaler
    l_scaler: RobustScaler
    threshold: float

    def score(self, d: np.ndarray, loss: np.ndarray) -> np.ndarray:
        return self.alpha * self.d_scaler(d.mean(axis=1)) + (1 - self.alpha) * self.l_scaler(-loss)

    @classmethod
    def fit(cls, d: np.ndarray, loss: np.ndarray, labels: np.ndarray) -> "ClidThreshold":
        d_scaler, l_scaler = RobustScaler.fit(d.mean(axis=1)), RobustScaler.fit(-loss)
        best = max(np.linspace(0, 1, 11), key=lambda a: roc_auc(
            a * d_scaler(d.mean(axis=1)) + (1 - a) * l_scaler(-loss), labels))
        fitted = cls(float(best), d_scaler, l_scaler, 0.0)
        return cls(fitted.alpha, d_scaler, l_scaler, best_threshold(fitted.score(d, loss), labels))


def fit_clid_threshold(raw: Features, labels: np.ndarray, fitted_on: np.ndarray) -> Fitted:
    rule = ClidThreshold.fit(raw["d"][fitted_on], raw["loss"][fitted_on], labels[fitted_on])
    return rule.score(raw["d"], raw["loss"]), rule.threshold, {"alpha": rule.alpha}


CLID_TH = Attack("clid_th", DENOISE, "robust scalers, mixing weight and threshold",
                 "CLiD: loss drop from weakened captions to the true one, mixed with the loss (Zhai et al. 2024, Eq. 9)",
                 measure=lambda measured: dict(zip(("d", "loss"), discrepancies(measured.losses))),
                 fit=fit_clid_threshold, weakened=True)
# trees, as the paper's XGBoost (against a logistic regression: scripts/bench_clid_classifier.py)
CLID_VEC = Attack("clid_vec", DENOISE, "classifier and threshold", "CLiD's vector [D_1..D_k, L] to a classifier (Zhai et al. 2024)",
                  measure=lambda measured: {"features": np.column_stack(discrepancies(measured.losses))},
                  fit=classifier_fit(BoostedTrees), weakened=True)
