"""Benchmark: sampling in one process vs on Ray, and the driver's ingest ceiling.

    python scripts/bench_ray.py [--prompts 40] [--samples-per-prompt 16] [--rows 200000]

One run, side by side on this machine:
1. the sampling stage of a demo scan (generation + features, CLIP embeddings included) in one
   process (all threads, and 1 thread), on a local Ray cluster with 1 worker holding all CPUs,
   1 worker of 1 CPU, and one worker per CPU:
   images/s each, Ray's overhead at 1 worker (target at most 10%), the workers' start-up (model
   loading) apart, and whether the stored rows are identical (same ids, seeds, image bytes,
   hashes; expected bitwise at the same torch thread count);
2. the driver's ingest rate: synthetic generation rows (512-d embeddings) through the same
   batched writer a scan uses, alone and arriving from Ray workers (rows/s; target 10,000, so
   that one driver feeds at least 100 GPU workers at 100 images/s each).
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS = "SELECT generation_id, seed, image_sha256, phash, dhash FROM generations ORDER BY generation_id"


def synthetic_rows(count: int, offset: int, dim: int = 512, seed: int = 0) -> list[dict]:
    """Generation rows shaped like a real scan's (Stable Diffusion sizes, a CLIP ViT-B embedding)."""
    from scanner.store import now

    rng = np.random.default_rng(seed + offset)
    rows = []
    for i in range(offset, offset + count):
        digest = f"{i:064x}"
        rows.append({"run_id": "bench", "generation_id": digest[-20:], "prompt_id": f"{i // 500:016x}", "seed": i % 500,
                     "num_inference_steps": 50, "guidance_scale": 7.5, "scheduler": "DDIMScheduler", "height": 512,
                     "width": 512, "batch_size": 64, "status": "ok", "error": None,
                     "image_path": f"images/{digest[:2]}/{digest}.png", "image_sha256": digest,
                     "thumbnail_path": f"images/{digest[2:4]}/{digest}.png", "phash": int(rng.integers(0, 2**63)),
                     "dhash": int(rng.integers(0, 2**63)), "degenerate": False,
                     "embedding": rng.standard_normal(dim).astype(np.float32), "created_at": now()})
    return rows


def synthetic_unit(template: list[dict], unit: tuple[int, int]) -> list[dict]:
    """A Ray worker's stand-in for ``sample_unit``: one unit's rows, renamed copies of a template."""
    start, count = unit
    return [dict(row, generation_id=f"{start + i:020x}") for i, row in enumerate(template[:count])]


def sample(store, job, prompts, pool) -> tuple[float, int]:
    from scanner.generate import run_generation

    began = time.perf_counter()
    stats = run_generation(store, job, prompts, pool)
    return time.perf_counter() - began, int(stats["generated"])


