"""Denoising losses under shared noise: the measurement every gray-box attack builds on.

``L(x, c, t)``: the model family's own training loss (``Denoiser.training_loss``: for SD 1
``||eps - eps_theta(x_t, t, c)||^2``, for a v-prediction model the same against v), mean over
latent elements, with timesteps on the training scheduler's 0-1000 scale. The noise for
repeat r at timestep t is drawn from a generator seeded with (seed, r, t) and is the same for
every item and every condition, so scores are paired: differences between conditions (CLiD)
and between items are not blurred by noise draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scanner.models.base import Denoiser


@dataclass(frozen=True)
class NoiseProtocol:
    timesteps: tuple[int, ...] | None = None  # None: the model family's for its resolution (``defaults.loss_timesteps``)
    repeats: int = 3
    seed: int = 0
    batch_size: int = 128

    def for_model(self, model: Denoiser) -> "NoiseProtocol":
        return self if self.timesteps else dataclasses.replace(self, timesteps=tuple(model.defaults.loss_timesteps))


def shared_noise(shape: tuple[int, ...], repeat: int, timestep: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + repeat * 1009 + timestep)
    return torch.randn(shape, generator=generator)


def denoising_losses(model: Denoiser, images: np.ndarray, condition_sets: Sequence[Sequence[str]],
                     protocol: NoiseProtocol = NoiseProtocol()) -> np.ndarray:
    """Losses [conditions, items, repeats, timesteps]; ``condition_sets[c][i]`` is item i's text
    under condition c (the true caption, a weakened caption, the empty string...)."""
    import torch

    protocol = protocol.for_model(model)
    n = len(images)
    out = np.zeros((len(condition_sets), n, protocol.repeats, len(protocol.timesteps)), np.float32)
    for start in range(0, n, protocol.batch_size):
        stop = min(n, start + protocol.batch_size)
        x0 = model.encode_image(images[start:stop])
        conditions = [model.encode_condition(list(texts[start:stop])) for texts in condition_sets]
        for r in range(protocol.repeats):
            for k, t in enumerate(protocol.timesteps):
                noise = shared_noise(tuple(x0.shape[1:]), r, t, protocol.seed).to(x0.device, x0.dtype).expand_as(x0)
                timesteps = torch.full((stop - start,), t, device=x0.device, dtype=torch.long)
                for c, condition in enumerate(conditions):
                    out[c, start:stop, r, k] = model.training_loss(x0, condition, timesteps, noise).cpu().numpy()
    return out
