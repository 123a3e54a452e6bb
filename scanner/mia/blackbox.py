"""The black-box attacks of Wu et al. 2022 ("Membership Inference Attacks Against Text-to-Image
Generation Models"): only ``generate`` is called. A member's caption makes the model produce
images closer to the member image, in pixels and in a pretrained encoder's embedding (CLIP).

Features per item, from ``n`` generations of its caption: the smallest normalized l2 between
the query image and a generation (pixel level), and the smallest CLIP cosine distance (semantic
level). ``wu_pixel`` and ``wu_clip`` threshold one feature each; ``wu_classifier`` is a logistic
regression (``scanner.mia.classifier``) on both, trained on the auxiliary half.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scanner.distances import normalized_l2
from scanner.mia.attack import Attack, classifier_fit
from scanner.mia.classifier import LogisticRegression
from scanner.features import thumbnail, to_uint8
from scanner.models.base import SAMPLE, ImageTextEmbedder, TextToImageModel


def generate_per_caption(model: TextToImageModel, captions: Sequence[str], seeds: Sequence[int], num_inference_steps: int,
                         guidance_scale: float, batch_size: int = 64, few_step: bool = False,
                         thumbnail_size: int | None = None) -> np.ndarray:
    """Images [captions, seeds, H, W, 3] for every caption under every seed, in batches: floats,
    or uint8 thumbnails no larger than ``thumbnail_size`` (what large prompt sets can hold)."""
    pairs = [(caption, seed) for caption in captions for seed in seeds]
    batches = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        images = model.generate([c for c, _ in chunk], [s for _, s in chunk], num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, few_step=few_step)
        if thumbnail_size is not None:
            images = np.stack([thumbnail(image, thumbnail_size) for image in to_uint8(images)])
        batches.append(images)
    images = np.concatenate(batches)
    return images.reshape(len(captions), len(seeds), *images.shape[1:])


def blackbox_features(model: TextToImageModel, embedder: ImageTextEmbedder, images: np.ndarray, captions: Sequence[str],
                      seeds: Sequence[int] = (0, 1, 2, 3), num_inference_steps: int = 20, guidance_scale: float = 5.0,
                      batch_size: int = 64) -> np.ndarray:
    """[items, 2]: (min pixel distance, min CLIP cosine distance) to the generations of the caption."""
    generations = to_uint8(generate_per_caption(model, captions, seeds, num_inference_steps, guidance_scale, batch_size))
    pixel = normalized_l2(images[:, None], generations).min(axis=1)
    query = embedder.embed_images(images)
    produced = embedder.embed_images(generations.reshape(-1, *images.shape[1:])).reshape(len(captions), len(seeds), -1)
    semantic = (1.0 - np.einsum("id,isd->is", query, produced)).min(axis=1)
    return np.stack([pixel, semantic], axis=1)


WU_PIXEL = Attack("wu_pixel", SAMPLE, "threshold",
                  "minus the smallest pixel distance from the image to generations of its caption (Wu et al. 2022)",
                  measure=lambda measured: {"score": -measured.wu_distances[:, 0]}, embedder=True)
WU_CLIP = Attack("wu_clip", SAMPLE, "threshold",
                 "minus the smallest CLIP distance from the image to generations of its caption (Wu et al. 2022)",
                 measure=lambda measured: {"score": -measured.wu_distances[:, 1]}, embedder=True)
WU_CLASSIFIER = Attack("wu_classifier", SAMPLE, "classifier and threshold", "both Wu et al. distances to a classifier (Wu et al. 2022)",
                       measure=lambda measured: {"features": measured.wu_distances}, fit=classifier_fit(LogisticRegression),
                       embedder=True)
