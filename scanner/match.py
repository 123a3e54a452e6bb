"""Matching candidates to training items: candidates -> matches.

For each candidate cluster, its medoid generation is looked up in a training-set index: CLIP
nearest neighbours and pHash neighbours propose items, pixel distances on thumbnails decide.
Verdicts:
- ``extracted``: a near-copy: whole-image normalized l2 <= 0.15 (Carlini et al. 2023), tiled
  l2 <= 0.10 (close in every tile, not just on average: at low resolution a matching background
  alone brings l2 under 0.15) *and* anchored l2 < 1, i.e. much closer to this item than to the
  generation's other nearest training images. The item may be another prompt's: a model that
  emits a memorized image for a neighbouring caption has reproduced that training image;
- ``similar``: normalized l2 <= 0.25, or anchored l2 < 1 alone;
- ``none``: neither.

Anchored l2 (Carlini et al., CIFAR-10) here divides by ``alpha`` times the mean l2 from the
*generation* to its ``n`` nearest *distinct* training images (duplicates collapsed by sha256,
so an image repeated 200 times in the training set does not anchor itself); neighbours are
drawn from the CLIP candidates and ranked by pixel l2. The anchor kind is stored with each match.
"""

from __future__ import annotations

import numpy as np

from scanner import distances, features
from scanner.config import MatchConfig
from scanner.index import TrainingIndex, fit
from scanner.store import Store

ANCHOR_KIND = "generation:distinct-nearest"


def verdict(l2: float, tiled: float, anchored: float, config: MatchConfig) -> str:
    if l2 <= config.extraction_l2 and tiled <= config.extraction_tiled_l2 and anchored < 1.0:
        return "extracted"
    if l2 <= config.similar_l2 or anchored < 1.0:
        return "similar"
    return "none"


def match_image(image: np.ndarray, embedding: np.ndarray, phash: int, index: TrainingIndex,
                config: MatchConfig) -> list[dict]:
    """The closest distinct training items to one generation, with every distance and a verdict."""
    copies = index.max_copies
    _, neighbours = index.search_images(embedding[None], config.k + config.anchor_n + copies)
    hash_ids, _ = index.search_hashes(phash, config.max_hamming)
    ids = np.unique(np.concatenate([neighbours[0][neighbours[0] >= 0], hash_ids]))
    # one representative per distinct image (sha256): the first item that carries it
    seen: dict[str, int] = {}
    for i in ids.tolist():
        seen.setdefault(index.sha256[i], i)
    distinct = np.array(sorted(seen.values()), dtype=np.int64)
    size = index.manifest["thumbnail_size"]
    query = fit(image, size)
    thumbnails = np.asarray(index.thumbnails[distinct])
    l2 = distances.normalized_l2(query[None], thumbnails)
    tiled = distances.tiled_l2(query[None], thumbnails, config.tiles)
    order = np.argsort(l2, kind="stable")
    anchor = float(np.mean(l2[order[:config.anchor_n]]))
    hamming = distances.hamming(phash, index.phashes[distinct])
    matches = []
    for position in order[:config.keep]:
        anchored = float(l2[position]) / (config.anchor_alpha * anchor) if anchor > 0 else 0.0
        item = int(distinct[position])
        matches.append({"item_id": index.item_ids[item], "item_caption": index.captions[item],
                        "l2": float(l2[position]), "tiled_l2": float(tiled[position]), "anchored_l2": anchored,
                        "anchor": ANCHOR_KIND, "phash_hamming": int(hamming[position]),
                        "verdict": verdict(float(l2[position]), float(tiled[position]), anchored, config)})
    return matches


def match_run(store: Store, run_id: str, index: TrainingIndex, config: MatchConfig = MatchConfig()) -> dict[str, int]:
    """Match every candidate's medoid; replaces the run's matches against this index."""
    rows = store.query(
        "SELECT c.candidate_id, g.image_path, g.embedding, g.phash FROM candidates c "
        "JOIN clusters cl USING (run_id, cluster_id) "
        "JOIN generations g ON g.run_id = cl.run_id AND g.generation_id = cl.medoid_generation_id "
        "WHERE c.run_id = ?", [run_id]).to_pylist()
    if any(r["embedding"] is None for r in rows):
        raise ValueError("matching needs CLIP embeddings of the generations; scan with embeddings on")
    matches = []
    for row in rows:
        image = features.load_image(store.image_file(row["image_path"]))
        embedding = np.asarray(row["embedding"], dtype=np.float32)
        for match in match_image(image, embedding, int(row["phash"]), index, config):
            clip_cosine = float(embedding @ index.image_embedding(match["item_id"]))
            matches.append({"run_id": run_id, "candidate_id": row["candidate_id"], "index_name": index.name,
                            "clip_cosine": clip_cosine, **match})
    with store.transaction():
        store.execute("DELETE FROM matches WHERE run_id = ? AND index_name = ?", [run_id, index.name])
        store.insert("matches", matches)
    return {"candidates": len(rows), "matches": len(matches),
            "extracted": len({m["candidate_id"] for m in matches if m["verdict"] == "extracted"})}
