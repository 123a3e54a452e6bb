"""Score a demo scan against the demo world's ground truth.

The truth is *identification*, not an absolute pixel distance (docs/CALIBRATION.md, session 15):
an image *reproduces* a training item when it is closer (tiled l2) to the item's own image than
to every one of ``SIBLINGS`` other drawings of the item's caption, drawn by the world's own drawing
code with fresh random draws (``CaptionDrawings``). A caption alone does not fix its image (each
drawing has its own layout, sizes, angles and background), so only an image that carries this
drawing's particulars passes, at any model's fidelity; an image that merely draws the caption passes
by chance once in ``SIBLINGS + 1``, when the item was fixed before looking at the image (the
prompt's own item). An item *chosen because it is near the image* (a member the image lands near,
found by searching) passes that test far more often by chance: a generic image lies near the typical
drawing of many captions, and the member it is nearest to is one drawn typically (a fifth of the
demo's non-member generations pass against some other nearest member). Such a *selected* item must
also be at most half as far as the median other drawing (``SELECTED_MARGIN``; under 1% of
non-member generations pass). An absolute threshold (tiled l2 0.10, until session 14) was a
constant of the demo's own autoencoder: on a blurrier or differently drawn model no generation could
meet it, copies or not.

An image is a *near-copy* of an item when it reproduces it and no other training member is nearer
to it (tiled l2): the ``extracted`` verdict claims a near-copy, and its recall is counted over those
(session 18). An image that carries a drawing's layout while hundreds of other training images lie
nearer (a textured world's drawing redrawn smooth) *echoes* the item and is counted apart.

A prompt is *flagged* when it has a candidate cluster; its item is *reproduced* when a candidate's
medoid reproduces it, *extracted* when the matching stage judged a candidate ``extracted`` against
that very item. Reported per duplication bucket.

The memorization criterion is scored against a per-item truth (issue 3): an item is *memorized*
when at least 25% of its prompt's generations reproduce it; recall counts flagged prompts among
memorized x200/x50/x10 items, false flags among the x1 and non-member prompts whose item is not
memorized (a prompt that collapses onto a neighbouring caption's memorized image counts as a false
flag here, though an auditor would want it found).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from scanner import features
from scanner.demo import BUCKETS, WORLD, bucket_of, decode_png, load_world, world_item_of, world_style
from scanner.demo.drawing import draw_object_item
from scanner.distances import tile_grid, tiled_l2, tiles_l2
from scanner.store import Store

SIBLINGS = 256  # other drawings of an item's caption an image is ranked against: chance passes 1 in 257
# an ``extracted`` verdict is wrong when the image is no closer to the item than half of its caption's
# other drawings are: it draws the caption, not this drawing; between the two it is ambiguous
NOT_A_COPY_RANK = SIBLINGS // 2
SELECTED_MARGIN = 0.5  # a selected item: at most this fraction of the median distance to its caption's other drawings
DRAWING_SEED = 15  # the other drawings' random draws (the world was drawn from another seed)
NEAREST_TESTED = 5  # the members nearest to an image (tiled l2) that it is tested against
REPRODUCED_SHARE = 0.25
DUPLICATED_BUCKETS = ("x200", "x50", "x10")


class CaptionDrawings:
    """A world's object items and, drawn on first use, ``SIBLINGS`` other drawings of each item's
    caption: the reference against which an image is said to reproduce an item."""

    def __init__(self, world: Path = WORLD):
        rows = load_world(["item_id", "sd_train", "dup_count", "shape", "colour", "position", "count", "background",
                           "image_png"], world)
        self.items = {r["item_id"]: r for r in rows if r["shape"] is not None}
        self.style = world_style(world)
        self._images: dict[str, np.ndarray] = {}
        self._drawings: dict[str, np.ndarray] = {}
        self.members = [item for item, r in self.items.items() if r["sd_train"]]
        self._member_images: np.ndarray | None = None

    def image(self, item_id: str) -> np.ndarray:
        if item_id not in self._images:
            self._images[item_id] = decode_png(self.items[item_id]["image_png"])
        return self._images[item_id]

    def member_images(self) -> np.ndarray:
        if self._member_images is None:
            self._member_images = np.stack([self.image(item) for item in self.members])
        return self._member_images

    def drawings(self, item_id: str) -> np.ndarray:
        if item_id not in self._drawings:
            r = self.items[item_id]
            rng = np.random.default_rng([DRAWING_SEED, int(item_id.removeprefix("obj-"))])
            size = self.image(item_id).shape[0]
            self._drawings[item_id] = np.stack([
                np.asarray(draw_object_item(rng, r["shape"], r["colour"], r["position"], r["count"], r["background"],
                                            size, self.style)) for _ in range(SIBLINGS)])
        return self._drawings[item_id]

    def ranks(self, images: np.ndarray, item_id: str) -> np.ndarray:
        """For each image, how many other drawings of the item's caption are at least as close to it as
        the item's own image: 0 when it reproduces this drawing (``SIBLINGS`` for an item without a caption's
        drawing, such as an identity image)."""
        if item_id not in self.items:
            return np.full(len(images), SIBLINGS)
        grids = tile_grid(images)  # the images and the caption's drawings tiled once (4x faster than per image)
        own = tiles_l2(grids, tile_grid(self.image(item_id)))
        others = tile_grid(self.drawings(item_id))
        return np.array([int((tiles_l2(grid, others) <= distance).sum()) for grid, distance in zip(grids, own)])

    def reproduces_selected(self, image: np.ndarray, item_id: str) -> bool:
        """The test for an item chosen because it is near the image: closer than every other drawing of
        its caption, and at most SELECTED_MARGIN of the median one's distance."""
        if item_id not in self.items:
            return False
        own = float(tiled_l2(image[None], self.image(item_id)[None])[0])
        others = tiled_l2(image[None], self.drawings(item_id))
        return bool(own < others.min() and own <= SELECTED_MARGIN * float(np.median(others)))

    def nearest_members(self, image: np.ndarray) -> list[str]:
        """The ``NEAREST_TESTED`` training members nearest to the image (tiled l2), nearest first."""
        nearest = np.argsort(tiled_l2(image[None], self.member_images()), kind="stable")[:NEAREST_TESTED]
        return [self.members[i] for i in nearest]

    def reproduced_members(self, image: np.ndarray) -> set[str]:
        """The members an image reproduces among the ``NEAREST_TESTED`` nearest to it (selected items)."""
        return {item for item in self.nearest_members(image) if self.reproduces_selected(image, item)}


