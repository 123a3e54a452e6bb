"""Batched, seeded, resumable sampling: prompts -> generations.

A generation is fully identified by (model, prompt, seed, sampler settings): its id is a
hash of them, its initial noise comes from a CPU generator seeded with its own seed (so it
does not depend on the batch it was drawn in), and its row is written together with the
rest of its batch in one transaction. A scan started again skips every (prompt, seed)
already stored, so a killed scan resumes without losing or duplicating a row.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from scanner import features
from scanner.config import SamplingConfig
from scanner.models.base import ImageTextEmbedder, TextToImageModel
from scanner.store import Store, now, stable_id


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    source: str | None = None
    source_item_id: str | None = None

    @classmethod
    def from_text(cls, text: str, source: str | None = None, source_item_id: str | None = None) -> "Prompt":
        return cls(stable_id("prompt", text), text, source, source_item_id)


@dataclass(frozen=True)
class WorkItem:
    prompt: Prompt
    seed: int


def library_versions() -> dict[str, str]:
    """Versions that change generated pixels or hashes: stored with every run as provenance."""
    import importlib.metadata as metadata

    versions = {"python": platform.python_version()}
    for package in ("memscan", "torch", "diffusers", "transformers", "open_clip_torch", "numpy", "pillow",
                    "imagehash", "duckdb", "faiss-cpu"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def plan_work(prompts: Sequence[Prompt], sampling: SamplingConfig, done: set[tuple[str, int]]) -> list[WorkItem]:
    """Every (prompt, seed) of the scan that is not stored yet, in a fixed order."""
    seeds = range(sampling.seed_base, sampling.seed_base + sampling.samples_per_prompt)
    return [WorkItem(p, s) for p in prompts for s in seeds if (p.prompt_id, s) not in done]


def stored_work(store: Store, run_id: str) -> set[tuple[str, int]]:
    rows = store.execute("SELECT prompt_id, seed FROM generations WHERE run_id = ?", [run_id])
    return {(prompt_id, int(seed)) for prompt_id, seed in rows}


def generation_rows(run_id: str, model: TextToImageModel, batch: Sequence[WorkItem], images: np.ndarray,
                    sampling: SamplingConfig, store: Store, thumbnail_size: int,
                    embedder: ImageTextEmbedder | None = None) -> list[dict]:
    """Rows, image files and features for one generated batch; non-finite images become failed rows."""
    rows, finite_pixels, finite_rows = [], [], []
    for item, image in zip(batch, images):
        row = {
            "run_id": run_id,
            "generation_id": stable_id(model.model_hash, item.prompt.text, item.seed, sampling.num_inference_steps,
                                       sampling.guidance_scale, getattr(model, "scheduler_name", ""), model.resolution, length=20),
            "prompt_id": item.prompt.prompt_id, "seed": item.seed,
            "num_inference_steps": sampling.num_inference_steps, "guidance_scale": float(sampling.guidance_scale),
            "scheduler": getattr(model, "scheduler_name", ""), "height": int(image.shape[0]), "width": int(image.shape[1]),
            "batch_size": sampling.batch_size, "status": "ok", "error": None, "image_path": None, "image_sha256": None,
            "thumbnail_path": None, "phash": None, "dhash": None, "degenerate": None, "embedding": None, "created_at": now(),
        }
        rows.append(row)
        if not np.isfinite(image).all():
            row.update(status="failed", error="non-finite pixels in the generated image")
            continue
        pixels = features.to_uint8(image)
        row["image_path"], row["image_sha256"] = features.write_content_addressed(features.png_bytes(pixels), store.files_dir)
        small = features.thumbnail(pixels, thumbnail_size)
        row["thumbnail_path"] = row["image_path"] if small is pixels else \
            features.write_content_addressed(features.png_bytes(small), store.files_dir)[0]
        row["phash"], row["dhash"] = features.perceptual_hashes(pixels)
        row["degenerate"] = features.is_degenerate(pixels)
        finite_pixels.append(pixels)
        finite_rows.append(row)
    if embedder is not None and finite_rows:
        for row, vector in zip(finite_rows, embedder.embed_images(np.stack(finite_pixels))):
            row["embedding"] = vector.tolist()
    return rows


def record_prompts(store: Store, run_id: str, prompts: Sequence[Prompt]) -> None:
    store.insert("prompts", [{"run_id": run_id, "prompt_id": p.prompt_id, "text": p.text, "source": p.source,
                              "source_item_id": p.source_item_id} for p in prompts])


def run_generation(store: Store, run_id: str, model: TextToImageModel, prompts: Sequence[Prompt],
                   sampling: SamplingConfig, thumbnail_size: int = 64, embedder: ImageTextEmbedder | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Sample every missing (prompt, seed) of the run; returns counts and seconds spent."""
    work = plan_work(prompts, sampling, stored_work(store, run_id))
    sampling_seconds = 0.0
    feature_seconds = 0.0
    generated = 0
    for start in range(0, len(work), sampling.batch_size):
        batch = work[start:start + sampling.batch_size]
        began = time.perf_counter()
        images = model.generate([w.prompt.text for w in batch], [w.seed for w in batch],
                                num_inference_steps=sampling.num_inference_steps, guidance_scale=sampling.guidance_scale)
        sampled = time.perf_counter()
        rows = generation_rows(run_id, model, batch, images, sampling, store, thumbnail_size, embedder)
        with store.transaction():
            store.insert("generations", rows)
        feature_seconds += time.perf_counter() - sampled
        sampling_seconds += sampled - began
        generated += len(batch)
        if on_batch:
            on_batch(len(batch), len(work))
    return {"generated": generated, "skipped_existing": len(prompts) * sampling.samples_per_prompt - len(work),
            "sampling_s": sampling_seconds, "features_s": feature_seconds}
