"""Near-duplicate groups among generations: generations -> clusters -> candidates.

The criterion (Carlini et al. 2023): among the N generations of one prompt, an exact maximum
clique of at least k generations whose pairwise tiled l2 is at most delta. Not plain connected
components and not DBSCAN, which chain unrelated images through intermediate ones (a
``component`` criterion exists, but only with a minimum edge density). After the largest
clique is taken the search repeats on what is left, so a prompt that reproduces two training
images yields two clusters.

Candidate edges are proposed cheaply and confirmed with tiled l2, so the quadratic pixel
comparison is never run on all pairs of a large set: FAISS range search on CLIP embeddings
(cosine) and a FAISS binary range search on pHashes (Hamming) propose, tiled l2 disposes.
Degenerate generations (constant or black images) are excluded: they would form one giant
false cluster. Medoids of clusters from different prompts that are near-duplicates of each
other form cross-prompt clusters (one memorized image reached from several prompts).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from scanner import calibration, distances, features
from scanner.config import ClusterConfig
from scanner.errors import MemscanError
from scanner.store import Store, stable_id


@dataclass(frozen=True)
class Clique:
    members: tuple[int, ...]        # indices into the images given
    medoid: int                     # the member with the smallest mean distance to the others
    mean_distance: float            # over the group's confirmed edges
    max_distance: float
    distances_to_medoid: tuple[float, ...]


def all_pairs(n: int) -> np.ndarray:
    first, second = np.triu_indices(n, k=1)
    return np.stack([first, second], axis=1).astype(np.int64)


def _range_pairs(lims: np.ndarray, ids: np.ndarray) -> np.ndarray:
    queries = np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
    pairs = np.stack([queries, ids], axis=1).astype(np.int64)
    return pairs[pairs[:, 0] < pairs[:, 1]]


def propose_pairs(n: int, settings: ClusterConfig, embeddings: np.ndarray | None = None,
                  phashes: np.ndarray | None = None) -> np.ndarray:
    """Index pairs [P, 2] (i < j) worth confirming: all pairs for small sets, else the union of
    FAISS range-search neighbours by embedding cosine and by pHash Hamming distance."""
    if n <= settings.all_pairs_limit or (embeddings is None and phashes is None):
        return all_pairs(n)
    import faiss

    found = []
    if embeddings is not None:
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        lims, _, ids = index.range_search(vectors, settings.min_cosine)
        found.append(_range_pairs(lims, ids))
    if phashes is not None:
        codes = np.asarray(phashes, dtype=np.uint64).astype(">u8").view(np.uint8).reshape(-1, 8)
        index = faiss.IndexBinaryFlat(64)
        index.add(codes)
        lims, _, ids = index.range_search(codes, settings.max_hamming + 1)  # strict: distance < radius
        found.append(_range_pairs(lims, ids))
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def adjacency_within(count: int, pairs: np.ndarray, distance: np.ndarray, level: float) -> list[set[int]]:
    """Adjacency sets of ``count`` images joined by the ``pairs`` whose ``distance`` is at most ``level``."""
    adjacency: list[set[int]] = [set() for _ in range(count)]
    for a, b in pairs[distance <= level]:
        adjacency[a].add(int(b))
        adjacency[b].add(int(a))
    return adjacency


def near_duplicate_graph(images: np.ndarray, pairs: np.ndarray, threshold: float, tiles: int,
                         distance: np.ndarray | None = None) -> tuple[list[set[int]], dict[tuple[int, int], float]]:
    """Adjacency sets of the proposed pairs confirmed by tiled l2 <= threshold, and their distances
    (``distance``, the pairs' tiled l2, computed when not given)."""
    distance = distances.pairwise_tiled_l2(images, pairs, tiles) if distance is None else distance
    keep = distance <= threshold
    edge_distance = {(int(min(a, b)), int(max(a, b))): float(d) for (a, b), d in zip(pairs[keep], distance[keep])}
    return adjacency_within(len(images), pairs, distance, threshold), edge_distance


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


# The images a prompt's clique is sought among, in order: as generated; then each centred on its own mean colour
# (per channel); then in grey, each standardized to zero mean and unit spread. A model that redraws a memorized
# layout under a background colour that changes from seed to seed (the SDXL-shaped calibration model's misses,
# docs/CALIBRATION.md sessions 19, 20 and 30) collapses in the later views and not the first; each view is
# calibrated on the null prompts in that view.
PLAIN, COLOUR_CENTRED, GREY_STANDARDIZED = "plain", "colour_centred", "grey_standardized"
VIEW_WORDS = {COLOUR_CENTRED: "colour-centred images", GREY_STANDARDIZED: "grey images, each standardized"}
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
GREY_SPREAD = 0.15  # a standardized grey image's spread on [0, 1] pixels, about a natural image's: tiled l2 stays comparable


def views(settings: ClusterConfig) -> tuple[str, ...]:
    """The views a calibrated criterion seeks cliques in (a fixed threshold is a plain tiled l2: one view)."""
    if settings.threshold is not None:
        return (PLAIN,)
    return (PLAIN, *((COLOUR_CENTRED,) if settings.colour_centred else ()),
            *((GREY_STANDARDIZED,) if settings.grey_standardized else ()))


def in_view(images: np.ndarray, view: str) -> np.ndarray:
    """The images as the criterion compares them in ``view``."""
    if view == PLAIN:
        return images
    unit = distances.as_unit(images)
    if view == COLOUR_CENTRED:
        return unit - unit.mean(axis=(-3, -2), keepdims=True) + 0.5
    grey = unit @ np.array(LUMA, dtype=unit.dtype)
    grey = (grey - grey.mean(axis=(-2, -1), keepdims=True)) / (grey.std(axis=(-2, -1), keepdims=True) + 1e-3)
    return np.repeat((0.5 + GREY_SPREAD * grey)[..., None], 3, axis=-1).astype(unit.dtype)


def view_null_factor(view: str, settings: ClusterConfig) -> float:
    """A view's threshold over anchor as a share of its nulls' reference: the grey view's is ``grey_factor`` x the
    others' (it discards hue and contrast, so ordinary prompts' generations come nearer there)."""
    return settings.null_factor * (settings.grey_factor if view == GREY_STANDARDIZED else 1.0)


def largest_clique(images: np.ndarray, settings: ClusterConfig, threshold: float | None = None,
                   pairs: np.ndarray | None = None, distance: np.ndarray | None = None) -> int:
    """Size of the largest clique of near-duplicates among one prompt's images within ``threshold``
    (the settings' by default), over ``pairs`` (all by default) whose tiled l2 is ``distance`` (computed
    when not given: a caller judging one set of images at several thresholds computes it once)."""
    pairs = all_pairs(len(images)) if pairs is None else pairs
    distance = distances.pairwise_tiled_l2(images, pairs, settings.tiles) if distance is None else distance
    adjacency = adjacency_within(len(images), pairs, distance, settings.threshold if threshold is None else threshold)
    return len(maximum_clique(adjacency, set(range(len(images)))))


def collapse_distance(images: np.ndarray, min_clique: int, tiles: int, pairs: np.ndarray | None = None,
                      distance: np.ndarray | None = None) -> float:
    """The smallest tiled-l2 threshold at which ``min_clique`` of one prompt's images form a
    clique (inf when they never do): how tightly the prompt's generations collapse, the
    statistic the calibrated criterion compares with the null prompts'. Only ``pairs`` (all by
    default) can be edges, at their tiled l2 ``distance`` (computed when not given); a clique only
    grows as the threshold does, so a binary search over the pair distances finds it."""
    pairs = all_pairs(len(images)) if pairs is None else pairs
    if len(images) < min_clique or len(pairs) == 0:
        return float("inf")
    distance = distances.pairwise_tiled_l2(images, pairs, tiles) if distance is None else distance
    levels = np.unique(distance)
    nodes = set(range(len(images)))

    def reaches(level: float) -> bool:
        return len(maximum_clique(adjacency_within(len(images), pairs, distance, level), nodes)) >= min_clique

    if not reaches(levels[-1]):
        return float("inf")
    low, high = 0, len(levels) - 1  # levels[high] always reaches
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if reaches(levels[middle]) else (middle + 1, high)
    return float(levels[high])


def view_verdict(largest: int, core: int, remaining: int, min_clique: int, core_size: int = 0) -> bool | None:
    """A prompt's verdict in one view, from its largest clique within its threshold and its largest
    within its core threshold so far: True once both reach their sizes (samples only add to a clique),
    False once either cannot even if every one of the ``remaining`` planned samples joined it, None while open."""
    if largest >= min_clique and core >= core_size:
        return True
    if largest + remaining < min_clique or core + remaining < core_size:
        return False
    return None


def verdict_settled(verdicts: Sequence[bool | None]) -> bool:
    """Whether a prompt's remaining planned samples can still change its verdict (``view_verdict`` in
    each view): not once one view flags it, nor once none can. A scan that stops there flags exactly
    the prompts the full plan would."""
    return any(v is True for v in verdicts) or all(v is False for v in verdicts)


def verdict_checkpoints(planned: int, min_clique: int, first: int = 0) -> list[int]:
    """Sample counts after which a scan that stops early looks at each open prompt: first where a
    verdict can first be settled (not before ``first`` seeds: the anchored criterion's anchor
    seeds), then after every seed up to 16, then in steps of an eighth of what is drawn (a long
    plan, Carlini's 500 seeds, takes about 40 looks, not 500)."""
    checkpoints = [max(1, min(min_clique, planned - min_clique + 1), min(first, planned))]
    while checkpoints[-1] < planned:
        checkpoints.append(min(planned, checkpoints[-1] + max(1, checkpoints[-1] // 8)))
    return checkpoints


def open_prompts(store: Store, run_id: str, prompt_ids: Sequence[str], first_seed: int, sampled: int, planned: int,
                 settings: ClusterConfig, criterion: Criterion) -> set[str]:
    """The prompts among ``prompt_ids`` whose verdict is still open after their seeds
    ``first_seed .. first_seed + sampled - 1``: only the stored rows of those seeds are read."""
    rows = store.query("SELECT prompt_id, thumbnail_path FROM generations WHERE run_id = ? AND status = 'ok' "
                       "AND NOT degenerate AND seed >= ? AND seed < ? ORDER BY prompt_id, seed",
                       [run_id, first_seed, first_seed + sampled]).to_pylist()
    wanted, images = set(prompt_ids), {}
    for row in rows:
        if row["prompt_id"] in wanted:
            images.setdefault(row["prompt_id"], []).append(features.load_image(store.image_file(row["thumbnail_path"])))
    def verdicts(prompt_id: str) -> list[bool | None]:  # one per view: a clique and its core in any flags the prompt
        if prompt_id not in images:
            return [view_verdict(0, 0, planned - sampled, settings.min_clique, criterion.core_size)]
        stacked = np.stack(images[prompt_id])
        out = []
        for view, prompt_settings in criterion.settings_by_view(prompt_id, settings):
            seen = in_view(stacked, view)
            pairs = all_pairs(len(seen))
            distance = distances.pairwise_tiled_l2(seen, pairs, settings.tiles)  # once, for the clique and its core
            core = largest_clique(seen, prompt_settings, criterion.core_threshold(prompt_id, view), pairs, distance) \
                if criterion.core_size else 0
            out.append(view_verdict(largest_clique(seen, prompt_settings, pairs=pairs, distance=distance), core,
                                    planned - sampled, settings.min_clique, criterion.core_size))
        return out

    return {prompt_id for prompt_id in prompt_ids if not verdict_settled(verdicts(prompt_id))}


def dense_components(adjacency: Sequence[set[int]], nodes: set[int], min_size: int, min_density: float) -> list[list[int]]:
    """Connected components of at least ``min_size`` nodes with edge density >= ``min_density``."""
    seen: set[int] = set()
    groups = []
    for start in sorted(nodes):
        if start in seen:
            continue
        component, frontier = {start}, [start]
        while frontier:
            for neighbour in adjacency[frontier.pop()] & nodes:
                if neighbour not in component:
                    component.add(neighbour)
                    frontier.append(neighbour)
        seen |= component
        edges = sum(len(adjacency[v] & component) for v in component) / 2
        size = len(component)
        if size >= min_size and edges / (size * (size - 1) / 2) >= min_density:
            groups.append(sorted(component))
    return groups


def describe_group(members: list[int], edge_distance: dict[tuple[int, int], float]) -> Clique:
    """Medoid and distances of a group; pairs without a confirmed edge (components only) are skipped."""
    def d(a: int, b: int) -> float | None:
        return 0.0 if a == b else edge_distance.get((min(a, b), max(a, b)))

    def mean_to_others(a: int) -> float:
        known = [d(a, b) for b in members if b != a and d(a, b) is not None]
        return float(np.mean(known)) if known else float("inf")

    medoid = min(members, key=mean_to_others)
    pair_distances = [x for i, a in enumerate(members) for b in members[i + 1:] if (x := d(a, b)) is not None]
    return Clique(tuple(members), medoid, float(np.mean(pair_distances)), float(np.max(pair_distances)),
                  tuple(d(medoid, m) if d(medoid, m) is not None else float("nan") for m in members))


def find_groups(images: np.ndarray, settings: ClusterConfig, embeddings: np.ndarray | None = None,
                phashes: np.ndarray | None = None, pairs: np.ndarray | None = None,
                distance: np.ndarray | None = None) -> list[Clique]:
    """Disjoint near-duplicate groups of at least ``min_clique`` images, largest first, over ``pairs``
    (``propose_pairs`` from the embeddings and hashes by default) at their tiled l2 ``distance``."""
    pairs = propose_pairs(len(images), settings, embeddings, phashes) if pairs is None else pairs
    adjacency, edge_distance = near_duplicate_graph(images, pairs, settings.threshold, settings.tiles, distance)
    remaining = {i for i, neighbours in enumerate(adjacency) if len(neighbours) >= settings.min_clique - 1}
    if settings.criterion == "component":
        groups = dense_components(adjacency, remaining, settings.min_clique, settings.min_density)
    else:
        groups = []
        # cliques never span components: search each component on its own
        for component in dense_components(adjacency, remaining, settings.min_clique, min_density=0.0):
            left = set(component)
            while len(left) >= settings.min_clique:
                members = maximum_clique(adjacency, left)
                if len(members) < settings.min_clique:
                    break
                groups.append(members)
                left -= set(members)
    groups.sort(key=lambda g: (-len(g), g[0]))
    return [describe_group(g, edge_distance) for g in groups]


def _load_prompt_generations(store: Store, run_id: str) -> dict[str, list[dict]]:
    """Each prompt's usable generations in seed order, with ``seed_rank`` (1 for its first seed,
    counted over all its stored rows, so that a degenerate image does not shift the ranks after it)."""
    rows = store.query(
        "SELECT generation_id, prompt_id, thumbnail_path, phash, embedding, seed_rank FROM (SELECT *, row_number() "
        "OVER (PARTITION BY prompt_id ORDER BY seed) AS seed_rank FROM generations WHERE run_id = ?) "
        "WHERE status = 'ok' AND NOT degenerate ORDER BY prompt_id, seed", [run_id]).to_pylist()
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    return by_prompt


def _features_of(store: Store, rows: list[dict]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    images = np.stack([features.load_image(store.image_file(r["thumbnail_path"])) for r in rows])
    has_embeddings = all(r["embedding"] is not None for r in rows)
    embeddings = np.array([r["embedding"] for r in rows], dtype=np.float32) if has_embeddings else None
    return images, embeddings, np.array([r["phash"] for r in rows], dtype=np.uint64)


def _cluster_rows(run_id: str, scope: str, prompt_id: str | None, group: Clique, rows: list[dict],
                  n_generations: int, settings: ClusterConfig, view: str = PLAIN) -> tuple[dict, list[dict]]:
    ids = [rows[i]["generation_id"] for i in group.members]
    cluster_id = stable_id("cluster", run_id, scope, *ids)
    cluster = {
        "run_id": run_id, "cluster_id": cluster_id, "scope": scope, "prompt_id": prompt_id, "size": len(ids),
        "n_generations": n_generations, "medoid_generation_id": rows[group.medoid]["generation_id"],
        "mean_distance": group.mean_distance, "max_distance": group.max_distance,
        "distance": "tiled_l2" if view == PLAIN else f"tiled_l2:{view}",
        "threshold": settings.threshold,
        "criterion": f"{settings.criterion}>={settings.min_clique}" if scope == "prompt" else "clique>=2",
    }
    members = [{"run_id": run_id, "cluster_id": cluster_id, "generation_id": g, "distance_to_medoid": d}
               for g, d in zip(ids, group.distances_to_medoid)]
    return cluster, members


@dataclass(frozen=True)
class Criterion:
    """The tiled-l2 threshold each prompt's generations are judged at in each view: one per prompt
    when the criterion is calibrated (the anchored threshold, never under the floor), else the fixed one."""

    thresholds: dict[str, dict[str, float]]  # view -> prompt -> threshold
    defaults: dict[str, float]  # view -> the fixed threshold, or the floor (a prompt without usable anchor generations)
    cores: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # view -> prompt -> core threshold
    core_size: int = 0  # generations the core must hold (0: no core)

    def threshold(self, prompt_id: str, view: str = PLAIN) -> float:
        return self.thresholds.get(view, {}).get(prompt_id, self.defaults[view])

    def core_threshold(self, prompt_id: str, view: str = PLAIN) -> float:
        return self.cores.get(view, {}).get(prompt_id, self.threshold(prompt_id, view))

    def has_core(self, prompt_id: str, view: str, images: np.ndarray, settings: ClusterConfig, pairs: np.ndarray,
                 distance: np.ndarray | None = None) -> bool:
        """Whether ``core_size`` of the prompt's images (in ``view``) agree within its core threshold."""
        return not self.core_size or largest_clique(images, settings, self.core_threshold(prompt_id, view), pairs,
                                                    distance) >= self.core_size

    def settings_by_view(self, prompt_id: str, settings: ClusterConfig) -> list[tuple[str, ClusterConfig]]:
        """Each view with the settings a prompt is judged at in it, in the order the views are tried."""
        return [(view, dataclasses.replace(settings, threshold=self.threshold(prompt_id, view))) for view in self.defaults]


def anchor_images(store: Store, rows: list[dict], seeds: int, view: str = PLAIN) -> np.ndarray:
    """The thumbnails of a prompt's usable generations among its first ``seeds`` seeds, in ``view``."""
    chosen = [features.load_image(store.image_file(r["thumbnail_path"])) for r in rows if r["seed_rank"] <= seeds]
    return in_view(np.stack(chosen), view) if chosen else np.zeros((0, 1, 1, 3), np.uint8)


def core_size(planned: int, settings: ClusterConfig) -> int:
    """Generations a flagged prompt's core must hold: ``core_share`` of its planned samples, at least its
    clique (0: no core, also for a fixed threshold, which has no nulls to calibrate a core on)."""
    if not settings.core_share or settings.threshold is not None:
        return 0
    return max(settings.min_clique, int(np.ceil(settings.core_share * planned)))


class ViewCalibration(NamedTuple):
    clique: calibration.AnchoredThresholds
    core: calibration.AnchoredThresholds | None  # the core's thresholds (None: no core)
    anchors: dict[str, float]
    collapse: list[float]  # the nulls' collapse distances at the clique's size


def calibrate_view(store: Store, view: str, every: dict[str, list[dict]], null_ids: Sequence[str],
                   settings: ClusterConfig, core: int = 0) -> ViewCalibration:
    """One view's anchored thresholds (``calibrate``): with each prompt's anchor and the nulls' collapse distances;
    with a ``core`` size, also the core's: ``core_factor`` x the nulls' quantile of their collapse distance at that
    size over anchor, x each prompt's anchor, never under its clique threshold."""
    ids = list(every)
    anchors = dict(zip(ids, calibration.prompt_anchors([anchor_images(store, every[p], settings.anchor_seeds, view) for p in ids],
                                                       settings.anchor_prompts).tolist()))
    collapse, core_collapse = [], []
    for prompt_id in null_ids:
        images, embeddings, phashes = _features_of(store, every[prompt_id])
        seen, pairs = in_view(images, view), propose_pairs(len(images), settings, embeddings, phashes)
        distance = distances.pairwise_tiled_l2(seen, pairs, settings.tiles)  # once, for the clique's size and the core's
        collapse.append(collapse_distance(seen, settings.min_clique, settings.tiles, pairs, distance))
        if core:
            core_collapse.append(collapse_distance(seen, core, settings.tiles, pairs, distance))
    null_anchors, prompt_anchors = [anchors[p] for p in null_ids], [anchors[p] for p in ids]
    clique = calibration.anchored_thresholds(collapse, null_anchors, prompt_anchors, view_null_factor(view, settings),
                                             settings.null_quantile, settings.floor_factor, settings.floor_quantile)
    cores = None
    if core:
        cores = calibration.anchored_thresholds(core_collapse, null_anchors, prompt_anchors, settings.core_factor,
                                                settings.null_quantile, 0.0, settings.floor_quantile)
        cores = cores._replace(thresholds=np.maximum(cores.thresholds, clique.thresholds))
    return ViewCalibration(clique, cores, anchors, collapse)


def calibrate(store: Store, run_id: str, by_prompt: dict[str, list[dict]],
              settings: ClusterConfig) -> tuple[Criterion, list[dict]]:
    """The criterion this run is judged by: with no fixed ``threshold``, the one its null prompts
    calibrate (scanner/calibration.py), and the ``metrics`` rows that record it (what it was
    calibrated to, and each prompt's anchor and threshold). The null prompts' generations are
    taken out of ``by_prompt``: they are never candidates.

    A prompt's threshold is ``null_factor`` x the ``null_quantile`` of the nulls' anchored collapse
    distances (collapse distance over anchor) x its own anchor, or the floor if that is larger:
    ``floor_factor`` x the ``floor_quantile`` of the nulls' plain collapse distances. Its core
    threshold is the same rule at the core's size (``core_size``) and ``core_factor``, without a floor
    and never under its threshold."""
    null_ids = {row[0] for row in store.execute("SELECT prompt_id FROM prompts WHERE run_id = ? AND source = ?",
                                                [run_id, calibration.NULL_SOURCE])}
    null_rows = {prompt_id: by_prompt.pop(prompt_id) for prompt_id in sorted(null_ids & set(by_prompt))}
    if settings.threshold is not None:
        return Criterion({}, {PLAIN: settings.threshold}), []
    every = {**by_prompt, **null_rows}
    # the nulls are sampled in full before any prompt is judged: their seeds are the plan's
    core = core_size(max((row["seed_rank"] for rows in null_rows.values() for row in rows), default=0), settings)
    thresholds, defaults, cores, anchors, calibrated, nulls_flagged = {}, {}, {}, {}, {}, set()
    for view in views(settings):
        (ratio, floor, values, anchored), core_thresholds, anchors[view], collapse = calibrate_view(
            store, view, every, list(null_rows), settings, core)
        if not (np.isfinite(ratio) and np.isfinite(floor)) or (core_thresholds is not None and not np.isfinite(core_thresholds.ratio)):
            quantile = max(settings.null_quantile, settings.floor_quantile)
            raise MemscanError(f"run {run_id}: the criterion cannot be calibrated: of {len(null_rows)} null prompts, fewer than "
                               f"{quantile:.0%} have {max(settings.min_clique, core)} usable generations; sample more or give "
                               "a fixed --threshold")
        # tiled l2 is computed in float32: thresholds are compared like with like
        thresholds[view] = {p: float(np.float32(value)) for p, value in zip(every, values)}
        defaults[view] = float(np.float32(floor))
        if core_thresholds is not None:
            cores[view] = {p: float(np.float32(value)) for p, value in zip(every, core_thresholds.thresholds)}
        flagged = {p for p, value in zip(null_rows, collapse) if value <= thresholds[view][p]}
        nulls_flagged |= flagged
        factor = view_null_factor(view, settings)
        calibrated[view] = {
            "null_factor": factor, "null_quantile": settings.null_quantile, "ratio": ratio, "null_reference": ratio / factor,
            "floor": defaults[view], "nulls_flagged": len(flagged),
            "prompt_thresholds": [float(x) for x in np.quantile([thresholds[view][p] for p in by_prompt] or [floor], [0, 0.5, 1])],
            "null_statistics": [float(v) if np.isfinite(v) else None for v in sorted(anchored)],
            **({"core_ratio": core_thresholds.ratio} if core_thresholds is not None else {})}
    plain = calibrated.pop(PLAIN)
    # one record: the plain view's calibration, the other views' beside it; its nulls flagged in any view
    record = {"run_id": run_id, "metric": "criterion_threshold", "subject": "null_prompts", "value": plain.pop("ratio"),
              "n_positive": len(nulls_flagged), "n_negative": len(null_rows), "details": json.dumps({
                  **plain, "floor_factor": settings.floor_factor, "floor_quantile": settings.floor_quantile,
                  "anchor_seeds": settings.anchor_seeds, "anchor_prompts": settings.anchor_prompts,
                  "min_clique": settings.min_clique, "core_size": core, "core_share": settings.core_share,
                  "core_factor": settings.core_factor, "colour_centred": settings.colour_centred,
                  "grey_standardized": settings.grey_standardized, "grey_factor": settings.grey_factor, "views": calibrated,
                  "statistic": "collapse tiled l2 / anchor l2"})}
    per_prompt = [{"run_id": run_id, "metric": "prompt_threshold", "subject": p, "value": thresholds[PLAIN][p], "n_positive": None,
                   "n_negative": None, "details": json.dumps({
                       "anchor": finite_or_none(anchors[PLAIN][p]), "null_prompt": p in null_rows,
                       **({"core_threshold": cores[PLAIN][p]} if PLAIN in cores else {}),
                       **{view: {"threshold": thresholds[view][p], "anchor": finite_or_none(anchors[view][p]),
                                 **({"core_threshold": cores[view][p]} if view in cores else {})} for view in calibrated}})}
                  for p in every]
    return Criterion({view: {p: thresholds[view][p] for p in by_prompt} for view in thresholds}, defaults,
                     {view: {p: cores[view][p] for p in by_prompt} for view in cores}, core), [record, *per_prompt]


def finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


def run_criterion(store: Store, run_id: str, settings: ClusterConfig) -> Criterion:
    """The criterion this run's stored generations calibrate (or its fixed threshold)."""
    return calibrate(store, run_id, _load_prompt_generations(store, run_id), settings)[0]


def cluster_run(store: Store, run_id: str, settings: ClusterConfig) -> dict[str, int]:
    """Recompute the run's clusters and candidates from its stored generations, in one transaction."""
    clusters, members, candidates, medoids = [], [], [], []
    by_prompt = _load_prompt_generations(store, run_id)
    criterion, calibration_rows = calibrate(store, run_id, by_prompt, settings)
    flagged_thresholds = []
    for prompt_id, rows in by_prompt.items():
        images, embeddings, phashes = _features_of(store, rows)
        pairs = propose_pairs(len(images), settings, embeddings, phashes)  # the same in every view and at every threshold
        for view, prompt_settings in criterion.settings_by_view(prompt_id, settings):
            seen = in_view(images, view)
            distance = distances.pairwise_tiled_l2(seen, pairs, settings.tiles)  # for the clique and its core
            groups = find_groups(seen, prompt_settings, pairs=pairs, distance=distance)
            if groups and not criterion.has_core(prompt_id, view, seen, prompt_settings, pairs, distance):
                groups = []
            if groups:  # the first view with a clique and its core flags the prompt
                break
        if groups:
            flagged_thresholds.append(criterion.threshold(prompt_id))
        where = f" on {VIEW_WORDS[view]}" if view in VIEW_WORDS else ""
        for group in groups:
            cluster, cluster_members = _cluster_rows(run_id, "prompt", prompt_id, group, rows, len(rows), prompt_settings, view)
            clusters.append(cluster)
            members += cluster_members
            medoids.append(rows[group.medoid])
            candidates.append({"run_id": run_id, "candidate_id": cluster["cluster_id"], "cluster_id": cluster["cluster_id"],
                               "prompt_id": prompt_id, "score": len(group.members) / len(rows),
                               "mean_distance": group.mean_distance,
                               "reason": f"{len(group.members)} of {len(rows)} generations within tiled l2 "
                                         f"{prompt_settings.threshold:.4f}{where}"})
    if settings.cross_prompt and len(medoids) >= 2:
        # one memorized image reached from several prompts: near-duplicate medoids of different prompts, within
        # the median of the flagged prompts' thresholds
        images, embeddings, phashes = _features_of(store, medoids)
        cross_settings = dataclasses.replace(settings, min_clique=2, criterion="clique",
                                             threshold=float(np.median(flagged_thresholds)))
        for group in find_groups(images, cross_settings, embeddings, phashes):
            cluster, cluster_members = _cluster_rows(run_id, "cross_prompt", None, group, medoids,
                                                     sum(len(r) for r in by_prompt.values()), cross_settings)
            clusters.append(cluster)
            members += cluster_members
    # candidates are ranked by how tight their clique is (Carlini et al.), the largest share first on ties
    candidates.sort(key=lambda c: (c["mean_distance"], -c["score"]))
    for rank, candidate in enumerate(candidates, start=1):
        candidate["rank"] = rank
        del candidate["mean_distance"]
    with store.transaction():
        store.replace_run_rows(["candidates", "cluster_members", "clusters"], run_id)
        store.execute("DELETE FROM metrics WHERE run_id = ? AND metric IN ('criterion_threshold', 'prompt_threshold')", [run_id])
        store.insert("metrics", calibration_rows)
        store.insert("clusters", clusters)
        store.insert("cluster_members", members)
        store.insert("candidates", candidates)
    return {"prompts": len(by_prompt), "clusters": len(clusters), "candidates": len(candidates),
            "cross_prompt_clusters": sum(c["scope"] == "cross_prompt" for c in clusters)}
