"""Batched, seeded, resumable sampling: prompts -> generations.

A generation is fully identified by (model, prompt, seed, sampler settings): its id is a
hash of them, and its initial noise comes from a CPU generator seeded with its own seed.
Work is cut into fixed batches (units) that a pool runs, in this process or on Ray workers;
the rows come back here and are written in transactions. A scan started again runs only the
units with a missing (prompt, seed), so a killed scan resumes without losing or duplicating a row.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scanner import features
from scanner.config import SamplingConfig, SettingError
from scanner.distributed import Pool
from scanner.errors import MemscanError
from scanner.models.base import ImageTextEmbedder, TextToImageModel
from scanner.models.loading import WorkerModels
from scanner.store import BatchWriter, Store, now, stable_id


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


@dataclass(frozen=True)
class WorkUnit:
    """One sampling batch: consecutive (prompt, seed) pairs of the scan's fixed plan."""

    items: tuple[WorkItem, ...]


def plan_units(prompts: Sequence[Prompt], sampling: SamplingConfig, done: set[tuple[str, int]]) -> list[WorkUnit]:
    """The batches of the scan that still miss a row.

    Batches are cut from the full plan (every prompt, every seed, batch_size at a time), not
    from what is missing: a resumed scan, or a unit retried on another worker, regenerates whole
    batches, so every image comes out of the same batch as in an uninterrupted single-process
    run and is bitwise equal to it on CPU (a batch's composition moves float32 pixels by ~1e-6).
    Rows already stored are left as they are by the idempotent insert."""
    seeds = range(sampling.seed_base, sampling.seed_base + sampling.samples_per_prompt)
    plan = [WorkItem(p, s) for p in prompts for s in seeds]
    units = [WorkUnit(tuple(plan[start:start + sampling.batch_size])) for start in range(0, len(plan), sampling.batch_size)]
    return [unit for unit in units if any((w.prompt.prompt_id, w.seed) not in done for w in unit.items)]


def stored_work(store: Store, run_id: str) -> set[tuple[str, int]]:
    rows = store.execute("SELECT prompt_id, seed FROM generations WHERE run_id = ?", [run_id])
    return {(prompt_id, int(seed)) for prompt_id, seed in rows}


@dataclass(frozen=True)
class SamplingJob:
    """Everything a worker needs besides its models to turn a unit into rows."""

    run_id: str
    model_hash: str
    precision: str
    sampling: SamplingConfig
    files_dir: str
    thumbnail_size: int

    def __post_init__(self) -> None:
        if self.sampling.num_inference_steps is None or self.sampling.guidance_scale is None:
            raise ValueError("a sampling job needs its steps and guidance: SamplingConfig.for_model(model) fills them")


@dataclass(frozen=True)
class UnitResult:
    rows: list[dict]
    sampling_s: float
    features_s: float
    requests: dict[str, float]  # what the unit asked of a model behind an HTTP API (``request_counts``); else empty


def request_counts(model) -> dict[str, float]:
    """A model behind an HTTP API counts its requests (sent, retried, failed, seconds waited); a local model has none."""
    return model.request_accounting() if hasattr(model, "request_accounting") else {}


def counted_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: value - before.get(name, 0.0) for name, value in after.items()}


def check_worker_model(model: TextToImageModel, model_hash: str, precision: str) -> None:
    """A worker must hold the driver's weights in the run's precision, or its rows would be another model's."""
    if model.model_hash != model_hash:
        raise MemscanError(f"{model.model_ref}: a worker loaded different weights than the driver "
                           f"({model.model_hash[:12]} vs {model_hash[:12]}); give every node the same model files")
    if model.precision != precision:
        raise MemscanError(f"{model.model_ref}: a worker samples in {model.precision} but the run is in {precision}; "
                           "fp16 and fp32 draw different images from one seed, so give every worker the same device type")


def sample_unit(job: SamplingJob, models: WorkerModels, unit: WorkUnit) -> UnitResult:
    """Generate one batch and compute its features; image files are written under ``files_dir``
    (content-addressed, so two workers writing the same image is harmless)."""
    model = models.model
    check_worker_model(model, job.model_hash, job.precision)
    began, asked = time.perf_counter(), request_counts(model)
    images = model.generate([w.prompt.text for w in unit.items], [w.seed for w in unit.items],
                            num_inference_steps=job.sampling.num_inference_steps,
                            guidance_scale=job.sampling.guidance_scale)
    sampled = time.perf_counter()
    rows = generation_rows(job, model, unit.items, images, models.embedder)
    return UnitResult(rows, sampled - began, time.perf_counter() - sampled, counted_since(asked, request_counts(model)))


