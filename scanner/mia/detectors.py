"""Memorization detectors: they score a prompt without an image, so they also rank prompts before
mass sampling (``scanner.mia.triage``).

Both start from pure noise x_T (the denoiser's input at the sampler's first step) and compare
the prediction under the prompt with the one under the empty prompt, so a prompt costs a few
forward passes instead of hundreds of samples. The predictions are the denoiser's raw output in
its family's parametrisation (epsilon for SD 1; v for a v-prediction model, where the guidance
difference is the epsilon one scaled per timestep, so the magnitudes rank prompts alike, and
the alignment is measured on v as the model predicts it; the velocity n - x0 for a
flow-matching model such as SD3, memscan's own extension of both detectors, whose papers state
them for epsilon: at pure noise the velocity's guidance difference is minus the difference of
the predicted images, so a prompt that pulls every seed to one image still shows a large one;
docs/MEASUREMENTS.md says how well they transfer):

- Wen et al. (ICLR 2024): the magnitude ``||eps(x_T, c) - eps(x_T, empty)||`` at the first
  sampling step, large for memorized prompts;
- Asthana and Belagiannis (ICLR 2026): that magnitude plus the angular alignment between the
  unconditional prediction and the guidance direction ``eps(x_T, c) - eps(x_T, empty)``, taken
  at a low-noise timestep (the third-last sampling step) where the log-probability is
  anisotropic and the magnitude alone misleads. The cosine is over latent channels, per
  position, then averaged; the two terms are added with weights 1 and 2 (the paper's
  weights for Stable Diffusion 1.x).

A third, black-box one asks the symptom the scan looks for, cheaply:
- seed agreement: a few seeds (four by default) sampled with a quarter of the steps, half the
  guidance and a solver made for few steps (DPM-Solver++); the score is minus the smallest tiled
  l2 between two of a prompt's samples, relative to how far those samples are from other
  prompts' samples (their anchor distance, as in Carlini's anchored l2). A memorized prompt
  pulls seeds to the same image early in sampling (the observation behind Webster's few-step
  extraction, 2023), an ordinary prompt does not. Why each choice (docs/MEASUREMENTS.md has the
  numbers): guidance narrows every prompt's samples towards one mode, so the scan's full
  guidance makes ordinary prompts agree too; DDIM at five steps stops far from the image its
  seed reaches at twenty, DPM-Solver++ much nearer; a prompt that collapses on only half of
  its seeds shows two agreeing samples among four far more often than among two; and samples
  of dark, flat prompts are close to everything, which the anchor distance discounts. Costs
  four images at a quarter of the steps: 6% of sampling 16 seeds in model passes, 8% measured on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from scanner.mia.attack import Attack
from scanner.mia.blackbox import generate_per_caption
from scanner.models.base import DENOISE, SAMPLE, Denoiser, Sampler


def _per_prompt_mean(model: Denoiser, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int,
                     statistic: Callable, batch_size: int) -> np.ndarray:
    """``statistic(x_T, condition, empty_condition)`` per (prompt, seed), averaged over seeds."""
    scores = np.zeros(len(prompts), np.float32)
    pairs = [(p, s) for p in range(len(prompts)) for s in seeds]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        x_t = model.first_step_input([s for _, s in chunk], num_inference_steps)
        values = statistic(x_t, model.encode_condition([prompts[p] for p, _ in chunk]),
                           model.encode_condition([""] * len(chunk)))
        for (p, _), value in zip(chunk, values):
            scores[p] += value / len(seeds)
    return scores


def _guidance(model: Denoiser, x_t, timestep: float, condition, empty):
    """(f(x_t, empty), f(x_t, c) - f(x_t, empty)) at one timestep, in float32 (f: the denoiser's output)."""
    unconditional = model.predict(x_t, timestep, empty).float()
    return unconditional, model.predict(x_t, timestep, condition).float() - unconditional


def conditional_gap(model: Denoiser, prompts: Sequence[str], seeds: Sequence[int],
                    num_inference_steps: int = 20, batch_size: int = 64) -> np.ndarray:
    """Wen et al.: ``||f(x_T, c) - f(x_T, empty)||`` at the first sampling step, averaged over
    seeds; one score per prompt, two forward passes per seed."""
    first = model.sampling_timesteps(num_inference_steps)[0]

    def magnitude(x_t, condition, empty):
        return _guidance(model, x_t, first, condition, empty)[1].flatten(1).norm(dim=1).cpu().numpy()

    return _per_prompt_mean(model, prompts, seeds, num_inference_steps, magnitude, batch_size)


def norm_alignment(model: Denoiser, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 20,
                   alignment_weight: float = 2.0, batch_size: int = 64) -> np.ndarray:
    """Asthana and Belagiannis: the first-step magnitude plus ``alignment_weight`` times the
    cosine between f(x_T, empty) and the guidance direction at the third-last sampling
    timestep, both on the same pure noise; four forward passes per seed."""
    import torch

    timesteps = model.sampling_timesteps(num_inference_steps)
    first, low_noise = timesteps[0], timesteps[max(0, len(timesteps) - 3)]

    def norm_plus_alignment(x_t, condition, empty):
        magnitude = _guidance(model, x_t, first, condition, empty)[1].flatten(1).norm(dim=1)
        unconditional, direction = _guidance(model, x_t, low_noise, condition, empty)
        alignment = torch.nn.functional.cosine_similarity(unconditional, direction, dim=1).flatten(1).mean(dim=1)
        return (magnitude + alignment_weight * alignment).cpu().numpy()

    return _per_prompt_mean(model, prompts, seeds, num_inference_steps, norm_plus_alignment, batch_size)


def anchor_distances(images: np.ndarray, neighbours: int = 10, reference: int = 2048, block: int = 1024) -> np.ndarray:
    """[prompts, seeds] mean root-mean-square distance of each image to its ``neighbours`` nearest
    images of other prompts, among a fixed random ``reference`` sample of all of them. Images are
    turned into floats a block at a time: a large triage holds only its uint8 thumbnails."""
    from scanner.distances import as_unit

    prompts, seeds = images.shape[:2]
    flat = images.reshape(prompts * seeds, -1)
    owner = np.repeat(np.arange(prompts), seeds)
    chosen = np.sort(np.random.default_rng(0).choice(len(flat), size=min(reference, len(flat)), replace=False))
    others = as_unit(flat[chosen])
    others_squared = np.square(others).sum(axis=1)
    anchors = np.ones(len(flat), np.float32)  # a lone prompt has nothing to be relative to
    for start in range(0, len(flat), block):
        queries = as_unit(flat[start:start + block])
        squared = np.square(queries).sum(axis=1)[:, None] + others_squared[None] - 2 * queries @ others.T
        distance = np.sqrt(np.maximum(squared, 0) / flat.shape[1])
        distance[owner[start:start + block, None] == owner[chosen][None]] = np.nan
        nearest = np.sort(distance, axis=1)[:, :neighbours]  # NaNs sort last
        found = ~np.isnan(nearest).all(axis=1)
        anchors[start:start + block][found] = np.nanmean(nearest[found], axis=1)
    return anchors.reshape(prompts, seeds)


def anchored_agreement(images: np.ndarray, block: int = 4096) -> np.ndarray:
    """Per prompt, minus the smallest tiled l2 between two of its [prompts, seeds, H, W, 3]
    images divided by the pair's mean anchor distance."""
    from scanner.distances import tiled_l2

    anchors = anchor_distances(images)
    prompts, seeds = images.shape[:2]
    scores = np.empty(prompts, np.float32)
    for start in range(0, prompts, block):
        part, anchor = images[start:start + block], anchors[start:start + block]
        ratios = [tiled_l2(part[:, a], part[:, b]) / np.maximum(0.5 * (anchor[:, a] + anchor[:, b]), 1e-6)
                  for a in range(seeds) for b in range(a + 1, seeds)]
        scores[start:start + block] = -np.min(ratios, axis=0)
    return scores


def few_step_samples(model: Sampler, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 20,
                     guidance_scale: float = 2.5, batch_size: int = 64, thumbnail_size: int = 64) -> np.ndarray:
    """uint8 thumbnails [prompts, seeds, h, w, 3] sampled with the few-step solver and a quarter of the steps."""
    if len(seeds) < 2:
        raise ValueError("seed agreement needs at least two seeds")
    return generate_per_caption(model, prompts, seeds, max(2, num_inference_steps // 4), guidance_scale, batch_size,
                                few_step=True, thumbnail_size=thumbnail_size)


def seed_agreement(model: Sampler, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 20,
                   guidance_scale: float = 2.5) -> np.ndarray:
    """``anchored_agreement`` of each prompt's few-step samples (``detector_scores`` passes half the scan's guidance)."""
    return anchored_agreement(few_step_samples(model, prompts, seeds, num_inference_steps, guidance_scale))


WEN = Attack("wen", DENOISE, "threshold",
             "norm of the text-conditional minus unconditional prediction at the first step (Wen et al. 2024)",
             evidence=lambda model, prompts, seeds, steps, guidance: conditional_gap(model, prompts, seeds, steps))
NORM_ALIGN = Attack("norm_align", DENOISE, "threshold",
                    "that norm plus the alignment at a low-noise step (Asthana and Belagiannis 2026)",
                    evidence=lambda model, prompts, seeds, steps, guidance: norm_alignment(model, prompts, seeds, steps))
# half the scan's guidance (why: the module's docstring); anchored once every prompt's samples are in
SEED_AGREEMENT = Attack("seed_agreement", SAMPLE, "threshold",
                        "few-step samples of a caption agree across seeds, relative to other prompts' samples (memscan)",
                        evidence=lambda model, prompts, seeds, steps, guidance: few_step_samples(
                            model, prompts, seeds, steps, max(1.0, guidance / 2)),
                        from_evidence=anchored_agreement)
