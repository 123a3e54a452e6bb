"""The classifiers that vector-valued attacks train on the auxiliary half: a logistic regression
(Wu et al.'s attack, dataset inference) and gradient-boosted trees (CLiD's vector attack, as in
Zhai et al. 2024, who use XGBoost; docs/MEASUREMENTS.md compares the two on the demo)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LogisticRegression:
    """A small logistic regression (standardized inputs, L2 penalty), fitted by gradient descent."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, steps: int = 2000, lr: float = 0.5, penalty: float = 1e-3) -> "LogisticRegression":
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-12
        z = (x - mean) / scale
        weights, bias = np.zeros(x.shape[1]), 0.0
        for _ in range(steps):
            p = 1.0 / (1.0 + np.exp(-(z @ weights + bias)))
            weights -= lr * (z.T @ (p - y) / len(y) + penalty * weights)
            bias -= lr * float(np.mean(p - y))
        return cls(mean, scale, weights, bias)

    def score(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.weights + self.bias

    def describe(self) -> dict:
        return {"classifier": "logistic regression", "weights": self.weights.tolist()}


@dataclass(frozen=True)
class BoostedTrees:
    """scikit-learn's histogram gradient boosting, small and seeded: the auxiliary halves are tens
    to hundreds of items, so shallow trees, few leaves and early stopping off (no split to spare)."""

    model: Any

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, seed: int = 0) -> "BoostedTrees":
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=5,
                                               l2_regularization=1.0, early_stopping=False, random_state=seed)
        return cls(model.fit(x, y.astype(int)))

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.model.decision_function(x)

    def describe(self) -> dict:
        return {"classifier": "gradient-boosted trees", "iterations": int(self.model.n_iter_)}
