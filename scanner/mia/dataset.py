"""Dataset inference for a data owner (after Dubinski et al., "CDI: Copyrighted Data
Identification in Diffusion Models"): one image may not be decidable, a set of them is.

Per-item membership scores of the owner's suspect set are compared with those of a reference
set drawn from the same distribution and known not to be trained on. A one-sided Mann-Whitney U
test asks whether the suspect scores are stochastically larger; the p-value says how surprising
the difference would be if the suspect set had not been trained on either. We also report how
many suspect items the test needed: the smallest n (over random orderings) at which p < alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
