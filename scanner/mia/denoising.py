"""Denoising losses under shared noise: the measurement every gray-box attack builds on.

``L(x, c, t) = ||eps - eps_theta(x_t, t, c)||^2`` (mean over latent elements). The noise for
repeat r at timestep t is drawn from a generator seeded with (seed, r, t) and is the same for
every item and every condition, so scores are paired: differences between conditions (CLiD)
and between items are not blurred by noise draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scanner.models.base import TextToImageModel


@dataclass(frozen=True)
class NoiseProtocol:
    timesteps: tuple[int, ...] = (100, 200, 300)
    repeats: int = 3
    seed: int = 0
    batch_size: int = 128


def shared_noise(shape: tuple[int, ...], repeat: int, timestep: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + repeat * 1009 + timestep)
    return torch.randn(shape, generator=generator)


def denoising_losses(model: TextToImageModel, images: np.ndarray, condition_sets: Sequence[Sequence[str]],
                     protocol: NoiseProtocol = NoiseProtocol()) -> np.ndarray:
    """Losses [conditions, items, repeats, timesteps]; ``condition_sets[c][i]`` is item i's text
    under condition c (the true caption, a weakened caption, the empty string...)."""
    import torch

    n = len(images)
    out = np.zeros((len(condition_sets), n, protocol.repeats, len(protocol.timesteps)), np.float32)
    for start in range(0, n, protocol.batch_size):
        stop = min(n, start + protocol.batch_size)
        x0 = model.encode_image(images[start:stop])
        conditions = [model.encode_text(list(texts[start:stop])) for texts in condition_sets]
        for r in range(protocol.repeats):
            for k, t in enumerate(protocol.timesteps):
                noise = shared_noise(tuple(x0.shape[1:]), r, t, protocol.seed).to(x0.device, x0.dtype).expand_as(x0)
                timesteps = torch.full((stop - start,), t, device=x0.device, dtype=torch.long)
                x_t = model.add_noise(x0, noise, timesteps)
                for c, condition in enumerate(conditions):
                    eps = model.predict_noise(x_t, timesteps, condition)
                    out[c, start:stop, r, k] = ((eps.float() - noise.float()) ** 2).mean(dim=(1, 2, 3)).cpu().numpy()
    return out
