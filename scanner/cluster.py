"""Near-duplicate cliques among a prompt's generations: generations -> clusters -> candidates.

The criterion (Carlini et al. 2023): among the N generations of one prompt, an exact maximum
clique of at least k generations whose pairwise tiled l2 is at most delta. Not connected
components and not DBSCAN, which chain unrelated images through intermediate ones.
Degenerate generations (constant or black images) are excluded: they would form one giant
false cluster. After the largest clique is taken, the search repeats on what is left, so a
prompt that reproduces two training images yields two clusters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scanner import distances, features
from scanner.config import ClusterConfig
from scanner.store import Store, stable_id


@dataclass(frozen=True)
class Clique:
    members: tuple[int, ...]        # indices into the images given
    medoid: int                     # the member with the smallest mean distance to the others
    mean_distance: float            # over the clique's pairs
    max_distance: float
    distances_to_medoid: tuple[float, ...]


def all_pairs(n: int) -> np.ndarray:
    first, second = np.triu_indices(n, k=1)
    return np.stack([first, second], axis=1)


def near_duplicate_graph(images: np.ndarray, threshold: float, tiles: int,
                         pairs: np.ndarray | None = None) -> tuple[list[set[int]], dict[tuple[int, int], float]]:
    """Adjacency sets of the graph whose edges are the given pairs (all pairs by default)
    confirmed by tiled l2 <= threshold, and the confirmed edges' distances."""
    pairs = all_pairs(len(images)) if pairs is None else pairs
    adjacency: list[set[int]] = [set() for _ in range(len(images))]
    edge_distance: dict[tuple[int, int], float] = {}
    if len(pairs) == 0:
        return adjacency, edge_distance
    distance = distances.pairwise_tiled_l2(images, pairs, tiles)
    for (a, b), d in zip(pairs[distance <= threshold], distance[distance <= threshold]):
        adjacency[a].add(int(b))
        adjacency[b].add(int(a))
        edge_distance[(min(a, b), max(a, b))] = float(d)
    return adjacency, edge_distance


def maximum_clique(adjacency: Sequence[set[int]], nodes: set[int]) -> list[int]:
    """An exact maximum clique of the subgraph on ``nodes`` (Bron-Kerbosch with pivoting)."""
    best: list[int] = []

    def expand(clique: list[int], candidates: set[int], excluded: set[int]) -> None:
        nonlocal best
        if not candidates and not excluded:
            if len(clique) > len(best):
                best = list(clique)
            return
        if len(clique) + len(candidates) <= len(best):
            return  # cannot beat the best clique found so far
        pivot = max(candidates | excluded, key=lambda v: len(adjacency[v] & candidates))
        for vertex in sorted(candidates - adjacency[pivot]):
            neighbours = adjacency[vertex] & nodes
            expand(clique + [vertex], candidates & neighbours, excluded & neighbours)
            candidates = candidates - {vertex}
            excluded = excluded | {vertex}

    expand([], set(nodes), set())
    return sorted(best)


def describe_clique(members: list[int], edge_distance: dict[tuple[int, int], float]) -> Clique:
    def d(a: int, b: int) -> float:
        return 0.0 if a == b else edge_distance[(min(a, b), max(a, b))]

    mean_to_others = [np.mean([d(a, b) for b in members if b != a]) for a in members]
    medoid = members[int(np.argmin(mean_to_others))]
    pair_distances = [d(a, b) for i, a in enumerate(members) for b in members[i + 1:]]
    return Clique(tuple(members), medoid, float(np.mean(pair_distances)), float(np.max(pair_distances)),
                  tuple(d(medoid, m) for m in members))


def find_cliques(images: np.ndarray, settings: ClusterConfig) -> list[Clique]:
    """Disjoint near-duplicate cliques of size >= min_clique, largest first."""
    adjacency, edge_distance = near_duplicate_graph(images, settings.threshold, settings.tiles)
    remaining = {i for i, neighbours in enumerate(adjacency) if len(neighbours) >= settings.min_clique - 1}
    cliques = []
    while len(remaining) >= settings.min_clique:
        members = maximum_clique(adjacency, remaining)
        if len(members) < settings.min_clique:
            break
        cliques.append(describe_clique(members, edge_distance))
        remaining -= set(members)
    return cliques


def cluster_run(store: Store, run_id: str, settings: ClusterConfig) -> dict[str, int]:
    """Recompute the run's clusters and candidates from its stored generations."""
    generations = store.query(
        "SELECT generation_id, prompt_id, image_path FROM generations "
        "WHERE run_id = ? AND status = 'ok' AND NOT degenerate ORDER BY prompt_id, seed", [run_id]).to_pylist()
    by_prompt: dict[str, list[dict]] = {}
    for row in generations:
        by_prompt.setdefault(row["prompt_id"], []).append(row)

    clusters, members, candidates = [], [], []
    for prompt_id, rows in by_prompt.items():
        images = np.stack([features.load_image(store.image_file(r["image_path"])) for r in rows])
        for clique in find_cliques(images, settings):
            ids = [rows[i]["generation_id"] for i in clique.members]
            cluster_id = stable_id("cluster", run_id, *ids)
            clusters.append({
                "run_id": run_id, "cluster_id": cluster_id, "scope": "prompt", "prompt_id": prompt_id,
                "size": len(ids), "n_generations": len(rows), "medoid_generation_id": rows[clique.medoid]["generation_id"],
                "mean_distance": clique.mean_distance, "max_distance": clique.max_distance, "distance": "tiled_l2",
                "threshold": settings.threshold, "criterion": f"clique>={settings.min_clique}",
            })
            members += [{"run_id": run_id, "cluster_id": cluster_id, "generation_id": g, "distance_to_medoid": d}
                        for g, d in zip(ids, clique.distances_to_medoid)]
            candidates.append({"run_id": run_id, "candidate_id": cluster_id, "cluster_id": cluster_id,
                               "prompt_id": prompt_id, "score": len(ids) / len(rows), "mean_distance": clique.mean_distance,
                               "reason": f"{len(ids)} of {len(rows)} generations within tiled l2 {settings.threshold}"})
    # candidates are ranked by how tight their clique is (Carlini et al.), the largest share first on ties
    candidates.sort(key=lambda c: (c["mean_distance"], -c["score"]))
    for rank, candidate in enumerate(candidates, start=1):
        candidate["rank"] = rank
        del candidate["mean_distance"]
    with store.transaction():
        store.replace_run_rows(["candidates", "cluster_members", "clusters"], run_id)
        store.insert("clusters", clusters)
        store.insert("cluster_members", members)
        store.insert("candidates", candidates)
    return {"prompts": len(by_prompt), "clusters": len(clusters), "candidates": len(candidates)}
