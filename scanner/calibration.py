"""The memorization criterion, calibrated on the scan itself: null prompts -> threshold.

A fixed tiled-l2 threshold is a constant of the model it was tuned on: a memorized prompt's
generations agree within 0.006 to 0.016 on the demo model, a few times that on another, and an
ordinary prompt's are further apart on both (docs/CALIBRATION.md). So a scan also samples *null
prompts*, random combinations of its own prompts' words, with the same seeds and settings, and
measures how tightly an ordinary prompt's generations agree on *this* model: the median of the
nulls' collapse distances (the threshold at which ``min_clique`` of a prompt's generations first
form a clique). The threshold is a fixed fraction of it, a ratio that carries from model to
model where an absolute distance does not.

Why the median and not a low quantile of the nulls (at most alpha of them flagged): a model that
memorizes heavily also collapses on some null prompts (random caption words still name a
memorized image's position and background: a quarter of the demo model's nulls), so the nulls'
low tail is memorization, not chance, and a quantile there misses half the memorized prompts.
The median holds while fewer than half the nulls collapse. The share of nulls under the
threshold is recorded with every scan: a high share is itself a sign of memorization.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scanner.generate import Prompt
from scanner.store import Store

NULL_SOURCE = "memscan:null"  # prompts.source of the null prompts


def null_prompts(prompts: Sequence[Prompt], count: int, seed: int = 0) -> list[Prompt]:
    """``count`` prompts the model cannot have memorized: random combinations of the audit
    prompts' words, as long as the audit's prompts. Words are drawn from all prompts together,
    so a null prompt almost never carries the words that identify one caption; one that equals
    an audit prompt is drawn again."""
    words = [prompt.text.split() for prompt in prompts]
    pool = [word for text in words for word in text]
    if count <= 0 or len(set(pool)) < 2:
        return []
    rng = np.random.default_rng(seed)
    taken = {prompt.text for prompt in prompts}
    chosen: list[Prompt] = []
    for _ in range(100 * count):  # a tiny vocabulary may not have ``count`` new combinations
        if len(chosen) == count:
            break
        length = len(words[rng.integers(len(words))])
        text = " ".join(pool[i] for i in rng.choice(len(pool), size=min(length, len(pool)), replace=False))
        if text not in taken:
            taken.add(text)
            chosen.append(Prompt.from_text(text, source=NULL_SOURCE))
    return chosen


def null_threshold(null_statistics: Sequence[float], factor: float) -> float:
    """``factor`` times the median of the null prompts' collapse distances (nan when there are
    none, or most never collapse: nulls with too few usable generations count as infinitely far)."""
    values = np.asarray(null_statistics, dtype=np.float64)
    median = float(np.median(values)) if len(values) else float("nan")
    return factor * median if np.isfinite(median) else float("nan")


# Recall and false flags of the calibrated criterion at its defaults on the calibration models it
# was not tuned on (scripts/calibrate_criterion.py evaluate; the table in docs/CALIBRATION.md), and
# the settings they hold for: the statement says so when a scan uses others.
MEASURED = ("55% to 97% of memorized duplicated items flagged, at most 1.3% of ordinary prompts, on seven calibration models "
            "(sd-64 83%, sd-short 86%, the SD 2-shaped v-prediction model 97%, the SDXL-shaped model 79%, the SD3-shaped "
            "flow-matching model 87% with 1 of 77 ordinary prompts flagged; the two T5-conditioned ones, whose null prompts "
            "collapse too, least: the Flux-shaped model 72%, the PixArt-shaped model 55%; docs/CALIBRATION.md)")
MEASURED_SETTINGS = {"min_clique": 5, "generations_per_prompt": 16, "null_factor": 0.3}
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
    nulls: int
    nulls_flagged: int
    resolution: int = 0  # pixels of the generations (0: unknown)

    nothing_found = "No prompt collapsed onto one image: no memorization candidates."

    def measured_settings(self) -> bool:
        return self.calibrated and {"min_clique": self.min_clique, "generations_per_prompt": self.generations_per_prompt,
                                    "null_factor": self.null_factor} == MEASURED_SETTINGS

    def lines(self, found_nothing: bool) -> list[str]:
        if self.calibrated:
            how = (f"{self.null_factor:g} x the median collapse distance of this scan's {self.nulls} null prompts, random "
                   f"combinations of its prompts' words; {self.nulls_flagged} of them fall under it")
        else:
            how = "a fixed threshold given by the user, not calibrated on this model"
        out = [f"Criterion: at least {self.min_clique} of a prompt's generations pairwise within tiled l2 "
               f"{self.threshold:.4f} ({how}); {self.prompts} prompts, up to {self.generations_per_prompt} generations each.",
               f"Measured on models it was not tuned on: {MEASURED}"
               + ("." if self.measured_settings() else
                  f", at {MEASURED_SETTINGS['min_clique']} of {MEASURED_SETTINGS['generations_per_prompt']} generations and "
                  f"factor {MEASURED_SETTINGS['null_factor']}: this scan's settings were not measured.")]
        if self.resolution and self.resolution not in MEASURED_RESOLUTIONS:
            out.append(f"This model draws {self.resolution}-pixel images; that recall was measured at "
                       f"{' and '.join(map(str, MEASURED_RESOLUTIONS))} pixels only, and is no evidence at {self.resolution}.")
        if found_nothing:
            out.append("No prompt met it. That does not show that nothing is memorized: only these prompts and seeds were "
                       "tried, and a memorized image that shows in fewer than "
                       f"{self.min_clique} of {self.generations_per_prompt} generations is not flagged.")
        return out


# extraction from the demo world's unconditional model by matching every generation (scripts/measure_families.py
# --family ddpm; docs/MEASUREMENTS.md): the statement says it when a scan of a model without prompts finds nothing
MEASURED_UNCONDITIONAL = ("of the 18 duplicated training images its 256 generations reproduce, 17 judged extracted (x200 9 of 9, "
                          "x50 8 of 9), and none of 21 extracted verdicts wrong (2 ambiguous)")
NEAREST_ITEM = "nearest_item"  # the stored criterion of such a scan (scanner.match.match_every_generation)


@dataclass(frozen=True)
class MatchingStatement:
    """What a scan of a model without prompts checked: every generation against the training set."""

    generations: int
    index: str
    extraction_ratio: float
    similar_ratio: float
    anchor_alpha: float
    anchor_n: int
    resolution: int = 0

    nothing_found = "No generation matched a training image: no memorization candidates."

    def lines(self, found_nothing: bool) -> list[str]:
        out = [f"Criterion: each of {self.generations} generations of this unconditional model matched against training index "
               f"{self.index} (Carlini et al.'s CIFAR-10 extraction): extracted when its tiled l2 to a training image is at "
               f"most {self.extraction_ratio:g} of that image's spacing to its nearest other training images and its l2 is "
               f"under {self.anchor_alpha:g} x the mean to its own {self.anchor_n} nearest (anchored l2 < 1); similar within "
               f"{self.similar_ratio:g} of the spacing, a candidate when two generations or more are. Nothing in it is "
               "tuned on the model.",
               f"Measured on the demo world's unconditional model: {MEASURED_UNCONDITIONAL}."]
        if self.resolution and self.resolution not in MEASURED_RESOLUTIONS:
            out.append(f"This model draws {self.resolution}-pixel images; that was measured at 32 pixels only.")
        if found_nothing:
            out.append("No generation met it. That does not show that nothing is memorized: only these seeds were drawn, "
                       f"and an image the model draws for fewer than about 1 in {self.generations} seeds is likely missed.")
        return out


def criterion_statement(store: Store, run_id: str) -> CriterionStatement | MatchingStatement:
    """The criterion a stored run's candidates were computed with, from its settings and calibration."""
    stored = json.loads(store.execute("SELECT config FROM runs WHERE run_id = ?", [run_id])[0][0])
    config = stored.get("cluster", {}) if isinstance(stored, dict) else {}  # a database may be older, or crafted
    if config.get("criterion") == NEAREST_ITEM:
        matching = stored.get("match", {})
        generations, resolution = store.execute(
            "SELECT count(*), coalesce(max(greatest(height, width)), 0) FROM generations "
            "WHERE run_id = ? AND status = 'ok' AND NOT degenerate", [run_id])[0]
        return MatchingStatement(generations, matching.get("index", ""), matching.get("extraction_ratio", float("nan")),
                                 matching.get("similar_ratio", float("nan")), matching.get("anchor_alpha", float("nan")),
                                 matching.get("anchor_n", 0), int(resolution))
    prompts, most, resolution = store.execute(
        "SELECT count(DISTINCT g.prompt_id), coalesce(max(n), 0), coalesce(max(side), 0) FROM (SELECT prompt_id, count(*) AS n, "
        "max(greatest(height, width)) AS side FROM generations WHERE run_id = ? AND status = 'ok' GROUP BY prompt_id) g "
        "JOIN prompts p ON p.run_id = ? AND p.prompt_id = g.prompt_id WHERE p.source IS DISTINCT FROM ?",
        [run_id, run_id, NULL_SOURCE])[0]
    calibrated = store.execute("SELECT value, n_positive, n_negative FROM metrics WHERE run_id = ? "
                               "AND metric = 'criterion_threshold'", [run_id])
    threshold, flagged, nulls = calibrated[0] if calibrated else (config.get("threshold"), 0, 0)
    return CriterionStatement(prompts, most, config.get("min_clique", 0), float("nan") if threshold is None else float(threshold),
                              bool(calibrated), config.get("null_factor", 0.0), nulls, flagged, int(resolution))
