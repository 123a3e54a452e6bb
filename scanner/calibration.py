"""The memorization criterion, calibrated on the scan itself: null prompts -> threshold.

A fixed tiled-l2 threshold is a constant of the model it was tuned on: a memorized prompt's
generations agree within 0.006 to 0.016 on the demo model, a few times that on another, and an
ordinary prompt's are further apart on both (docs/CALIBRATION.md). So a scan also samples *null
prompts*, its own prompts' words recombined slot by slot into captions nobody wrote, with the same
seeds and settings, and measures how tightly an ordinary prompt's generations agree on *this*
model: the upper quartile of the nulls' collapse distances (the threshold at which ``min_clique``
of a prompt's generations first form a clique). The threshold is a fixed fraction of it, a ratio
that carries from model to model where an absolute distance does not.

Why the upper quartile and not a low quantile (at most alpha of the nulls flagged), nor the
median: a model that memorizes leaks its memorized images to captions that share their words, so
some null prompts collapse too (a quarter of the demo model's, nearly half of the Flux-shaped
model's), and that low tail is memorization, not chance. A quantile there misses half the
memorized prompts; the median fell with the leak on the T5-conditioned models. The upper quartile
holds while fewer than three quarters of the nulls collapse. The share of nulls under the
threshold is recorded with every scan, and said when it is high: it is itself a sign of memorization.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
    """``factor`` times the ``quantile`` of the null prompts' collapse distances (nan when there are
    none, or too many never collapse for it: nulls with too few usable generations count as infinitely far)."""
    values = np.asarray(null_statistics, dtype=np.float64)
    reference = float(np.quantile(values, quantile, method="inverted_cdf")) if len(values) else float("nan")
    return factor * reference if np.isfinite(reference) else float("nan")


# Recall and false flags of the calibrated criterion on the calibration models it was not tuned on
# (scripts/calibrate_criterion.py evaluate; the tables in docs/CALIBRATION.md), by the generations per
# prompt they were measured at, and the settings they hold for: the statement says so when a scan uses others.
MEASURED = {
    32: ("64% to 100% of memorized duplicated items flagged, at most 6.2% of ordinary prompts, on eight calibration models, "
         "an item counted memorized when a quarter of its generations reproduce its particular drawing (sd-64 67%, "
         "sd-short 4 of 5, one trained on differently drawn images 100%, the SD 2-shaped v-prediction model 97%, the "
         "SDXL-shaped model 64% at its 50 steps, the SD3-shaped flow-matching model 100%, the Flux-shaped model 100%, "
         "the PixArt-shaped model 86%; docs/CALIBRATION.md, session 15)"),
    16: ("79% to 100% of memorized duplicated items flagged, at most 2.6% of ordinary prompts, on seven calibration models "
         "(sd-64 87%, sd-short 6 of 7, the SD 2-shaped v-prediction model 100%, the SDXL-shaped model 79% at 20 steps, "
         "the SD3-shaped flow-matching model 93%, the Flux-shaped model 100%, the PixArt-shaped model 93%), by a truth "
         "that session 15 replaced as too lenient (by the new one, sd-64 59%; docs/CALIBRATION.md)"),
}
MEASURED_SETTINGS = {"min_clique": 5, "null_factor": 0.25, "null_quantile": 0.75}
MEASURED_RESOLUTIONS = (32, 64)  # the calibration models' sizes, in pixels: no evidence for other sizes


@dataclass(frozen=True)
class CriterionStatement:
    """What a scan checked, so that "no candidates" is never read as more than it is."""

    prompts: int
    generations_per_prompt: int
    min_clique: int
    threshold: float
    calibrated: bool
    null_factor: float
    null_quantile: float
    nulls: int
    nulls_flagged: int
    resolution: int = 0  # pixels of the generations (0: unknown)
    training_captions: int = 0  # the index's training captions the null prompts were also recombined from (null_donors)

    nothing_found = "No prompt collapsed onto one image: no memorization candidates."

    def measured_settings(self) -> bool:
        return (self.calibrated and self.generations_per_prompt in MEASURED and {
            "min_clique": self.min_clique, "null_factor": self.null_factor, "null_quantile": self.null_quantile} == MEASURED_SETTINGS)

    def lines(self, found_nothing: bool) -> list[str]:
        if self.calibrated:
            words = (f"the words of its prompts and of {self.training_captions} training captions of the index" if
                     self.training_captions else "its prompts' words")
            how = (f"{self.null_factor:g} x the {quantile_name(self.null_quantile)} of the collapse distances of this scan's "
                   f"{self.nulls} null prompts, {words} recombined slot by slot; {self.nulls_flagged} of them fall under it")
        else:
            how = "a fixed threshold given by the user, not calibrated on this model"
        out = [f"Criterion: at least {self.min_clique} of a prompt's generations pairwise within tiled l2 "
               f"{self.threshold:.4f} ({how}); {self.prompts} prompts, up to {self.generations_per_prompt} generations each.",
               (f"Measured on models it was not tuned on, at {self.generations_per_prompt} generations per prompt: "
                f"{MEASURED[self.generations_per_prompt]}." if self.measured_settings() else
                f"Measured on models it was not tuned on, at {MEASURED_SETTINGS['min_clique']} of "
                f"{' or '.join(map(str, MEASURED))} generations and {MEASURED_SETTINGS['null_factor']} x the nulls' "
                f"{quantile_name(MEASURED_SETTINGS['null_quantile'])}: {MEASURED[max(MEASURED)]}; this scan's settings "
                "were not measured.")]
        if self.calibrated and self.nulls and self.nulls_flagged > self.nulls / 2:
            out.append(f"{self.nulls_flagged} of the {self.nulls} null prompts collapse under the threshold too: this model draws "
                       "one image for captions that merely share words with the audited ones, a sign that it leaks memorized "
                       "images to neighbouring prompts. The threshold stays meaningful while fewer than "
                       f"{self.null_quantile:.0%} of them do; look at what the null prompts drew.")
        if self.calibrated and self.prompts + self.training_captions < MEASURED_MIN_PROMPTS:
            out.append(f"The null prompts were recombined from the words of only {self.prompts + self.training_captions} "
                       f"captions (the criterion was measured with {MEASURED_MIN_PROMPTS} or more): they stay close to the "
                       "audited captions and may draw the same memorized images, which pulls the threshold under them. "
                       "Give --index (its training captions widen the null prompts' words), audit more prompts, or give "
                       "a --threshold.")
        if self.resolution and self.resolution not in MEASURED_RESOLUTIONS:
            out.append(f"This model draws {self.resolution}-pixel images; that recall was measured at "
                       f"{' and '.join(map(str, MEASURED_RESOLUTIONS))} pixels only, and is no evidence at {self.resolution}.")
        if found_nothing:
            out.append("No prompt met it. That does not show that nothing is memorized: only these prompts and seeds were "
                       "tried, and a memorized image that shows in fewer than "
                       f"{self.min_clique} of {self.generations_per_prompt} generations is not flagged, nor is a memorized "
                       "composition that the model redraws a little otherwise each time, so that no clique forms (on the "
                       "calibration models, up to a third of the memorized items: docs/CALIBRATION.md).")
        return out


# extraction from the demo world's unconditional model by matching every generation (scripts/measure_families.py
# --family ddpm; docs/MEASUREMENTS.md): the statement says it when a scan of a model without prompts finds nothing
MEASURED_UNCONDITIONAL = ("of the 20 duplicated training images its 256 generations reproduce, 20 judged extracted (x200 11 of 11, "
                          "x50 9 of 9), and none of 94 extracted verdicts wrong (74 the truth cannot confirm either way)")
# the same for the demo world's class-conditional DiT, its 8 classes (scripts/measure_families.py --family dit)
MEASURED_CLASS_CONDITIONAL = ("of the 17 duplicated training images its 512 generations (64 per class, guidance 4) reproduce, 17 "
                              "judged extracted (x200 14 of 14, x50 3 of 3), and none of 74 extracted verdicts wrong (58 the "
                              "truth cannot confirm either way)")
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
               f"its nearest (within {self.nearest_margin:g} x); similar within {self.similar_ratio:g} x the spacing, or when "
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


def criterion_statement(store: Store, run_id: str) -> CriterionStatement | MatchingStatement:
    """The criterion a stored run's candidates were computed with, from its settings and calibration."""
    stored = json.loads(store.execute("SELECT config FROM runs WHERE run_id = ?", [run_id])[0][0])
    config = stored.get("cluster", {}) if isinstance(stored, dict) else {}  # a database may be older, or crafted
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
    calibrated = store.execute("SELECT value, n_positive, n_negative FROM metrics WHERE run_id = ? "
                               "AND metric = 'criterion_threshold'", [run_id])
    threshold, flagged, nulls = calibrated[0] if calibrated else (config.get("threshold"), 0, 0)
    return CriterionStatement(prompts, most, config.get("min_clique", 0), float("nan") if threshold is None else float(threshold),
                              bool(calibrated), config.get("null_factor", 0.0),
                              config.get("null_quantile", 0.5),  # a scan stored before the quantile was a setting used the median
                              nulls, flagged, int(resolution), config.get("null_donors", {}).get("training_captions", 0))
