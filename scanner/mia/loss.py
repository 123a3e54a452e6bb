"""The loss attack: members are denoised better. Score ``-mean_t L(x, c, t)`` (higher: member)."""

from __future__ import annotations

import numpy as np

from scanner.mia.attack import Attack, classifier_fit
from scanner.mia.classifier import LogisticRegression
from scanner.models.base import DENOISE


def loss_scores(losses: np.ndarray) -> np.ndarray:
    """``losses``: [items, repeats, timesteps] under the true caption."""
    return -losses.mean(axis=(1, 2))


LOSS = Attack("loss", DENOISE, "threshold",
              "minus the family's training loss under the true caption, shared noise (Matsumoto et al. 2023)",
              measure=lambda measured: {"score": loss_scores(measured.losses[0])}, text=False)
# the loss at each noise level as a vector (memscan: what dataset inference fits on a model without prompts, where
# CLiD's caption-weakening has nothing to weaken)
LOSS_VEC = Attack("loss_vec", DENOISE, "classifier and threshold",
                  "minus the loss at each noise level, averaged over repeats, to a logistic regression",
                  measure=lambda measured: {"features": -measured.losses[0].mean(axis=1)},
                  fit=classifier_fit(LogisticRegression), text=False)
