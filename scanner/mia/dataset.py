"""Dataset inference for a data owner (after Dubinski et al., "CDI: Copyrighted Data
Identification in Diffusion Models"): one image may not be decidable, a set of them is.

Per-item membership features of the owner's suspect set are compared with those of a reference
set drawn from the same distribution and known not to be trained on. As in CDI, a classifier
fitted to tell half of the suspect set from half of the reference set (features: CLiD's
discrepancies and the denoising loss) scores the other halves, so no item is both fitted and
tested, and no single feature has to carry the signal (on the rebuilt demo model the mean
discrepancy alone no longer separated single-copy members). A one-sided Mann-Whitney U test
asks whether the held-out suspect scores are stochastically larger; the p-value says how surprising
the difference would be if the suspect set had not been trained on either. We also report how
many suspect items the test needed: the smallest n (over random orderings) at which p < alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanner.mia.classifier import LogisticRegression


@dataclass(frozen=True)
class DatasetVerdict:
    p_value: float
    items_needed: int | None   # None: not significant even with every suspect item
    suspect: int
    reference: int
    suspect_median: float
    reference_median: float
    alpha: float


def one_sided_p(suspect: np.ndarray, reference: np.ndarray) -> float:
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(suspect, reference, alternative="greater").pvalue)


def dataset_inference(suspect: np.ndarray, reference: np.ndarray, alpha: float = 0.05, orderings: int = 20,
                      seed: int = 0) -> DatasetVerdict:
    """Test whether ``suspect`` scores exceed ``reference`` scores (higher score: more member-like)."""
    suspect, reference = np.asarray(suspect, float), np.asarray(reference, float)
    p_value = one_sided_p(suspect, reference)
    needed = None
    if p_value < alpha:
        rng = np.random.default_rng(seed)
        counts = []
        for _ in range(orderings):
            order = rng.permutation(len(suspect))
            counts.append(next((n for n in range(2, len(suspect) + 1)
                                if one_sided_p(suspect[order[:n]], reference) < alpha), len(suspect)))
        needed = int(np.ceil(np.median(counts)))
    return DatasetVerdict(p_value, needed, len(suspect), len(reference), float(np.median(suspect)),
                          float(np.median(reference)), alpha)


def held_out_scores(suspect: np.ndarray, reference: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-item features [n, f] of both sets -> classifier scores of the halves it was not fitted on."""
    rng = np.random.default_rng(seed)
    suspect_order, reference_order = rng.permutation(len(suspect)), rng.permutation(len(reference))
    suspect_fit, suspect_test = np.array_split(suspect_order, 2)
    reference_fit, reference_test = np.array_split(reference_order, 2)
    x = np.vstack([suspect[suspect_fit], reference[reference_fit]])
    y = np.r_[np.ones(len(suspect_fit)), np.zeros(len(reference_fit))]
    classifier = LogisticRegression.fit(x, y)
    return classifier.score(suspect[suspect_test]), classifier.score(reference[reference_test])
