"""Matching candidates to training items: candidates -> matches.

For each candidate cluster, its medoid generation is looked up in a training-set index: CLIP
nearest neighbours, pixel neighbours (8 x 8 block means) and pHash neighbours propose distinct
training images, pixel distances on thumbnails decide.
Every distance is judged relative to the training set's own neighbourhood, never as an absolute
pixel distance, which would be a constant of one resolution and one model (docs/CALIBRATION.md):

- *item spacing*: the mean tiled l2 from the training item to its ``spacing_n`` (50) nearest
  other distinct training images (Carlini et al.'s calibration, n = 50, from the item's side; found
  among the item's ``spacing_search`` distinct CLIP neighbours and its pixel neighbours): how far apart this part of the training set
  is. The *relative distance* is the generation's tiled l2 to the item divided by it;
- *anchored l2* (Carlini et al., CIFAR-10): l2 to the item divided by ``alpha`` times the mean l2
  from the *generation* to its ``n`` nearest *distinct* training images (duplicates collapsed by
  sha256, so an image repeated 200 times does not anchor itself);
- *anchored tiled l2*: the tiled l2 to the item over the mean tiled l2 from the generation to its
  ``anchor_n`` nearest distinct training images (among those proposed): the same anchor in the verdict's
  own distance.

Verdicts:
- ``extracted``: a near-copy: relative distance <= ``extraction_ratio`` (closer to the item, in
  every tile, than the item's own neighbours in the training set are), anchored tiled l2 <=
  ``anchored_tiled_ratio`` (clearly nearer the item than the rest of the training set: an image far
  from everything is about equally far from all of it) *and* the item is the
  generation's nearest distinct training image (``nearest_margin``: a generation close to one item
  is also fairly close to that item's look-alikes, and is not a copy of each of them; twins within
  10% of the nearest were named too until session 26, and the only wrong verdicts of two models
  were such twins). The item may be another prompt's: a model that emits a memorized image for
  a neighbouring caption has reproduced that training image;
- ``similar``: relative distance <= ``similar_ratio``, or anchored l2 < 1;
- ``none``: neither. An item with no other training image to measure against is never judged extracted.

The settings are measured against a truth that does not depend on any model's fidelity (an image
reproduces an item when it is closer to it than to every one of 256 other drawings of its caption,
``scanner.demo.evaluate``) on fifteen calibration models: docs/CALIBRATION.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scanner import distances, features
from scanner.calibration import NEAREST_ITEM
from scanner.config import MatchConfig
from scanner.index import TrainingIndex
from scanner.store import Store, stable_id

ANCHOR_KIND = "generation:distinct-nearest"


def verdict(relative: float, anchored: float, anchored_tiled: float, to_nearest: float, config: MatchConfig) -> str:
    """``to_nearest``: the generation's tiled l2 to this item over its tiled l2 to its nearest distinct item."""
    if relative <= config.extraction_ratio and anchored_tiled <= config.anchored_tiled_ratio \
            and to_nearest <= config.nearest_margin:
        return "extracted"
    if relative <= config.similar_ratio or anchored < 1.0:
        return "similar"
    return "none"


def item_spacing(index: TrainingIndex, item: int, config: MatchConfig) -> float:
    """Mean tiled l2 from training item ``item`` to its ``spacing_n`` nearest other distinct training
    images (among its ``spacing_search`` distinct CLIP neighbours and its ``spacing_n`` distinct pixel
    neighbours); nan when the index holds no other image."""
    own = np.asarray(index.thumbnails[item])
    proposed = np.concatenate([index.search_distinct_images(index.image_embedding(index.item_ids[item]), config.spacing_search + 1),
                               index.search_distinct_pixels(own, config.spacing_n + 1)])
    first = index.first_row_of_each_image(proposed.tolist())
    first.pop(index.sha256[item], None)
    others = sorted(first.values())
    if not others:
        return float("nan")
    spacing = np.sort(distances.tiled_l2(own[None], np.asarray(index.thumbnails[np.array(others)]), config.tiles))
    return float(np.mean(spacing[:config.spacing_n]))


