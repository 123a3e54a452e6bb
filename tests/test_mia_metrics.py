import itertools

import numpy as np
import pytest

from scanner.mia import metrics


def test_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 60).astype(float)
    labels = rng.random(60) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, b in itertools.product(scores[labels], scores[~labels])]
    assert metrics.roc_auc(scores, labels) == pytest.approx(np.mean(pairs))


def test_tpr_at_low_fpr_and_thresholds():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0], bool)
    assert metrics.tpr_at_fpr(scores, labels, 0.0) == 0.5  # two members above every non-member
    assert metrics.tpr_at_fpr(scores, labels, 0.25) == 0.75
    threshold = metrics.best_threshold(scores, labels)
    assert metrics.balanced_accuracy(scores, labels, threshold) == 0.75
    result = metrics.evaluate(scores, labels, threshold)
    assert (result.n_members, result.n_nonmembers) == (4, 4) and result.roc[0] == (0.0, 0.0) and result.roc[-1] == (1.0, 1.0)
    perfect = metrics.evaluate(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 1, 0, 0], bool), 1.5)
    assert perfect.auc == 1.0 and perfect.tpr_at_1_fpr == 1.0 and perfect.balanced_accuracy == 1.0