def main() -> None:
    import ray

    from scanner import demo as demo_world
    from scanner.config import FeatureConfig, RayConfig, SamplingConfig, ScanConfig
    from scanner.distributed import LocalPool, RayPool, connect
    from scanner.generate import Prompt, SamplingJob, record_prompts
    from scanner.models.loading import ModelSpec, WorkerModels, load_embedder, load_worker_models
    from scanner.scan import run_id_for
    from scanner.store import BatchWriter, Store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--samples-per-prompt", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rows", type=int, default=200_000, help="synthetic rows for the ingest measurement")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each sampling set-up; the fastest counts")
    args = parser.parse_args()

    cpus = os.cpu_count() or 1
    prompts = [Prompt.from_text(r["caption"]) for r in demo_world.demo_items()[: args.prompts]]
    spec = ModelSpec.of(demo_world.SD_MODEL, "cpu")
    model = spec.load()
    sampling = SamplingConfig(samples_per_prompt=args.samples_per_prompt, batch_size=args.batch_size).for_model(model)
    run_id = run_id_for(model, model.precision, prompts, ScanConfig(sampling=sampling), "bench")
    workdir = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    images = len(prompts) * sampling.samples_per_prompt
    print(f"{len(prompts)} demo prompts x {sampling.samples_per_prompt} seeds = {images} images, "
          f"{sampling.num_inference_steps} steps, batch {sampling.batch_size}, {cpus} CPUs")

    def fastest(name: str, pool) -> tuple[float, int, list]:
        """The best of ``repeats`` runs, each into a fresh store; the rows of the first."""
        runs = []
        for attempt in range(args.repeats):
            with Store(workdir / f"{name}-{attempt}.duckdb") as store:
                record_prompts(store, run_id, prompts)
                job = SamplingJob(run_id, model.model_hash, model.precision, sampling, str(store.files_dir), thumbnail_size=64)
                runs.append((*sample(store, job, prompts, pool), store.execute(ROWS)))
        return min(r[0] for r in runs), runs[0][1], runs[0][2]

    import torch

    results = {}
    local = LocalPool(WorkerModels(model, load_embedder(FeatureConfig())))
    seconds, generated, rows = fastest("single", local)
    results["one process"] = (seconds, generated, 0.0, rows)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same work on one core, leaving the others to the driver's side
    results["one process, 1 thread"] = (*fastest("single1", local)[:2], 0.0, None)
    torch.set_num_threads(threads)

    connect("local", num_cpus=cpus)
    for label, workers, per_worker in ((f"Ray, 1 worker x {cpus} CPUs", 1, cpus), ("Ray, 1 worker x 1 CPU", 1, 1),
                                       (f"Ray, {cpus} workers x 1 CPU", cpus, 1)):
        started = time.perf_counter()
        pool = RayPool(functools.partial(load_worker_models, spec, FeatureConfig()),
                       RayConfig(address="local", workers=workers, cpus_per_worker=per_worker))
        pool.worker_pids()  # waits until every worker has loaded its models
        start_up = time.perf_counter() - started
        seconds, generated, rows = fastest(f"ray{workers}x{per_worker}", pool)
        results[label] = (seconds, generated, start_up, rows)
        pool.close()

    baseline_seconds, _, _, baseline_rows = results["one process"]
    print(f"\nfastest of {args.repeats} runs each")
    print("| sampling stage | images | seconds | images/s | vs one process | worker start-up s | rows identical to one process |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, (seconds, generated, start_up, rows) in results.items():
        if rows is None:
            identical = "(not compared)"
        else:
            differing = sum(a != b for a, b in zip(rows, baseline_rows)) + abs(len(rows) - len(baseline_rows))
            identical = "yes" if not differing else f"no: {differing} of {len(rows)} differ"
        print(f"| {label} | {generated} | {seconds:.1f} | {generated / seconds:.2f} | {baseline_seconds / seconds:.2f}x "
              f"| {start_up:.1f} | {identical} |")
    one_worker = results[f"Ray, 1 worker x {cpus} CPUs"][0]
    print(f"\nRay overhead at 1 worker: {100 * (one_worker / baseline_seconds - 1):+.1f}% of the one-process time "
          "(target <= 10%)")
    narrow = results["Ray, 1 worker x 1 CPU"][0] / results["one process, 1 thread"][0] - 1
    print(f"Ray overhead at 1 worker of 1 CPU, against one process of 1 thread (a core left for the driver and "
          f"Ray's daemons): {100 * narrow:+.1f}%")

    # the driver's ingest ceiling: the batched writer alone, then fed by Ray workers
    unit_rows = 64
    units = [(start, min(unit_rows, args.rows - start)) for start in range(0, args.rows, unit_rows)]
    with Store(workdir / "ingest.duckdb") as store:
        writer = BatchWriter(store, "generations")
        writing = 0.0
        per_flush = writer.flush_rows // unit_rows
        for first in range(0, len(units), per_flush):
            # made outside the clock (workers make them), then arriving as fast as the driver takes them
            arrived = [synthetic_rows(count, start) for start, count in units[first:first + per_flush]]
            began = time.perf_counter()
            for rows in arrived:
                writer.add(rows)
            writing += time.perf_counter() - began
        began = time.perf_counter()
        writer.flush()
        alone = writer.added / (writing + time.perf_counter() - began)
    pool = RayPool(functools.partial(synthetic_rows, unit_rows, 0), RayConfig(address="local", workers=cpus))
    pool.worker_pids()
    with Store(workdir / "ingest_ray.duckdb") as store:
        writer = BatchWriter(store, "generations")
        began = time.perf_counter()
        for _, rows in pool.imap_unordered(synthetic_unit, units):
            writer.add(rows)
        writer.flush()
        fed = writer.added / (time.perf_counter() - began)
    pool.close()
    print(f"\nDriver ingest, {args.rows} synthetic rows (512-d embeddings), transactions of 4096 rows:")
    print(f"  batched writer alone:           {alone:,.0f} rows/s")
    print(f"  fed by {cpus} Ray workers (64-row units): {fed:,.0f} rows/s (the workers make the rows on the same {cpus} CPUs)")
    print(f"  one driver feeds about {alone / 100:,.0f} GPU workers at 100 images/s each (target >= 100)")
    ray.shutdown()


if __name__ == "__main__":
    main()
