"""Benchmark: near-duplicate clustering through FAISS-proposed edges vs naive all-pairs tiled l2.

    python scripts/bench_cluster.py [--n 100000] [--subsample 2000] [--demo-prompts 20]

1. Plants near-duplicate groups among N synthetic 32x32 generations (with CLIP-like embeddings
   and real pHashes), clusters them through FAISS range-search proposals, and on a subsample
   also through naive all-pairs tiled l2: the clusters must be identical there; the naive cost
   is extrapolated quadratically to N and the speed ratio printed.
2. Runs a small demo scan and prints each stage's share of its time (sampling, features,
   clustering): the filter stages should cost at most 10% of sampling.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from scanner import cluster
from scanner.config import ClusterConfig
from scanner.features import perceptual_hashes


def synthetic_generations(n: int, n_groups: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[set[int]]]:
    """Smooth random images (so pHash is meaningful), near-copies in planted groups of 5 to 30."""
    low = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.float32)
    images = np.kron(low, np.ones((1, 8, 8, 1), np.float32))
    embeddings = rng.normal(size=(n, 64)).astype(np.float32)
    groups, cursor = [], 0
    order = rng.permutation(n)
    for _ in range(n_groups):
        size = int(rng.integers(5, 31))
        members = order[cursor:cursor + size]
        cursor += size
        images[members] = images[members[0]] + rng.normal(0, 3, (size, 32, 32, 3))
        # near-duplicate images embed close together (CLIP cosine around 0.99)
        embeddings[members] = embeddings[members[0]] + rng.normal(0, 0.01, (size, 64)) * np.linalg.norm(embeddings[members[0]])
        groups.append(set(members.tolist()))
    images = np.clip(images + rng.normal(0, 2, images.shape), 0, 255).astype(np.uint8)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    phashes = np.array([perceptual_hashes(image)[0] for image in images], dtype=np.uint64)
    return images, embeddings, phashes, groups


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def bench_clustering(n: int, subsample: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    print(f"synthesizing {n:,} generations with planted groups ...", flush=True)
    images, embeddings, phashes, groups = synthetic_generations(n, n_groups=n // 100, rng=rng)
    proposed = ClusterConfig(threshold=0.08, min_clique=5, all_pairs_limit=0)
    naive = ClusterConfig(threshold=0.08, min_clique=5, all_pairs_limit=10**9)

    found, faiss_seconds = timed(cluster.find_groups, images, proposed, embeddings, phashes)
    recovered = sum(any(set(c.members) == g for c in found) for g in groups)
    print(f"FAISS-proposed edges, all {n:,}: {faiss_seconds:.1f}s, {len(found)} clusters, "
          f"{recovered}/{len(groups)} planted groups recovered exactly")

    # the subsample keeps whole planted groups (and random others), so the comparison is not vacuous
    grouped = np.array(sorted(set().union(*groups[:subsample // 40])), dtype=np.int64)
    others = np.setdiff1d(rng.choice(n, size=subsample, replace=False), np.array(sorted(set().union(*groups))))
    pick = np.sort(np.concatenate([grouped, others[: subsample - len(grouped)]]))
    sub = (images[pick], embeddings[pick], phashes[pick])
    sub_faiss, sub_faiss_seconds = timed(cluster.find_groups, sub[0], proposed, sub[1], sub[2])
    sub_naive, naive_seconds = timed(cluster.find_groups, sub[0], naive)
    same = sorted(map(sorted, (c.members for c in sub_faiss))) == sorted(map(sorted, (c.members for c in sub_naive)))
    extrapolated = naive_seconds * (n / subsample) ** 2
    print(f"subsample of {len(pick):,} ({len(grouped)} in planted groups): naive all-pairs {naive_seconds:.1f}s, FAISS {sub_faiss_seconds:.2f}s, "
          f"identical clusters: {same} ({len(sub_naive)} clusters)")
    print(f"naive all-pairs extrapolated to {n:,}: {extrapolated / 3600:.1f} h "
          f"-> FAISS-proposed is {extrapolated / faiss_seconds:,.0f}x faster")
    if not same:
        raise SystemExit("FAISS-proposed clusters differ from the exact ones")


def bench_stage_shares(n_prompts: int) -> None:
    from scanner import demo as demo_world
    from scanner.config import SamplingConfig, ScanConfig
    from scanner.generate import Prompt
    from scanner.models.registry import load_model
    from scanner.models.open_clip_model import OpenClip
    from scanner.scan import run_scan
    from scanner.store import Store

    items = demo_world.demo_items()[:: max(1, len(demo_world.demo_items()) // n_prompts)][:n_prompts]
    prompts = [Prompt.from_text(r["caption"], source="demo", source_item_id=r["item_id"]) for r in items]
    config = ScanConfig(model=str(demo_world.SD_MODEL), sampling=SamplingConfig(samples_per_prompt=16, batch_size=64))
    model = load_model(demo_world.SD_MODEL)
    embedder = OpenClip.load(demo_world.CLIP_MODEL)
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "bench.duckdb") as store:
        result = run_scan(store, model, prompts, config, show_progress=False, embedder=embedder)
    t = result.timings
    filters = t["features_s"] + t["clustering_s"]
    print(f"demo scan, {len(prompts)} prompts x 16 seeds: sampling {t['sampling_s']:.1f}s, "
          f"features {t['features_s']:.1f}s, clustering {t['clustering_s']:.1f}s")
    print(f"filter stages (features + clustering) = {100 * filters / t['sampling_s']:.1f}% of sampling time (target <= 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--subsample", type=int, default=2_000)
    parser.add_argument("--demo-prompts", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bench_clustering(args.n, args.subsample, args.seed)
    if args.demo_prompts:
        bench_stage_shares(args.demo_prompts)


if __name__ == "__main__":
    main()