def match_image(image: np.ndarray, embedding: np.ndarray, phash: int, index: TrainingIndex,
                config: MatchConfig, spacing: dict[int, float] | None = None) -> list[dict]:
    """The closest distinct training items to one generation (by tiled l2), with every distance and a verdict."""
    query = features.resize(image, index.manifest["thumbnail_size"])
    hash_ids, _ = index.search_hashes(phash, config.max_hamming)
    ids = np.unique(np.concatenate([index.search_distinct_images(embedding, config.k + config.anchor_n),
                                    index.search_distinct_pixels(query, config.k), hash_ids]))
    # one representative per distinct image (sha256): the first item that carries it
    distinct = np.array(sorted(index.first_row_of_each_image(ids.tolist()).values()), dtype=np.int64)
    thumbnails = np.asarray(index.thumbnails[distinct])
    l2 = distances.normalized_l2(query[None], thumbnails)
    tiled = distances.tiled_l2(query[None], thumbnails, config.tiles)
    anchor = float(np.mean(np.sort(l2)[:config.anchor_n]))
    # nearest first in the verdict's own distance: on a model whose autoencoder loses texture, whole-image
    # l2 ranks the copied item below look-alikes of it (docs/CALIBRATION.md, session 15)
    order = np.argsort(tiled, kind="stable")
    hamming = distances.hamming(phash, index.phashes[distinct])
    nearest = float(tiled[order[0]])
    tiled_anchor = float(np.mean(tiled[order[:config.anchor_n]]))
    spacing = {} if spacing is None else spacing  # per item, shared by the candidates of one run
    matches = []
    for position in order[:config.keep]:
        anchored = distances.anchored(float(l2[position]), anchor, config.anchor_alpha)
        item = int(distinct[position])
        if item not in spacing:
            spacing[item] = item_spacing(index, item, config)
        relative = float(tiled[position]) / spacing[item] if spacing[item] > 0 else float("nan")
        anchored_tiled = float(tiled[position]) / tiled_anchor if tiled_anchor > 0 else float("nan")
        matches.append({"item_id": index.item_ids[item], "item_caption": index.captions[item],
                        "l2": float(l2[position]), "tiled_l2": float(tiled[position]), "anchored_l2": anchored,
                        "anchor": ANCHOR_KIND, "item_spacing": spacing[item], "relative_tiled_l2": relative,
                        "anchored_tiled_l2": anchored_tiled, "phash_hamming": int(hamming[position]),
                        "verdict": verdict(relative, anchored, anchored_tiled,
                                           float(tiled[position]) / nearest if nearest > 0 else 1.0, config)})
    return matches


def _stored_matches(run_id: str, candidate_id: str, embedding: np.ndarray, prompt: str | None, found: list[dict],
                    index: TrainingIndex) -> list[dict]:
    """``match_image``'s matches of a candidate's medoid as ``matches`` rows; ``prompt`` the caption it was
    drawn for (None for a model without text prompts: no caption to pair the image with)."""
    return [{"run_id": run_id, "candidate_id": candidate_id, "index_name": index.name,
             "clip_cosine": float(embedding @ index.image_embedding(match["item_id"])),
             "image_of_prompt": None if prompt is None else index.holds_under_caption(match["item_id"], prompt),
             **match} for match in found]


def match_run(store: Store, run_id: str, index: TrainingIndex, config: MatchConfig = MatchConfig()) -> dict[str, int]:
    """Match every candidate's medoid; replaces the run's matches against this index."""
    rows = store.query(
        "SELECT c.candidate_id, p.text, g.image_path, g.embedding, g.phash FROM candidates c "
        "JOIN clusters cl USING (run_id, cluster_id) "
        "LEFT JOIN prompts p ON p.run_id = c.run_id AND p.prompt_id = c.prompt_id "
        "JOIN generations g ON g.run_id = cl.run_id AND g.generation_id = cl.medoid_generation_id "
        "WHERE c.run_id = ?", [run_id]).to_pylist()
    if any(r["embedding"] is None for r in rows):
        raise ValueError("matching needs CLIP embeddings of the generations; scan with embeddings on")
    matches, spacing = [], {}
    for row in rows:
        image = features.load_image(store.image_file(row["image_path"]))
        embedding = np.asarray(row["embedding"], dtype=np.float32)
        matches += _stored_matches(run_id, row["candidate_id"], embedding, row["text"],
                                   match_image(image, embedding, int(row["phash"]), index, config, spacing), index)
    with store.transaction():
        store.execute("DELETE FROM matches WHERE run_id = ? AND index_name = ?", [run_id, index.name])
        store.insert("matches", matches)
    return {"candidates": len(rows), "matches": len(matches),
            "extracted": len({m["candidate_id"] for m in matches if m["verdict"] == "extracted"})}


SIMILAR_REPEATS = 2  # generations merely similar to one training item that make it a candidate of a model without prompts