@lru_cache(maxsize=1)
def caption_drawings(world: Path = WORLD) -> CaptionDrawings:
    """The last world's drawings, kept: scoring one scan several ways (criterion, extraction, another
    threshold) draws each caption's siblings once."""
    return CaptionDrawings(world)


@dataclass(frozen=True)
class BucketScore:
    bucket: str
    prompts: int
    flagged: int
    reproduced: int
    extracted: int


def score_demo_run(store: Store, run_id: str, world: Path = WORLD) -> list[BucketScore]:
    drawings = caption_drawings(world)
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
        item_id = prompt["source_item_id"]
        if item_id not in drawings.items:
            continue
        counts = totals[bucket_of(drawings.items[item_id]["dup_count"])]
        counts[0] += 1
        paths = medoids_of.get(prompt["prompt_id"], [])
        counts[1] += bool(paths)
        if paths:
            images = np.stack([features.load_image(store.image_file(p)) for p in paths])
            counts[2] += bool((drawings.ranks(images, item_id) == 0).any())
        counts[3] += item_id in extracted_of.get(prompt["prompt_id"], set())
    return [BucketScore(bucket, *totals[bucket]) for bucket in BUCKETS if totals[bucket][0]]


def reproduced_share(drawings: CaptionDrawings, images: np.ndarray, item_id: str) -> float:
    """The share of a prompt's generations that reproduce its item."""
    return float(np.mean(drawings.ranks(images, item_id) == 0))