def generation_rows(job: SamplingJob, model: TextToImageModel, batch: Sequence[WorkItem], images: np.ndarray,
                    embedder: ImageTextEmbedder | None = None) -> list[dict]:
    """Rows, image files and features for one generated batch; non-finite images become failed rows."""
    sampling, files_dir = job.sampling, Path(job.files_dir)
    rows, finite_pixels, finite_rows = [], [], []
    for index, (item, image) in enumerate(zip(batch, images)):
        row = {
            "run_id": job.run_id,
            "generation_id": stable_id(model.model_hash, model.precision, item.prompt.text, item.seed, sampling.num_inference_steps,
                                       sampling.guidance_scale, getattr(model, "scheduler_name", ""), model.resolution, length=20),
            "prompt_id": item.prompt.prompt_id, "seed": item.seed,
            "num_inference_steps": sampling.num_inference_steps, "guidance_scale": float(sampling.guidance_scale),
            "scheduler": getattr(model, "scheduler_name", ""), "height": int(image.shape[0]), "width": int(image.shape[1]),
            "batch_size": sampling.batch_size, "status": "ok", "error": None, "image_path": None, "image_sha256": None,
            "thumbnail_path": None, "phash": None, "dhash": None, "degenerate": None, "embedding": None, "created_at": now(),
        }
        rows.append(row)
        if not np.isfinite(image).all():
            row.update(status="failed", error=model.failure_reasons.get(index, "non-finite pixels in the generated image"))
            continue
        pixels = features.to_uint8(image)
        row["image_path"], row["image_sha256"] = features.write_content_addressed(features.png_bytes(pixels), files_dir)
        small = features.thumbnail(pixels, job.thumbnail_size)
        row["thumbnail_path"] = row["image_path"] if small is pixels else \
            features.write_content_addressed(features.png_bytes(small), files_dir)[0]
        row["phash"], row["dhash"] = features.perceptual_hashes(pixels)
        row["degenerate"] = features.is_degenerate(pixels)
        finite_pixels.append(pixels)
        finite_rows.append(row)
    if embedder is not None and finite_rows:
        for row, vector in zip(finite_rows, embedder.embed_images(np.stack(finite_pixels))):
            row["embedding"] = np.asarray(vector, np.float32)  # pickles (to a Ray driver) far faster than a list
    return rows


def record_prompts(store: Store, run_id: str, prompts: Sequence[Prompt]) -> None:
    store.insert("prompts", [{"run_id": run_id, "prompt_id": p.prompt_id, "text": p.text, "source": p.source,
                              "source_item_id": p.source_item_id} for p in prompts])


def run_generation(store: Store, job: SamplingJob, prompts: Sequence[Prompt], pool: Pool,
                   on_batch: Callable[[int], None] | None = None, flush_rows: int = 4096,
                   flush_seconds: float = 2.0) -> dict[str, float]:
    """Sample every missing (prompt, seed) of the run on ``pool`` and ingest the rows here, the
    store's only writer: in one transaction per ``flush_rows`` rows or ``flush_seconds``. The
    totals: seconds sampling and making features, rows generated and skipped, and the requests
    the units asked of a model behind an HTTP API, wherever they ran."""
    units = plan_units(prompts, job.sampling, stored_work(store, job.run_id))
    writer = BatchWriter(store, "generations", flush_rows, flush_seconds)
    totals = {"sampling_s": 0.0, "features_s": 0.0}
    for done, (_, result) in enumerate(pool.imap_unordered(functools.partial(sample_unit, job), units)):
        if done == 0:
            check_files_visible(store, result.rows)
        writer.add(result.rows)
        totals["sampling_s"] += result.sampling_s
        totals["features_s"] += result.features_s
        for name, value in result.requests.items():  # summed here: Ray workers count their own requests
            totals[f"requests_{name}"] = totals.get(f"requests_{name}", 0.0) + value
        if on_batch:
            on_batch(len(result.rows))
    writer.flush()
    totals["generated"] = writer.added
    totals["skipped_existing"] = len(prompts) * job.sampling.samples_per_prompt - writer.added
    return totals


def check_plan_fits(sampling: SamplingConfig, resolution: int, thumbnail_size: int) -> None:
    """Refuse, before anything is sampled, a plan that could never finish on this machine: one
    batch's pixels (float32 RGB, as the adapter hands them to this process) or one prompt's
    thumbnails (clustering holds them together) alone exceed its physical memory. Both are lower
    bounds, so nothing that fits is refused; the model's activations need several times more."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or the value is unknown
        return
    side = min(resolution, thumbnail_size)
    needs = {"batch_size": (sampling.batch_size * resolution**2 * 3 * 4, f"{resolution}x{resolution} float32 images"),
             # unset: the family's default, which the adapter keeps small enough
             "samples_per_prompt": ((sampling.samples_per_prompt or 0) * side**2 * 3, f"{side}x{side} thumbnails")}
    for setting, (needed, what) in needs.items():
        if needed > memory:
            raise SettingError(setting, f"{getattr(sampling, setting)} needs at least {needed / 2**30:.1f} GiB for its "
                                        f"{what} alone; this machine has {memory / 2**30:.1f} GiB of memory")


def check_files_visible(store: Store, rows: Sequence[dict]) -> None:
    """Workers write images themselves; on a cluster the files folder must be shared storage."""
    for row in rows:
        if row["image_path"] and not store.image_file(row["image_path"]).is_file():
            raise MemscanError(f"{store.files_dir}: a worker wrote {row['image_path']} there but this machine cannot "
                               "see it; put the files folder (--images-dir) on storage every node shares")
