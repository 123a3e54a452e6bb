"""Benchmark: exact vs IVF-PQ training-set index on synthetic CLIP-like vectors, side by side.

    python scripts/bench_index.py [--n 1000000] [--dim 512] [--queries 1000]

Builds both indexes with memscan's own builder (``scanner.index.build_vector_index``) on N
normalized vectors near a 64-d subspace (real embeddings have a low intrinsic dimension), and prints build
throughput (items/s), query throughput (queries/s, k=10) and IVF-PQ's recall@10 against exact
search, from one run; and the lookup matching needs: a query that is a near-duplicate of one
stored item (its vector moved to cosine 0.95, as a generation that reproduces a training image
sits close to it in CLIP space), and how often each index returns that item first.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from scanner.index import IndexConfig, build_vector_index, search_reranked


def synthetic_embeddings(n: int, dim: int, rng: np.random.Generator, chunk: int = 100_000,
                         intrinsic: int = 64) -> np.ndarray:
    """Like CLIP embeddings, the vectors live near a low-dimensional subspace (a random linear
    map of a 64-d Gaussian, plus a little noise), normalized to the unit sphere."""
    projection = rng.normal(size=(intrinsic, dim)).astype(np.float32) / np.sqrt(intrinsic)
    vectors = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        block = rng.normal(size=(size, intrinsic)).astype(np.float32) @ projection
        block += 0.05 * rng.normal(size=(size, dim)).astype(np.float32)
        vectors[start:start + size] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{args.n:,} vectors of dimension {args.dim} ...", flush=True)
    vectors = synthetic_embeddings(args.n, args.dim, rng)
    queries = vectors[rng.choice(args.n, size=args.queries, replace=False)] + 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    targets = rng.choice(args.n, size=args.queries, replace=False)
    near = vectors[targets] + (0.33 / np.sqrt(args.dim)) * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)  # cosine to its item about 1 / sqrt(1 + 0.33^2) = 0.95

    results = {}
    for label, config in (("exact (Flat)", IndexConfig(exact_below=args.n + 1)), ("IVF-PQ", IndexConfig(exact_below=0))):
        start = time.perf_counter()
        index, info = build_vector_index(vectors, config)
        build_seconds = time.perf_counter() - start
        start = time.perf_counter()
        _, found = search_reranked(index, vectors, queries, 10)
        query_seconds = time.perf_counter() - start
        results[label] = found
        _, first = search_reranked(index, vectors, near, 1)
        print(f"{label:13} {info['kind']:>18}: build {args.n / build_seconds:12,.0f} items/s ({build_seconds:.1f}s), "
              f"query {args.queries / query_seconds:10,.1f} queries/s; near-duplicate found first "
              f"{np.mean(first[:, 0] == targets):.3f}", flush=True)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(results["exact (Flat)"], results["IVF-PQ"])])
    print(f"IVF-PQ (re-ranked from the stored vectors) recall@10 against exact search on {args.queries} queries: {recall:.3f}")


if __name__ == "__main__":
    main()
