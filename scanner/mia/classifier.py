"""The small classifier that vector-valued attacks (CLiD_vec, Wu et al.'s) train on the auxiliary half."""

from __future__ import annotations

from dataclasses import dataclass

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
