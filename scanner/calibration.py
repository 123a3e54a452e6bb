"""The memorization criterion, calibrated on the scan itself: null prompts and anchors -> thresholds.

A fixed tiled-l2 threshold is a constant of the model it was tuned on: a memorized prompt's
generations agree within 0.006 to 0.016 on the demo model, a few times that on another, and an
ordinary prompt's are further apart on both (docs/CALIBRATION.md). So a scan also samples *null
prompts*, its own prompts' words recombined slot by slot into captions nobody wrote, with the same
seeds and settings, and measures how tightly an ordinary prompt's generations agree on *this*
model, relative to where they lie: each prompt's collapse distance (the threshold at which
``min_clique`` of its generations first form a clique) over its *anchor* (``prompt_anchors``: how
far its generations lie from other prompts'). A prompt's threshold is a fixed fraction of the
nulls' median of that ratio, times its own anchor: a ratio that carries from model to model where
an absolute distance does not, and that discounts captions every seed draws alike because they
lie near everything (dark shapes on a dark background), which an absolute threshold flagged.

Why the median: a model that memorizes leaks its memorized images to captions that share their
words, so some null prompts collapse too (a quarter of the demo model's, nearly half of the
Flux-shaped model's), and that low tail is memorization, not chance; the median holds while fewer
than half of them do. The floor (a fraction of the nulls' upper quartile of plain collapse
distances) flags what collapses tightly whatever its anchor: several audit prompts reproducing one
image are each other's nearest prompts, and when half of a prompt's nearest are such copies its
anchor shrinks to their spread. The share of nulls under their thresholds is recorded with every
scan, and said when it is high: it is itself a sign of memorization. The core: a prompt's clique
flags it only when half its planned generations also agree within a looser threshold calibrated the
same way at that clique size; a memorized image shows in most seeds, while an ordinary prompt whose
model draws its background alike has a tight clique of five and no core (docs/CALIBRATION.md, session 25).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np

from scanner.config import ClusterConfig, MatchConfig
from scanner.generate import Prompt
from scanner.store import Store

NULL_SOURCE = "memscan:null"  # prompts.source of the null prompts
# the smallest audit the criterion was measured on (tests/test_calibration_models.py: 48 prompts, 16 nulls). Null
# prompts recombined from a few prompts' words stay next to them, and on the demo model a scan of 3 captions, two of
# them memorized, drew nulls that nearly all collapsed onto the memorized images: a threshold under every one (session 13)
MEASURED_MIN_PROMPTS = 48


def null_prompts(prompts: Sequence[Prompt], count: int, seed: int = 0, donors: Sequence[str] | None = None) -> list[Prompt]:
    """``count`` prompts the model cannot have memorized, that still read like its captions: each
    word position filled from a different donor caption (word i of a null prompt of length L is word
    i * len(donor) // L of a random donor), so a template's slots keep their kind of word while the
    combination is new. The donors are the audit prompts' texts unless given (``null_donors`` adds
    training captions to a small audit's). Bags of caption words in random order were the first
    design: the T5-conditioned models answer such out-of-grammar text with one image
    (docs/CALIBRATION.md); they remain the fallback when the donors are too few to recombine (a scan
    of one prompt and no index). One that equals an audit prompt is drawn again."""
    donors = [prompt.text for prompt in prompts] if donors is None else donors
    words = [text for text in (donor.split() for donor in donors) if text]
    if count <= 0 or len({word for text in words for word in text}) < 2:
        return []
    rng = np.random.default_rng(seed)
    taken = {prompt.text for prompt in prompts}
    chosen: list[Prompt] = []
    attempts = 50 * count  # a tiny vocabulary may not have ``count`` new combinations
    for attempt in range(2 * attempts):
        if len(chosen) == count:
            break
        length = len(words[rng.integers(len(words))])
        if attempt < attempts:
            donors = (words[i] for i in rng.integers(len(words), size=length))
            text = " ".join(donor[position * len(donor) // length] for position, donor in enumerate(donors))
        else:
            pool = [word for text in words for word in text]
            text = " ".join(pool[i] for i in rng.choice(len(pool), size=min(length, len(pool)), replace=False))
        if text not in taken:
            taken.add(text)
            chosen.append(Prompt.from_text(text, source=NULL_SOURCE))
    return chosen


def null_donors(prompts: Sequence[Prompt], training_captions: Sequence[str], seed: int = 0) -> list[str]:
    """The captions null prompts are recombined from: the audit prompts, and when they are fewer
    than ``MEASURED_MIN_PROMPTS``, distinct training captions drawn at random to make up that many.
    Nulls recombined from a handful of prompts keep their memorized combinations and draw the
    memorized images (a 3-caption scan of the demo model: a wrong all-clear, docs/CALIBRATION.md);
    drawn among many captions, a null rarely keeps more than one word of any of them."""
    texts = [prompt.text for prompt in prompts]
    missing = MEASURED_MIN_PROMPTS - len(set(texts))
    if missing <= 0:
        return texts
    others = sorted({caption for caption in training_captions if caption.strip()} - set(texts))
    if not others:
        return texts
    rng = np.random.default_rng(seed)
    return texts + [others[i] for i in sorted(rng.choice(len(others), size=min(missing, len(others)), replace=False))]


def null_threshold(null_statistics: Sequence[float], factor: float, quantile: float) -> float:
    """``factor`` times the ``quantile`` of the null prompts' statistics (nan when there are none, or
    too many never collapse for it: nulls with too few usable generations count as infinitely far)."""
    values = np.asarray(null_statistics, dtype=np.float64)
    reference = float(np.quantile(values, quantile, method="inverted_cdf")) if len(values) else float("nan")
    return factor * reference if np.isfinite(reference) else float("nan")


class AnchoredThresholds(NamedTuple):
    ratio: float  # a prompt's threshold over its anchor
    floor: float  # the threshold no prompt's is under (0: none)
    thresholds: np.ndarray  # each prompt's tiled-l2 threshold
    null_ratios: np.ndarray  # the null prompts' collapse distance over anchor (inf: no anchor)


def anchored_thresholds(null_collapse: np.ndarray, null_anchors: np.ndarray, anchors: np.ndarray, factor: float,
                        quantile: float, floor_factor: float, floor_quantile: float) -> AnchoredThresholds:
    """The anchored criterion's thresholds (``cluster.calibrate``; the calibration script scores the
    same rule): ``factor`` x the ``quantile`` of the nulls' collapse distance over anchor, times each
    prompt's anchor, never under ``floor_factor`` x the ``floor_quantile`` of the nulls' collapse
    distances; a prompt without an anchor (nan) gets the floor."""
    null_collapse, null_anchors, anchors = (np.asarray(x, dtype=np.float64) for x in (null_collapse, null_anchors, anchors))
    null_ratios = np.full(len(null_collapse), np.inf)
    np.divide(null_collapse, null_anchors, out=null_ratios, where=np.isfinite(null_anchors))
    ratio = null_threshold(null_ratios, factor, quantile)
    floor = null_threshold(null_collapse, floor_factor, floor_quantile) if floor_factor else 0.0
    scaled = np.where(np.isfinite(anchors), ratio * np.nan_to_num(anchors), floor)
    return AnchoredThresholds(ratio, floor, np.maximum(scaled, floor), null_ratios)


# prompts whose generations are an anchor's reference at most: beyond, a seeded sample of them (nulls among them
# like any prompt), so that the cost stays bounded by this times the prompts' anchor images in a large audit
ANCHOR_REFERENCE_PROMPTS = 512


def prompt_anchors(images: Sequence[np.ndarray], neighbours: int, block: int = 1024) -> np.ndarray:
    """Per prompt, how far its generations lie from other prompts' (nan for a prompt with none): for
    each of its images the root-mean-square l2 to the nearest image of every other prompt, the median
    over its ``neighbours`` nearest prompts, then the median over its images.

    The anchored criterion divides a prompt's collapse distance by it, as Carlini et al. calibrate
    l2 by an image's distance to its neighbours: a caption every seed draws in low contrast (dark
    shapes on a dark background) lies near many other prompts' images, and its generations agreeing
    means less than a contrasting caption's. Why nearest
    *prompts*, not images, and their median: an audit often holds several prompts that reproduce
    the same training image (captions of one duplicated image); taken image by image their copies
    would be each other's nearest, the anchor would shrink to the copies' own spread and hide every
    one of them. A median over prompts holds while fewer than half of ``neighbours`` draw the same
    image (docs/CALIBRATION.md measures it)."""
    from scanner.distances import as_unit

    counts = np.array([len(x) for x in images])
    anchors = np.full(len(images), np.nan, np.float32)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        return anchors
    reference = present if len(present) <= ANCHOR_REFERENCE_PROMPTS else np.sort(
        np.random.default_rng(0).choice(present, size=ANCHOR_REFERENCE_PROMPTS, replace=False))
    others = as_unit(np.concatenate([images[p] for p in reference]).reshape(int(counts[reference].sum()), -1))
    others_squared = np.square(others).sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts[reference])[:-1]])
    queries = np.concatenate([images[p] for p in present])
    owner = np.repeat(present, counts[present])
    column_of = {int(p): column for column, p in enumerate(reference)}
    per_image = np.empty(len(queries), np.float32)
    for start in range(0, len(queries), block):
        chunk = as_unit(queries[start:start + block]).reshape(len(queries[start:start + block]), -1)
        squared = np.square(chunk).sum(axis=1)[:, None] + others_squared[None] - 2 * chunk @ others.T
        nearest_of_each = np.minimum.reduceat(np.sqrt(np.maximum(squared, 0) / chunk.shape[1]), starts, axis=1)
        for row, prompt in enumerate(owner[start:start + block]):
            if int(prompt) in column_of:
                nearest_of_each[row, column_of[int(prompt)]] = np.inf  # a prompt is not its own anchor
        n = min(neighbours, len(reference) - 1)
        per_image[start:start + block] = np.median(np.partition(nearest_of_each, n - 1, axis=1)[:, :n], axis=1)
    for prompt, own in zip(present, np.split(per_image, np.cumsum(counts[present])[:-1])):
        anchors[prompt] = np.median(own)
    return anchors


# Recall and false flags of the calibrated criterion: on the five calibration models trained after its clique's settings
# were chosen on the other nine, and on those nine (scripts/calibrate_criterion.py evaluate --samples 32, memscan's own
# stages; at 16 seeds, evaluate --seeds 16 on a copy of each scan holding its first 16; docs/CALIBRATION.md, session 31),
# by the generations per prompt they were measured at, and the settings they hold for: the statement says so when a scan
# uses others.
MEASURED = {
    32: ("on fifteen calibration models, each scanned on its duplicated items and 80 or 320 ordinary prompts (x1 "
         "members and non-members), memscan's own stages at these settings: on the one trained after all of them were "
         "chosen, 100% of 26 memorized duplicated items flagged and 8.8% of 320 ordinary prompts (28), over the 5% goal "
         "(8.4% without the grey view); on the five trained after the clique's "
         "settings were chosen, 100%, 100%, 96%, 100% and 93% of memorized duplicated items flagged and 4.1%, 4.1%, 4.4%, "
         "4.1% and 2.2% of 320 ordinary prompts each (the fifth at twice the demo's resolution; the core was chosen on the "
         "second and third); on the nine they were chosen on, the demo model 100% and 3.8% of 80, sd-short 5 of 5 and "
         "1.3%, sd-64 100% and 2.5%, the one trained on differently drawn images 100% and 3.8%, the SD 2-shaped "
         "v-prediction model 100% and 3.8%, the SD3-shaped flow-matching model 100% and 3.8%, the Flux-shaped model 100% "
         "and 2.5%, the PixArt-shaped model 93% and 2.5%, and the SDXL-shaped model 89% and 1.3% at its 50 steps. The grey "
         "view was chosen on the other fourteen, looking at the SDXL-shaped model's misses (82% without it). An item counts as "
         "memorized when a quarter of its generations reproduce its particular drawing; the core drops items whose "
         "generations reproduce them but vary more than the nulls agree (docs/CALIBRATION.md, sessions 20, 23 to 31)"),
    16: ("on the first 16 seeds of each of the fifteen calibration models' 32-seed scans (what a scan at 16 seeds draws), "
         "memscan's own stages at these settings: 82% to 100% of memorized duplicated items flagged (the SDXL-shaped model "
         "82%, sd-64 86%, the PixArt-shaped model 89%, the others 93% to 100%) and at most 7.8% of ordinary prompts (the "
         "model trained after all the settings were chosen 7.8%, the SD 2-shaped model 6.4%, the demo model 6.2%, two of "
         "the models trained after the clique's settings were chosen 5.6% and 5.3%, the Flux-shaped model 5.1%, the others "
         "0% to 4.1%): issue 18's goals are set at 32 seeds (docs/CALIBRATION.md, session 31)"),
}
MEASURED_SETTINGS = {"min_clique": 5, "null_factor": 0.55, "null_quantile": 0.5, "floor_factor": 0.15, "floor_quantile": 0.75,
                     "core_share": 0.5, "core_factor": 0.7, "anchor_seeds": 8, "anchor_prompts": 10, "colour_centred": True,
                     "grey_standardized": True, "grey_factor": 0.9}
CLUSTER_SETTINGS = tuple(setting.name for setting in fields(ClusterConfig))
# how the statement names the views a prompt not flagged as drawn is judged again in (scanner/cluster.py: ``views``)
VIEW_STATEMENTS = {
    "colour_centred": "each centred on its own mean colour (a memorized layout redrawn under a background colour that "
                      "changes from seed to seed)",
    "grey_standardized": "in grey, each standardized to zero mean and unit spread (the layout alone, whatever its hue "
                         "and contrast)"}


def view_words(view: str) -> str:
    """How the statement and the report name a later view (an unknown one, from a newer or crafted database, by name)."""
    return VIEW_STATEMENTS.get(view, f"in its {view} view")


MEASURED_RESOLUTIONS = (32, 64)  # the calibration models' sizes, in pixels: no evidence for other sizes


@dataclass(frozen=True)
class CriterionStatement:
    """What a scan checked, so that "no candidates" is never read as more than it is."""

    prompts: int
    generations_per_prompt: int
    threshold: float  # the fixed threshold, or the median of the audit prompts' calibrated ones
    calibrated: bool
    settings: dict  # the scan's criterion settings (ClusterConfig's fields, as stored with the run)
    nulls: int = 0
    nulls_flagged: int = 0
    ratio: float = float("nan")  # calibrated: the anchored threshold, a prompt's threshold over its anchor
    floor: float = float("nan")  # calibrated: the threshold no prompt's is under
    threshold_range: tuple[float, float] = (float("nan"), float("nan"))  # the audit prompts' thresholds, smallest and largest
    resolution: int = 0  # pixels of the generations (0: unknown)
    training_captions: int = 0  # the index's training captions the null prompts were also recombined from (null_donors)
    views: dict = field(default_factory=dict)  # calibrated: each later view's ratio, factor, floor and nulls under it, in order
    core_size: int = 0  # calibrated: the generations a flagged prompt's core holds (0: no core)
    core_ratio: float = float("nan")  # ... and its core threshold over its anchor (plain view)

    nothing_found = "No prompt collapsed onto one image: no memorization candidates."

    @property
    def min_clique(self) -> int:
        return self.settings.get("min_clique", 0)

    def measured_settings(self) -> bool:
        return (self.calibrated and self.generations_per_prompt in MEASURED
                and all(self.settings.get(key) == value for key, value in MEASURED_SETTINGS.items()))

    def lines(self, found_nothing: bool) -> list[str]:
        settings = self.settings
        if self.calibrated and not np.isfinite(self.ratio):
            how = (f"tiled l2 {self.threshold:.4f}, calibrated on this scan's {self.nulls} null prompts' plain collapse distances "
                   "by an earlier memscan; cluster the run again for the anchored criterion")
        elif self.calibrated:
            words = (f"the words of its prompts and of {self.training_captions} training captions of the index" if
                     self.training_captions else "its prompts' words")
            how = (f"each prompt's own threshold: {self.ratio:.3f} x its anchor distance (the median l2 from its generations to "
                   f"those of its {settings.get('anchor_prompts')} nearest other prompts), that is {settings.get('null_factor'):g} x "
                   f"the {quantile_name(settings.get('null_quantile', 0.5))} of collapse distance over anchor of this scan's "
                   f"{self.nulls} null prompts, {words} recombined slot by slot; never under {self.floor:.4f} "
                   f"({settings.get('floor_factor'):g} x the {quantile_name(settings.get('floor_quantile', 0.75))} of the nulls' "
                   f"collapse distances). The prompts' thresholds run from {self.threshold_range[0]:.4f} to "
                   f"{self.threshold_range[1]:.4f} (median {self.threshold:.4f})")
            if self.core_size:
                how += (f"; and flagged only when {self.core_size} of its generations ({settings.get('core_share'):.0%} of the "
                        f"plan) also agree within its core threshold, {self.core_ratio:.3f} x its anchor "
                        f"({settings.get('core_factor'):g} x the same quantile of the nulls' collapse distance at that size "
                        "over anchor), never under its threshold: a memorized image shows in most seeds")
            for order, (view, calibrated) in enumerate(self.views.items()):
                how += ("; a prompt not flagged so is judged again on its generations " if not order else "; then on them ") + (
                    f"{view_words(view)}, at {calibrated.get('ratio', float('nan')):.3f} x its "
                    f"anchor in that view ({calibrated.get('null_factor', float('nan')):g} x the nulls' reference there), never "
                    f"under {calibrated.get('floor', float('nan')):.4f}, calibrated the same way on the null prompts in that view "
                    f"({calibrated.get('nulls_flagged', 0)} of them under theirs)")
            how += f"; {self.nulls_flagged} of the null prompts fall under theirs" + (" in any view" if self.views else "")
        else:
            how = f"tiled l2 {self.threshold:.4f}, a fixed threshold given by the user, not calibrated on this model"
        defaults = ", ".join(f"{key} {str(value).lower() if isinstance(value, bool) else format(value, 'g')}"
                             for key, value in MEASURED_SETTINGS.items())
        out = [f"Criterion: at least {self.min_clique} of a prompt's generations pairwise within a tiled l2 threshold "
               f"({how}); {self.prompts} prompts, up to {self.generations_per_prompt} generations each.",
               (f"Measured at {self.generations_per_prompt} generations per prompt: "
                f"{MEASURED[self.generations_per_prompt]}." if self.measured_settings() else
                f"Measured at {' or '.join(map(str, MEASURED))} generations per prompt and "
                f"the default settings ({defaults}): {MEASURED[max(MEASURED)]}; this scan's settings were not measured.")]
        if self.calibrated and self.nulls and self.nulls_flagged > self.nulls / 2:
            out.append(f"{self.nulls_flagged} of the {self.nulls} null prompts collapse under their thresholds too: this model "
                       "draws one image for captions that merely share words with the audited ones, a sign that it leaks "
                       "memorized images to neighbouring prompts. The threshold stays meaningful while fewer than "
                       f"{settings.get('null_quantile', 0.5):.0%} of them do; look at what the null prompts drew.")
        if self.calibrated and self.prompts + self.training_captions < MEASURED_MIN_PROMPTS:
            out.append(f"The null prompts were recombined from the words of only {self.prompts + self.training_captions} "
                       f"captions (the criterion was measured with {MEASURED_MIN_PROMPTS} or more): they stay close to the "
                       "audited captions and may draw the same memorized images, which pulls the threshold under them. "
                       "Give --index (its training captions widen the null prompts' words), audit more prompts, or give "
                       "a --threshold.")
        if self.resolution and self.resolution not in MEASURED_RESOLUTIONS:
            out.append(f"This model draws {self.resolution}-pixel images; that recall was measured at "
                       f"{' and '.join(map(str, MEASURED_RESOLUTIONS))} pixels only, and is no evidence at {self.resolution}.")
        if self.calibrated and not found_nothing:
            out.append("A flagged prompt is a candidate, not a finding: a model can also draw an ordinary caption alike from "
                       "seed to seed without copying any training image, and on one calibration model such prompts agree as "
                       "tightly as its memorized items (docs/CALIBRATION.md, session 32); whether a candidate lies on a "
                       "training image is what its match verdict says.")
        if found_nothing:
            shown = (f"{self.min_clique} of {self.generations_per_prompt} generations" if not self.core_size else
                     f"{self.core_size} of {self.generations_per_prompt} generations (when its other generations are unlike it)")
            out.append("No prompt met it. That does not show that nothing is memorized: only these prompts and seeds were "
                       f"tried, and a memorized image that shows in fewer than {shown} is not flagged, nor is a memorized "
                       "composition that the model redraws a little otherwise each time, so that no clique forms "
                       "(docs/CALIBRATION.md says how often on the calibration models).")
        return out


# extraction from the demo world's unconditional model by matching every generation (scripts/measure_families.py
# --family ddpm; docs/MEASUREMENTS.md): the statement says it when a scan of a model without prompts finds nothing
MEASURED_UNCONDITIONAL = ("of the 20 duplicated training images its 256 generations reproduce, 20 judged extracted (x200 11 of 11, "
                          "x50 9 of 9), and none of 49 extracted verdicts wrong (29 the truth cannot confirm either way)")
# the same for the demo world's class-conditional DiT, its 8 classes (scripts/measure_families.py --family dit)
MEASURED_CLASS_CONDITIONAL = ("of the 17 duplicated training images its 512 generations (64 per class, guidance 4) reproduce, 17 "
                              "judged extracted (x200 14 of 14, x50 3 of 3), and none of 51 extracted verdicts wrong (33 the "
                              "truth cannot confirm either way)")
# The ``extracted`` verdict at the default match settings against the calibration worlds' truth (an image reproduces
# an item when it is nearer it than every one of 256 other drawings of the item's caption; a verdict is wrong when half
# of them are nearer): scripts/calibrate_criterion.py evaluate --samples 32, docs/CALIBRATION.md, sessions 18, 20 to 32
MEASURED_VERDICT = ("on the fifteen calibration models whose scans are stored (32- and 64-pixel models, 32 seeds per prompt, "
                    "the criterion's candidates at its defaults: sd-reseeded, -b, -c, -d, -e and -64 at 365 prompts each, "
                    "sd-short, sd-64, sd-textured, the demo model, SD 2 (v-prediction), PixArt, SD3, Flux and SDXL (at "
                    "its 50 steps) at 125), of 1,017 extracted verdicts the truth decides 447, of which 2 are wrong: a "
                    "white blob judged a copy of a yellow circle on teal (sd-short, 4 of 5 right) and a white dot of a "
                    "white star on navy (sd-64, 29 of 30), each drawing its caption's colour and place but not its object. "
                    "Before the verdict named only the generation's nearest training image (session 26), its 1,499 "
                    "verdicts on all fourteen models had 4 wrong of 447 decided: those two and two look-alikes named "
                    "beside the nearest item, which it no longer names. The others lie near their item "
                    "but the truth cannot tell whether the model drew that drawing or only its caption; it decides 402 "
                    "of the 638 verdicts naming the prompt's own training item but only 45 of the 379 naming another "
                    "prompt's, so a verdict on another caption's item is the weaker claim. The verdict "
                    "found 82% to 100% of the candidates whose image is a near-copy of a training image")
VERDICT_SETTINGS = ("k", "extraction_ratio", "anchored_tiled_ratio", "nearest_margin", "spacing_n", "spacing_search", "anchor_n", "tiles")


def stored_config(store: Store, run_id: str) -> dict:
    """The configuration a run was scanned with, as stored ({} when it is not a mapping: a database may be
    older, or crafted)."""
    stored = json.loads(store.execute("SELECT config FROM runs WHERE run_id = ?", [run_id])[0][0])
    return stored if isinstance(stored, dict) else {}


def verdict_statement(store: Store, run_id: str) -> str | None:
    """What this run's ``extracted`` verdicts have been measured to mean, or None when it matched nothing
    (a model without prompts: ``MatchingStatement`` says it)."""
    stored = stored_config(store, run_id)
    matching = stored.get("match", {})
    if stored.get("cluster", {}).get("criterion") == NEAREST_ITEM or not store.count("matches", run_id):
        return None
    defaults = MatchConfig()
    changed = [f"{key} {matching.get(key, 'not recorded')}" for key in VERDICT_SETTINGS if matching.get(key) != getattr(defaults, key)]
    here = ""
    if (counts := store.extracted_by_caption(run_id)) is not None and counts[1]:
        here = (f" Here {counts[1]} of the {sum(counts)} extracted verdicts name an image the training set holds only "
                "under other captions than the prompt (image_of_prompt false in the findings).")
    if changed:
        return (f"The extracted verdict was measured at the default match settings only, and this scan's differ "
                f"({', '.join(changed)}): at the defaults, {MEASURED_VERDICT}.{here}")
    return (f"Extracted verdicts, measured at these settings: {MEASURED_VERDICT}.{here} "
            "Compare each with its training item before relying on it.")


NEAREST_ITEM = "nearest_item"  # the stored criterion of such a scan (scanner.match.match_every_generation)


@dataclass(frozen=True)
class MatchingStatement:
    """What a scan of a model without prompts checked: every generation against the training set."""

    generations: int
    index: str
    extraction_ratio: float
    nearest_margin: float
    similar_ratio: float
    anchor_alpha: float
    anchor_n: int
    resolution: int = 0
    classes: int = 0  # the classes sampled, for a class-conditional model (0: unconditional)

    nothing_found = "No generation matched a training image: no memorization candidates."

    def lines(self, found_nothing: bool) -> list[str]:
        model = f"of this class-conditional model ({self.classes} classes)" if self.classes else "of this unconditional model"
        measured = (f"Measured on the demo world's class-conditional DiT: {MEASURED_CLASS_CONDITIONAL}." if self.classes else
                    f"Measured on the demo world's unconditional model: {MEASURED_UNCONDITIONAL}.")
        out = [f"Criterion: each of {self.generations} generations {model} matched against training index "
               f"{self.index} (after Carlini et al.'s CIFAR-10 extraction): extracted when its tiled l2 to a training image is "
               f"at most {self.extraction_ratio:g} x that image's spacing to its nearest other training images and that image is "
               f"its nearest{'' if self.nearest_margin == 1 else f' (within {self.nearest_margin:g} x)'}; similar within "
               f"{self.similar_ratio:g} x the spacing, or when "
               f"its l2 is under {self.anchor_alpha:g} x the mean to its own {self.anchor_n} nearest (anchored l2 < 1); a "
               "candidate when two generations or more are similar. Nothing in it is tuned on the model.", measured]
        if self.resolution and self.resolution not in MEASURED_RESOLUTIONS:
            out.append(f"This model draws {self.resolution}-pixel images; that was measured at 32 pixels only.")
        if found_nothing:
            seeds = f"{self.generations // self.classes} seeds of its class" if self.classes else f"{self.generations} seeds"
            out.append("No generation met it. That does not show that nothing is memorized: only these seeds were drawn, "
                       f"and an image the model draws for fewer than about 1 in {seeds} is likely missed.")
        return out


def quantile_name(quantile: float) -> str:
    return {0.5: "median", 0.75: "upper quartile"}.get(quantile, f"{quantile:g} quantile")


def calibrated_views(details: dict) -> dict:
    """The later views' calibrations a criterion record holds, in order (none from a database that holds something
    else there: an older memscan's, or a crafted one)."""
    views = details.get("views")
    return {view: calibrated for view, calibrated in views.items() if isinstance(calibrated, dict)} if isinstance(views, dict) else {}


