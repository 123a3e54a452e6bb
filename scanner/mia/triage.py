"""Triage before mass sampling (Wen et al., ICLR 2024).

The magnitude of the text-conditional part of the noise prediction at the first sampling step,
``||eps(x_T, c) - eps(x_T, empty)||`` from pure noise, averaged over a few seeds, is large for
memorized prompts: two forward passes per seed rank prompts before any are mass-sampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from scanner.models.base import TextToImageModel


def conditional_gap(model: TextToImageModel, prompts: Sequence[str], seeds: Sequence[int],
                    num_inference_steps: int = 20, batch_size: int = 64) -> np.ndarray:
    """Wen et al. (ICLR 2024): the magnitude of the text-conditional part of the noise prediction,
    ``||eps(x_T, c) - eps(x_T, empty)||``, at the first sampling step from pure noise, averaged over
    seeds; large for memorized prompts. One score per prompt, two forward passes per seed."""
    import torch

    first = model.sampling_timesteps(num_inference_steps)[0]
    scores = np.zeros(len(prompts), np.float32)
    pairs = [(p, s) for p in range(len(prompts)) for s in seeds]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        x_t = model.initial_noise([s for _, s in chunk])
        step = torch.full((len(chunk),), int(first), device=x_t.device, dtype=torch.long)
        eps_c = model.predict_noise(x_t, step, model.encode_text([prompts[p] for p, _ in chunk]))
        eps_u = model.predict_noise(x_t, step, model.encode_text([""] * len(chunk)))
        gap = (eps_c - eps_u).float().flatten(1).norm(dim=1).cpu().numpy()
        for (p, _), value in zip(chunk, gap):
            scores[p] += value / len(seeds)
    return scores


def triage(model: TextToImageModel, prompts: Sequence, fraction: float, seeds: Sequence[int] = (0, 1, 2, 3),
           num_inference_steps: int = 20) -> tuple[list, np.ndarray]:
    """The top ``fraction`` of prompts by conditional gap (in their original order), and every score."""
    if not 0 < fraction <= 1:
        raise ValueError("the triage fraction must be in (0, 1]")
    scores = conditional_gap(model, [p.text for p in prompts], seeds, num_inference_steps)
    keep = set(np.argsort(-scores, kind="stable")[: math.ceil(fraction * len(prompts))].tolist())
    return [p for i, p in enumerate(prompts) if i in keep], scores