@dataclass(frozen=True)
class CriterionScore:
    memorized: int            # memorized x200/x50/x10 items among the scanned prompts
    memorized_flagged: int
    unmemorized: int          # x1 and non-member prompts whose item is not memorized
    unmemorized_flagged: int
    # ... flagged because they make the model emit another member's image: a candidate's medoid reproduces a
    # member near it (the selected test). Leakage an auditor wants found, not a false flag
    unmemorized_leaking: int = 0

    @property
    def recall(self) -> float:
        return self.memorized_flagged / max(1, self.memorized)

    @property
    def false_flag_rate(self) -> float:
        """Flagged unmemorized prompts that emit no member's image, over all unmemorized prompts."""
        return (self.unmemorized_flagged - self.unmemorized_leaking) / max(1, self.unmemorized)


def score_criterion(store: Store, run_id: str, world: Path = WORLD) -> CriterionScore:
    """Recall and false flags of a scan's candidates against the per-item memorization truth
    (null prompts, which have no item, are not counted here)."""
    drawings = caption_drawings(world)
    rows = store.query("SELECT p.source_item_id, g.thumbnail_path, c.medoids FROM generations g "
                       "JOIN prompts p USING (run_id, prompt_id) LEFT JOIN (SELECT c.run_id, c.prompt_id, "
                       "list(m.thumbnail_path) AS medoids FROM candidates c JOIN clusters cl USING (run_id, cluster_id) "
                       "JOIN generations m ON m.run_id = cl.run_id AND m.generation_id = cl.medoid_generation_id "
                       "GROUP BY c.run_id, c.prompt_id) c USING (run_id, prompt_id) WHERE g.run_id = ? AND g.status = 'ok'",
                       [run_id]).to_pylist()
    by_item: dict[str, list[dict]] = {}
    for row in rows:
        if row["source_item_id"] in drawings.items:
            by_item.setdefault(row["source_item_id"], []).append(row)
    counts = dict.fromkeys(("memorized", "memorized_flagged", "unmemorized", "unmemorized_flagged", "unmemorized_leaking"), 0)
    for item_id, generations in by_item.items():
        dup_count = drawings.items[item_id]["dup_count"]
        images = np.stack([features.load_image(store.image_file(g["thumbnail_path"])) for g in generations])
        memorized = reproduced_share(drawings, images, item_id) >= REPRODUCED_SHARE
        medoids = generations[0]["medoids"] or []
        if memorized and bucket_of(dup_count) in DUPLICATED_BUCKETS:
            counts["memorized"] += 1
            counts["memorized_flagged"] += bool(medoids)
        elif not memorized and dup_count <= 1:
            counts["unmemorized"] += 1
            counts["unmemorized_flagged"] += bool(medoids)
            counts["unmemorized_leaking"] += any(drawings.reproduced_members(features.load_image(store.image_file(m)))
                                                 for m in medoids)
    return CriterionScore(**counts)


@dataclass(frozen=True)
class ExtractionScore:
    judged: int        # (candidate, item) pairs the matching stage judged extracted
    correct: int       # ... whose candidate medoid reproduces that item
    wrong: int         # ... whose medoid is no closer to it than half its caption's other drawings; the rest are ambiguous
    reproducing: int   # candidates whose medoid is a near-copy of a member (its prompt's item or another)
    found: int         # ... judged extracted against that member
    echoing: int       # candidates whose medoid reproduces a member with another member nearer: outside recall
    own_judged: int    # judged pairs naming the prompt's own item (the findings' image_of_prompt true)
    own_decided: int   # ... right or wrong by the truth, not ambiguous
    other_decided: int  # pairs naming another caption's item right or wrong by the truth

    @property
    def precision(self) -> float:
        return self.correct / (self.correct + self.wrong) if self.correct + self.wrong else 1.0

    @property
    def other_judged(self) -> int:
        """Judged pairs naming another caption's item (the findings' image_of_prompt false)."""
        return self.judged - self.own_judged

    @property
    def ambiguous(self) -> int:
        return self.judged - self.correct - self.wrong

    @property
    def recall(self) -> float:
        return self.found / max(1, self.reproducing)