class MatchedGeneration(NamedTuple):
    row: dict               # its generations row
    image: np.ndarray
    embedding: np.ndarray
    matches: list[dict]     # ``match_image``'s, nearest first


def match_every_generation(store: Store, run_id: str, index: TrainingIndex, config: MatchConfig = MatchConfig()) -> dict[str, int]:
    """Extraction from a model without prompts, as Carlini et al. extract from unconditional
    CIFAR-10 models: every generation is looked up in the index, and those whose nearest distinct
    training image is a match (``extracted`` or ``similar``, judged by ``match_image`` relative to
    the training set's own spacing: nothing is tuned on the model) are grouped by that item. One
    cluster, one candidate and the medoid's matches per training item reproduced; the medoid is
    the member nearest the item. An item only ``similar`` to one generation is not a candidate:
    in a training set of few kinds of image one in many generations lands that near some image by
    chance; ``SIMILAR_REPEATS`` generations near the same item are a pattern. Replaces the run's
    clusters, candidates and matches."""
    rows = store.query("SELECT generation_id, prompt_id, image_path, embedding, phash FROM generations "
                       "WHERE run_id = ? AND status = 'ok' AND NOT degenerate ORDER BY seed", [run_id]).to_pylist()
    if any(r["embedding"] is None for r in rows):
        raise ValueError("matching needs CLIP embeddings of the generations; scan with embeddings on")
    spacing: dict[int, float] = {}
    by_item: dict[str, list[MatchedGeneration]] = {}
    for row in rows:
        image = features.load_image(store.image_file(row["image_path"]))
        embedding = np.asarray(row["embedding"], dtype=np.float32)
        found = match_image(image, embedding, int(row["phash"]), index, config, spacing)
        if found and found[0]["verdict"] != "none":
            by_item.setdefault(found[0]["item_id"], []).append(MatchedGeneration(row, image, embedding, found))
    by_item = {item: group for item, group in by_item.items()
               if len(group) >= SIMILAR_REPEATS or any(g.matches[0]["verdict"] == "extracted" for g in group)}
    clusters, members, candidates, matches = [], [], [], []
    for item_id, group in by_item.items():
        group.sort(key=lambda g: g.matches[0]["relative_tiled_l2"])
        medoid, nearest = group[0], group[0].matches[0]
        to_medoid = distances.tiled_l2(medoid.image[None], np.stack([g.image for g in group]), config.tiles)
        others = to_medoid[1:] if len(group) > 1 else np.zeros(1)
        cluster_id = stable_id("cluster", run_id, NEAREST_ITEM, item_id)
        clusters.append({"run_id": run_id, "cluster_id": cluster_id, "scope": "prompt", "prompt_id": medoid.row["prompt_id"],
                         "size": len(group), "n_generations": len(rows), "medoid_generation_id": medoid.row["generation_id"],
                         "mean_distance": float(np.mean(others)), "max_distance": float(np.max(others)),
                         "distance": "tiled_l2", "threshold": config.similar_ratio, "criterion": NEAREST_ITEM})
        members += [{"run_id": run_id, "cluster_id": cluster_id, "generation_id": g.row["generation_id"],
                     "distance_to_medoid": float(d)} for g, d in zip(group, to_medoid)]
        candidates.append({"run_id": run_id, "candidate_id": cluster_id, "cluster_id": cluster_id,
                           "prompt_id": medoid.row["prompt_id"], "score": len(group) / len(rows),
                           "relative": nearest["relative_tiled_l2"],
                           "reason": f"{len(group)} of {len(rows)} generations nearest to training item {item_id} "
                                     f"(closest: {nearest['verdict']}, relative tiled l2 {nearest['relative_tiled_l2']:.3f})"})
        matches += _stored_matches(run_id, cluster_id, medoid.embedding, None, medoid.matches, index)
    candidates.sort(key=lambda c: (c["relative"], -c["score"]))  # the nearest copies first
    for rank, candidate in enumerate(candidates, start=1):
        candidate["rank"] = rank
        del candidate["relative"]
    with store.transaction():
        store.replace_run_rows(["matches", "candidates", "cluster_members", "clusters"], run_id)
        store.insert("clusters", clusters)
        store.insert("cluster_members", members)
        store.insert("candidates", candidates)
        store.insert("matches", matches)
    return {"generations_matched": len(rows), "clusters": len(clusters), "candidates": len(candidates),
            "matches": len(matches), "extracted": sum(group[0].matches[0]["verdict"] == "extracted" for group in by_item.values())}
