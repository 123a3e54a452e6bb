"""Attacks that compare the audited model with a reference model (``--reference-model``: the
base of a fine-tune, or a model of its family known not to have trained on the items).

A fine-tune's members are denoised better than the base denoises them; an image the base
already denoises well (a simple one, or one like its own training data) is not evidence about
the fine-tune. Subtracting the reference's measurement under the same noise removes that
per-item difficulty: the offline form of Carlini et al.'s likelihood-ratio attack (LiRA, 2022)
with the base as the reference model, as FineXtract's and related fine-tune audits use it.
Two identical models give exactly zero, since the noise is shared.
"""

from __future__ import annotations

import numpy as np

from scanner.mia.attack import Attack, classifier_fit
from scanner.mia.classifier import BoostedTrees
from scanner.mia.clid import discrepancies
from scanner.models.base import DENOISE


def clid_vector(losses: np.ndarray) -> np.ndarray:
    return np.column_stack(discrepancies(losses))


LOSS_REF = Attack("loss_ref", DENOISE, "threshold",
                  "the reference model's loss minus the model's under the same noise (offline LiRA with the base as "
                  "reference; Carlini et al. 2022)",
                  measure=lambda measured: {"score": (measured.reference_losses[0] - measured.losses[0]).mean(axis=(1, 2))},
                  reference=True, text=False)
CLID_REF = Attack("clid_ref", DENOISE, "classifier and threshold",
                  "CLiD's vector [D_1..D_k, L] minus the reference model's, to a classifier (memscan: CLiD with a reference)",
                  measure=lambda measured: {"features": clid_vector(measured.losses) - clid_vector(measured.reference_losses)},
                  fit=classifier_fit(BoostedTrees), weakened=True, reference=True)