def score_extraction(store: Store, run_id: str, world: Path = WORLD) -> ExtractionScore:
    """Precision and recall of the ``extracted`` verdict. A verdict is right when the candidate's medoid
    reproduces the judged item (its prompt's own item by the plain test, another by the selected one),
    wrong when at least NOT_A_COPY_RANK of the item's caption's other drawings are as close to it,
    ambiguous otherwise (counted, in neither). Recall counts the candidates whose medoid is a near-copy:
    it reproduces its prompt's item or, by the selected test, a member near it, and that member is the
    training member nearest to it."""
    drawings = caption_drawings(world)
    medoids = store.query(
        "SELECT c.candidate_id, p.source_item_id, g.thumbnail_path FROM candidates c "
        "JOIN clusters cl USING (run_id, cluster_id) JOIN prompts p ON p.run_id = c.run_id AND p.prompt_id = c.prompt_id "
        "JOIN generations g ON g.run_id = cl.run_id AND g.generation_id = cl.medoid_generation_id WHERE c.run_id = ?",
        [run_id]).to_pylist()
    judged = store.query("SELECT candidate_id, item_id FROM matches WHERE run_id = ? AND verdict = 'extracted'",
                         [run_id]).to_pylist()
    medoid_of = {m["candidate_id"]: features.load_image(store.image_file(m["thumbnail_path"])) for m in medoids}
    own_item = {m["candidate_id"]: m["source_item_id"] for m in medoids}

    def reproduces(candidate_id: str, item_id: str) -> bool:
        image = medoid_of[candidate_id]
        if item_id == own_item[candidate_id]:
            return bool(drawings.ranks(image[None], item_id)[0] == 0)
        return drawings.reproduces_selected(image, item_id)

    extracted = {(j["candidate_id"], world_item_of(j["item_id"])) for j in judged}
    right = {pair for pair in extracted if reproduces(*pair)}
    wrong = {(c, item) for c, item in extracted if int(drawings.ranks(medoid_of[c][None], item)[0]) >= NOT_A_COPY_RANK}
    own = {(c, item) for c, item in extracted if item == own_item[c]}
    near_copies, echoing = [], 0  # (candidate, the member it copies); candidates that echo one
    for c, image in medoid_of.items():
        nearest = drawings.nearest_members(image)
        if reproduces(c, nearest[0]):  # tested first: the others' drawings are only needed to tell an echo
            near_copies.append((c, nearest[0]))
        else:
            echoing += any(reproduces(c, item) for item in {*nearest[1:], own_item[c]})
    decided = right | wrong
    return ExtractionScore(len(extracted), len(right), len(wrong), len(near_copies),
                           sum(pair in extracted for pair in near_copies), echoing,
                           len(own), len(own & decided), len(decided - own))


@dataclass(frozen=True)
class UnconditionalScore:
    """Extraction from a model without prompts, item by item: which training images its
    generations reproduce (by the selected test: without prompts every item is found by searching),
    and which of them were found. Recall counts the duplicated items (x200, x50, x10), as the
    criterion's recall does: an x1 image reproduced once or twice among hundreds of generations may
    be the chance the test allows."""

    generations: int
    reproduced: dict[str, int]   # item -> generations that reproduce it
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
    """Every generation of a scan of a model without prompts against the members nearest to it;
    the items its candidates were judged extracted against (``score_extraction`` gives the
    verdict's precision)."""
    drawings = caption_drawings(world)
    paths = [p for (p,) in store.execute("SELECT thumbnail_path FROM generations WHERE run_id = ? AND status = 'ok'", [run_id])]
    reproduced: dict[str, int] = {}
    for path in paths:
        for item in drawings.reproduced_members(features.load_image(store.image_file(path))):
            reproduced[item] = reproduced.get(item, 0) + 1
    extracted = {world_item_of(item) for (item,) in store.execute(
        "SELECT DISTINCT item_id FROM matches WHERE run_id = ? AND verdict = 'extracted'", [run_id])}
    return UnconditionalScore(len(paths), reproduced,
                              {item: bucket_of(drawings.items[item]["dup_count"]) for item in drawings.members}, extracted)
