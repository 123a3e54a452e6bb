"""Score a demo scan against the demo world's ground truth.

A prompt is *flagged* when it has a candidate cluster; its item is *reproduced* when a
candidate's medoid is within tiled l2 0.10 of the item's training image (checked against the
ground truth directly; whole-image l2 0.15 is too loose at 32x32, where a generation that only
gets the background right is already that close); it is *extracted*
when the matching stage judged a candidate ``extracted`` against a copy of that very item.
Reported per duplication bucket.

The memorization criterion is scored against a per-item truth (issue 3): an item is
*memorized* when at least 25% of its prompt's generations are within tiled l2 0.10 of its
training image; recall counts flagged prompts among memorized x200/x50/x10 items, false flags
among the x1 and non-member prompts whose item is not memorized.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scanner import features
from scanner.demo import BUCKETS, WORLD, bucket_of, decode_png, load_world, world_item_of
from scanner.distances import tiled_l2
from scanner.store import Store

REPRODUCED_TILED_L2 = 0.10
# an extraction verdict is wrong only when the generation is clearly not a copy of the item: further
# than this (Carlini et al.'s l2 bound for a copy); between the two it is counted as ambiguous
NOT_A_COPY_TILED_L2 = 0.15
REPRODUCED_SHARE = 0.25
DUPLICATED_BUCKETS = ("x200", "x50", "x10")


@dataclass(frozen=True)
class BucketScore:
    bucket: str
    prompts: int
    flagged: int
    reproduced: int
    extracted: int


def score_demo_run(store: Store, run_id: str, world: Path = WORLD) -> list[BucketScore]:
    truth = {r["item_id"]: r for r in load_world(["item_id", "dup_count", "image_png"], world)}
    prompts = store.query("SELECT prompt_id, source_item_id FROM prompts WHERE run_id = ?", [run_id]).to_pylist()
    medoids = store.query(
        "SELECT c.prompt_id, g.image_path FROM candidates c JOIN clusters cl USING (run_id, cluster_id) "
        "JOIN generations g ON g.run_id = cl.run_id AND g.generation_id = cl.medoid_generation_id WHERE c.run_id = ?",
        [run_id]).to_pylist()
    extracted_items = store.query(
        "SELECT c.prompt_id, m.item_id FROM candidates c JOIN matches m USING (run_id, candidate_id) "
        "WHERE c.run_id = ? AND m.verdict = 'extracted'", [run_id]).to_pylist()
    extracted_of: dict[str, set[str]] = {}
    for row in extracted_items:
        extracted_of.setdefault(row["prompt_id"], set()).add(world_item_of(row["item_id"]))
    medoids_of: dict[str, list[str]] = {}
    for row in medoids:
        medoids_of.setdefault(row["prompt_id"], []).append(row["image_path"])
    totals = {bucket: [0, 0, 0, 0] for bucket in BUCKETS}
    for prompt in prompts:
        item = truth.get(prompt["source_item_id"])
        if item is None:
            continue
        counts = totals[bucket_of(item["dup_count"])]
        counts[0] += 1
        paths = medoids_of.get(prompt["prompt_id"], [])
        counts[1] += bool(paths)
        training_image = decode_png(item["image_png"])
        counts[2] += any(float(tiled_l2(features.load_image(store.image_file(p)), training_image)) <= REPRODUCED_TILED_L2
                         for p in paths)
        counts[3] += prompt["source_item_id"] in extracted_of.get(prompt["prompt_id"], set())
    return [BucketScore(bucket, *totals[bucket]) for bucket in BUCKETS if totals[bucket][0]]


def reproduced_share(images: np.ndarray, target: np.ndarray) -> float:
    """The share of a prompt's generations within REPRODUCED_TILED_L2 of its item's training image."""
    return float(np.mean(tiled_l2(images, np.broadcast_to(target, images.shape)) <= REPRODUCED_TILED_L2))


@dataclass(frozen=True)
class CriterionScore:
    memorized: int            # memorized x200/x50/x10 items among the scanned prompts
    memorized_flagged: int
    unmemorized: int          # x1 and non-member prompts whose item is not memorized
    unmemorized_flagged: int

    @property
    def recall(self) -> float:
        return self.memorized_flagged / max(1, self.memorized)

    @property
    def false_flag_rate(self) -> float:
        return self.unmemorized_flagged / max(1, self.unmemorized)


def score_criterion(store: Store, run_id: str, world: Path = WORLD) -> CriterionScore:
    """Recall and false flags of a scan's candidates against the per-item memorization truth
    (null prompts, which have no item, are not counted here)."""
    truth = {r["item_id"]: r for r in load_world(["item_id", "dup_count", "image_png"], world)}
    rows = store.query("SELECT p.source_item_id, g.thumbnail_path, c.prompt_id IS NOT NULL AS flagged FROM generations g "
                       "JOIN prompts p USING (run_id, prompt_id) LEFT JOIN (SELECT DISTINCT run_id, prompt_id FROM candidates) c "
                       "USING (run_id, prompt_id) WHERE g.run_id = ? AND g.status = 'ok'", [run_id]).to_pylist()
    by_item: dict[str, list[dict]] = {}
    for row in rows:
        if row["source_item_id"] in truth:
            by_item.setdefault(row["source_item_id"], []).append(row)
    counts = [0, 0, 0, 0]
    for item_id, generations in by_item.items():
        item = truth[item_id]
        images = np.stack([features.load_image(store.image_file(g["thumbnail_path"])) for g in generations])
        memorized = reproduced_share(images, decode_png(item["image_png"])) >= REPRODUCED_SHARE
        flagged = generations[0]["flagged"]
        if memorized and bucket_of(item["dup_count"]) in DUPLICATED_BUCKETS:
            counts[0] += 1
            counts[1] += flagged
        elif not memorized and item["dup_count"] <= 1:
            counts[2] += 1
            counts[3] += flagged
    return CriterionScore(*counts)


@dataclass(frozen=True)
class ExtractionScore:
    judged: int        # (candidate, item) pairs the matching stage judged extracted
    correct: int       # ... whose candidate medoid reproduces that item's training image (REPRODUCED_TILED_L2)
    wrong: int         # ... whose medoid is clearly not a copy of it (NOT_A_COPY_TILED_L2); the rest are ambiguous
    reproducing: int   # candidates whose medoid reproduces a training image (its prompt's item or another)
    found: int         # ... judged extracted against an item it reproduces

    @property
    def precision(self) -> float:
        return self.correct / (self.correct + self.wrong) if self.correct + self.wrong else 1.0

    @property
    def ambiguous(self) -> int:
        return self.judged - self.correct - self.wrong

    @property
    def recall(self) -> float:
        return self.found / max(1, self.reproducing)


def score_extraction(store: Store, run_id: str, world: Path = WORLD) -> ExtractionScore:
    """Precision and recall of the ``extracted`` verdict: a verdict is right when the candidate's
    medoid is within REPRODUCED_TILED_L2 of the judged item's training image, wrong when it is
    further than NOT_A_COPY_TILED_L2, ambiguous between (counted, in neither)."""
    world_rows = load_world(["item_id", "sd_train", "image_png"], world)
    images = {r["item_id"]: decode_png(r["image_png"]) for r in world_rows}
    members = [r["item_id"] for r in world_rows if r["sd_train"]]
    member_images = np.stack([images[item] for item in members])
    medoids = store.query(
        "SELECT c.candidate_id, g.thumbnail_path FROM candidates c JOIN clusters cl USING (run_id, cluster_id) "
        "JOIN generations g ON g.run_id = cl.run_id AND g.generation_id = cl.medoid_generation_id WHERE c.run_id = ?",
        [run_id]).to_pylist()
    judged = store.query("SELECT candidate_id, item_id FROM matches WHERE run_id = ? AND verdict = 'extracted'",
                         [run_id]).to_pylist()
    medoid_of = {m["candidate_id"]: features.load_image(store.image_file(m["thumbnail_path"])) for m in medoids}

    def distance(candidate_id: str, item_id: str | None) -> float:
        return float(tiled_l2(medoid_of[candidate_id], images[item_id])) if item_id in images else float("inf")

    extracted = {(j["candidate_id"], world_item_of(j["item_id"])) for j in judged}
    reproduced = {c: {members[i] for i in np.flatnonzero(tiled_l2(medoid_of[c][None], member_images) <= REPRODUCED_TILED_L2)}
                  for c in medoid_of}
    reproducing = [c for c, items in reproduced.items() if items]
    return ExtractionScore(len(extracted), sum(distance(c, i) <= REPRODUCED_TILED_L2 for c, i in extracted),
                           sum(distance(c, i) > NOT_A_COPY_TILED_L2 for c, i in extracted), len(reproducing),
                           sum(any((c, item) in extracted for item in reproduced[c]) for c in reproducing))


@dataclass(frozen=True)
class UnconditionalScore:
    """Extraction from a model without prompts, item by item: which training images its
    generations reproduce (within REPRODUCED_TILED_L2), and which of them were found. An x1 image
    "reproduced" once is mostly chance: the demo world's images are few shapes on plain
    backgrounds, so a new composition lands that near one of a thousand single-copy members; so
    recall counts the duplicated items (x200, x50, x10), as the criterion's recall does."""

    generations: int
    reproduced: dict[str, int]   # item -> generations within REPRODUCED_TILED_L2 of its training image
    buckets: dict[str, str]      # item -> its duplication bucket
    extracted: set[str]          # items a candidate was judged ``extracted`` against

    @property
    def recall(self) -> float:
        duplicated = [item for item in self.reproduced if self.buckets[item] in DUPLICATED_BUCKETS]
        return sum(item in self.extracted for item in duplicated) / max(1, len(duplicated))

    def by_bucket(self) -> dict[str, tuple[int, int]]:
        """bucket -> (items reproduced, of them found extracted)."""
        out: dict[str, list[int]] = {}
        for item in self.reproduced:
            counts = out.setdefault(self.buckets[item], [0, 0])
            counts[0] += 1
            counts[1] += item in self.extracted
        return {bucket: (out[bucket][0], out[bucket][1]) for bucket in BUCKETS if bucket in out}


