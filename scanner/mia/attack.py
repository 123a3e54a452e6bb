"""What an attack or a detector is: the one type every attack file fills in.

An attack measures raw per-item features of a chunk of items (``measure``, from the shared
``Measurements`` of that chunk), and turns labelled features into scores and a threshold
(``fit``). A detector scores a prompt without an image (so it can also rank prompts before
sampling: ``--triage-detector``): its ``evidence`` is gathered per prompt, chunk by chunk, and
turned into scores once the whole set's is in (``from_evidence``). ``scanner.mia.attacks`` lists
them; adding one is a file with its entry and a line there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from scanner.mia.metrics import best_threshold

if TYPE_CHECKING:
    from scanner.mia.measurements import Measurements

Features = dict[str, np.ndarray]          # one attack's raw features, each an array with one row per item
Fitted = tuple[np.ndarray, float, dict]   # (scores of every item, the threshold, what was fitted)


def fit_threshold(raw: Features, labels: np.ndarray, fitted_on: np.ndarray) -> Fitted:
    """The raw score as it is, and the threshold that decides best on the items in ``fitted_on``."""
    scores = raw["score"]
    return scores, best_threshold(scores[fitted_on], labels[fitted_on]), {}


def fit_classifier(classifier, raw: Features, labels: np.ndarray, fitted_on: np.ndarray) -> Fitted:
    """A classifier (``scanner.mia.classifier``) trained on the feature vectors of ``fitted_on``; its scores."""
    model = classifier.fit(raw["features"][fitted_on], labels[fitted_on].astype(float))
    scores = model.score(raw["features"])
    return scores, best_threshold(scores[fitted_on], labels[fitted_on]), model.describe()


def classifier_fit(classifier) -> Callable[[Features, np.ndarray, np.ndarray], Fitted]:
    return functools.partial(fit_classifier, classifier)


@dataclass(frozen=True)
class Attack:
    name: str
    needs: str          # the model capability: SAMPLE (black box) or DENOISE (gray box)
    fitted: str         # what is fitted on labelled data before it decides
    scores: str         # how it scores (higher: more member-like), and where it comes from
    measure: Callable[[Measurements], Features] | None = None   # raw features of a chunk (not for detectors)
    fit: Callable[[Features, np.ndarray, np.ndarray], Fitted] = fit_threshold
    embedder: bool = False   # also needs a CLIP-style embedder
    weakened: bool = False   # its losses include CLiD's weakened captions (measured once for every attack that does)
    reference: bool = False  # compares the model with a reference model (--reference-model)
    text: bool = True        # works through the item's caption as a prompt (TEXT): refused on an unconditional model
    # a detector: (model, prompts, seeds, num_inference_steps, guidance_scale) -> evidence per prompt
    evidence: Callable | None = None
    from_evidence: Callable[[np.ndarray], np.ndarray] = np.asarray  # the whole set's evidence -> scores

    @property
    def detector(self) -> bool:
        return self.evidence is not None

    def features(self, measured: Measurements) -> Features:
        """Raw features of one chunk of items: a detector's evidence of their captions, or ``measure``'s."""
        if self.detector:
            return {"evidence": measured.detector_evidence(self)}
        return self.measure(measured)

    def whole_set(self, raw: Features) -> Features:
        """Features of the whole set, once every chunk's are joined: a detector's scores."""
        return {"score": self.from_evidence(raw["evidence"])} if self.detector else raw
