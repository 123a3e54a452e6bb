"""The loss attack: members are denoised better. Score ``-mean_t L(x, c, t)`` (higher: member)."""

from __future__ import annotations

import numpy as np


def loss_scores(losses: np.ndarray) -> np.ndarray:
    """``losses``: [items, repeats, timesteps] under the true caption."""
    return -losses.mean(axis=(1, 2))
