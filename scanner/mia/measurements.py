"""What the chosen attacks measure on one chunk of items, each measurement made once and shared.

The loss, CLiD's two attacks and dataset inference all read the same denoising losses; Wu et
al.'s three attacks the same distances to generations. An attack's ``measure`` asks for what it
reads, and the first to ask pays for it: the losses include CLiD's weakened captions when any
chosen attack needs them, so asking for the true caption's loss never measures it twice; the
reference model's losses are measured under the same conditions and noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

from scanner.mia import clid
from scanner.mia.attack import Attack
from scanner.mia.denoising import NoiseProtocol, denoising_losses
from scanner.models.base import ImageTextEmbedder, TextToImageModel


class Measurements:
    def __init__(self, model: TextToImageModel, images: np.ndarray, captions: Sequence[str], attacks: Sequence[Attack],
                 protocol: NoiseProtocol, embedder: ImageTextEmbedder | None = None,
                 triage_seeds: Sequence[int] = (0, 1, 2, 3), reference: TextToImageModel | None = None):
        self.model, self.images, self.captions = model, images, list(captions)
        self.attacks, self.protocol, self.embedder, self.triage_seeds = attacks, protocol, embedder, triage_seeds
        self.reference = reference

    @cached_property
    def condition_sets(self) -> list[list[str]]:
        """Each item's text per condition: the true caption first, then (when an attack needs them)
        CLiD's weakened captions and the empty one."""
        sets = [self.captions]
        if any(attack.weakened for attack in self.attacks):
            end_token = self.model.end_of_text
            weakened = [clid.weakened_captions(c, clid.word_importance(c, self.model.text_features), end_token)
                        for c in self.captions]
            sets += [list(w) for w in zip(*weakened)] + [[""] * len(self.captions)]
        return sets

    @cached_property
    def losses(self) -> np.ndarray:
        """[conditions, items, repeats, timesteps] under the protocol's shared noise."""
        return denoising_losses(self.model, self.images, self.condition_sets, self.protocol)

    @cached_property
    def reference_losses(self) -> np.ndarray:
        """The reference model's losses on the same images, conditions and noise (``losses``' shape)."""
        if self.reference is None:
            raise ValueError("the reference attacks need a reference model")
        return denoising_losses(self.reference, self.images, self.condition_sets, self.protocol)

    @cached_property
    def wu_distances(self) -> np.ndarray:
        """[items, 2]: Wu et al.'s smallest pixel and CLIP distances to generations of the caption."""
        from scanner.mia.blackbox import blackbox_features

        if self.embedder is None:
            raise ValueError("the Wu et al. attacks need a CLIP embedder")
        defaults = self.model.defaults
        return blackbox_features(self.model, self.embedder, self.images, self.captions,
                                 num_inference_steps=defaults.num_inference_steps, guidance_scale=defaults.guidance_scale)

    def detector_evidence(self, detector: Attack) -> np.ndarray:
        """The detector's evidence for each item's caption, at the model's own steps and guidance."""
        defaults = self.model.defaults
        return detector.evidence(self.model, self.captions, self.triage_seeds, defaults.num_inference_steps,
                                 defaults.guidance_scale)