def criterion_statement(store: Store, run_id: str) -> CriterionStatement | MatchingStatement:
    """The criterion a stored run's candidates were computed with, from its settings and calibration."""
    stored = stored_config(store, run_id)
    config = stored.get("cluster", {})
    if config.get("criterion") == NEAREST_ITEM:
        matching = stored.get("match", {})
        generations, resolution, classes = store.execute(
            "SELECT count(*), coalesce(max(greatest(g.height, g.width)), 0), count(DISTINCT nullif(p.text, '')) "
            "FROM generations g JOIN prompts p USING (run_id, prompt_id) "
            "WHERE g.run_id = ? AND g.status = 'ok' AND NOT g.degenerate", [run_id])[0]
        return MatchingStatement(generations, matching.get("index", ""), matching.get("extraction_ratio", float("nan")),
                                 matching.get("nearest_margin", float("nan")), matching.get("similar_ratio", float("nan")), matching.get("anchor_alpha", float("nan")),
                                 matching.get("anchor_n", 0), int(resolution), int(classes))
    prompts, most, resolution = store.execute(
        "SELECT count(DISTINCT g.prompt_id), coalesce(max(n), 0), coalesce(max(side), 0) FROM (SELECT prompt_id, count(*) AS n, "
        "max(greatest(height, width)) AS side FROM generations WHERE run_id = ? AND status = 'ok' GROUP BY prompt_id) g "
        "JOIN prompts p ON p.run_id = ? AND p.prompt_id = g.prompt_id WHERE p.source IS DISTINCT FROM ?",
        [run_id, run_id, NULL_SOURCE])[0]
    shared = {"prompts": prompts, "generations_per_prompt": most, "settings": config, "resolution": int(resolution),
              "training_captions": config.get("null_donors", {}).get("training_captions", 0)}
    calibrated = store.execute("SELECT value, n_positive, n_negative, details FROM metrics WHERE run_id = ? "
                               "AND metric = 'criterion_threshold'", [run_id])
    if not calibrated:
        threshold = config.get("threshold")
        return CriterionStatement(threshold=float("nan") if threshold is None else float(threshold), calibrated=False, **shared)
    value, flagged, nulls, details = calibrated[0]
    details = json.loads(details) if details else {}
    if "floor" not in details:  # stored by a memscan before the anchored criterion: a plain tiled-l2 threshold
        return CriterionStatement(threshold=float(value), calibrated=True, nulls=nulls, nulls_flagged=flagged, **shared)
    smallest, median, largest = details.get("prompt_thresholds", [float("nan")] * 3)
    # the settings the clusters were computed with, as the clustering stored them: a run clustered again
    # (``cluster.cluster_run``) keeps the configuration it was scanned with, perhaps from an older memscan
    shared["settings"] = {**config, **{key: details[key] for key in CLUSTER_SETTINGS if key in details}}
    return CriterionStatement(threshold=median, calibrated=True, nulls=nulls, nulls_flagged=flagged, ratio=float(value),
                              floor=details.get("floor", float("nan")), threshold_range=(smallest, largest),
                              views=calibrated_views(details),
                              core_size=details.get("core_size", 0), core_ratio=details.get("core_ratio", float("nan")), **shared)