def score_unconditional(store: Store, run_id: str, world: Path = WORLD) -> UnconditionalScore:
    """Every generation of a scan of a model without prompts against every member's training
    image; the items its candidates were judged extracted against (``score_extraction`` gives
    the verdict's precision)."""
    world_rows = [r for r in load_world(["item_id", "sd_train", "dup_count", "image_png"], world) if r["sd_train"]]
    member_images = np.stack([decode_png(r["image_png"]) for r in world_rows])
    paths = [p for (p,) in store.execute("SELECT thumbnail_path FROM generations WHERE run_id = ? AND status = 'ok'", [run_id])]
    reproduced: dict[str, int] = {}
    for path in paths:
        image = features.load_image(store.image_file(path))
        for i in np.flatnonzero(tiled_l2(image[None], member_images) <= REPRODUCED_TILED_L2):
            reproduced[world_rows[i]["item_id"]] = reproduced.get(world_rows[i]["item_id"], 0) + 1
    extracted = {world_item_of(item) for (item,) in store.execute(
        "SELECT DISTINCT item_id FROM matches WHERE run_id = ? AND verdict = 'extracted'", [run_id])}
    return UnconditionalScore(len(paths), reproduced, {r["item_id"]: bucket_of(r["dup_count"]) for r in world_rows}, extracted)
