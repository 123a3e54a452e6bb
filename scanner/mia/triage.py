"""Triage: rank prompts by a memorization detector (``scanner.mia.detectors``) before mass
sampling, and keep the top fraction (``--triage``, ``--triage-detector``). The detector's evidence
is gathered chunk by chunk on the scan's pool and scored once all of it is in."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scanner.distributed import LocalPool, Pool, map_in_order
from scanner.mia.attacks import ATTACKS, check_attacks
from scanner.models.base import Sampler, TextToImageModel
from scanner.models.loading import WorkerModels


def detector_scores(model: TextToImageModel, prompts: Sequence[str], detector: str, seeds: Sequence[int] = (0, 1, 2, 3),
                    num_inference_steps: int = 20, guidance_scale: float = 5.0) -> np.ndarray:
    """One score per prompt, higher for prompts more likely memorized; ``guidance_scale`` is the scan's."""
    chosen = ATTACKS[detector]
    return chosen.from_evidence(chosen.evidence(model, prompts, seeds, num_inference_steps, guidance_scale))


@dataclass(frozen=True)
class TriageJob:
    model_hash: str
    precision: str
    detector: str
    seeds: tuple[int, ...]
    num_inference_steps: int
    guidance_scale: float


def evidence_chunk(job: TriageJob, models: WorkerModels, prompts: Sequence[str]) -> np.ndarray:
    """A worker's task: the detector's evidence for a chunk of prompts."""
    from scanner.generate import check_worker_model

    check_worker_model(models.model, job.model_hash, job.precision)
    return ATTACKS[job.detector].evidence(models.model, prompts, job.seeds, job.num_inference_steps, job.guidance_scale)


def check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise ValueError("the triage fraction must be in (0, 1]")


def top_fraction(prompts: Sequence, scores: np.ndarray, fraction: float) -> list:
    """The top ``fraction`` of prompts by score (ties: the earlier prompt), in their original order."""
    check_fraction(fraction)
    keep = set(np.argsort(-np.asarray(scores), kind="stable")[: math.ceil(fraction * len(prompts))].tolist())
    return [p for i, p in enumerate(prompts) if i in keep]


def scores_on_pool(model: Sampler, texts: Sequence[str], detector: str, seeds: Sequence[int], num_inference_steps: int,
                   guidance_scale: float, pool: Pool | None = None, precision: str | None = None,
                   chunk_size: int = 256) -> np.ndarray:
    """The detector's score of every text, its evidence gathered chunk by chunk on ``pool``'s
    workers (Ray) or in this process, which must hold ``model``'s weights in ``precision`` (the
    pool's; by default ``model``'s own); scored once all evidence is in."""
    check_attacks(model, [detector])  # before any sampling
    pool = pool or LocalPool(WorkerModels(model))
    chunks = [texts[start:start + chunk_size] for start in range(0, len(texts), chunk_size)]
    job = TriageJob(model.model_hash, precision or model.precision, detector, tuple(seeds), num_inference_steps, guidance_scale)
    return ATTACKS[detector].from_evidence(np.concatenate(map_in_order(pool, functools.partial(evidence_chunk, job), chunks)))


def triage(model: Sampler, prompts: Sequence, fraction: float, seeds: Sequence[int] = (0, 1, 2, 3),
           num_inference_steps: int = 20, detector: str = "seed_agreement", guidance_scale: float = 5.0,
           pool: Pool | None = None, precision: str | None = None, chunk_size: int = 256) -> tuple[list, np.ndarray]:
    """The top ``fraction`` of prompts by the detector (in their original order), and every score."""
    check_fraction(fraction)  # before any sampling
    scores = scores_on_pool(model, [p.text for p in prompts], detector, seeds, num_inference_steps, guidance_scale, pool,
                            precision, chunk_size)
    return top_fraction(prompts, scores, fraction), scores
