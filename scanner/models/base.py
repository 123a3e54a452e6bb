"""The interfaces every model adapter implements (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np


class TextToImageModel(Protocol):
    """A text-to-image diffusion model, black box (``generate``) and gray box (the rest)."""

    model_ref: str
    model_hash: str
    precision: str  # device type and dtype, e.g. "cuda-float16": fp16 draws visibly other images than fp32 from one seed
    resolution: int
    end_of_text: str  # the tokenizer's end-of-text token, as text (CLiD masks words with it)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int,
                 guidance_scale: float, few_step: bool = False) -> np.ndarray:
        """Images as float32 [N, H, W, 3] in [0, 1]; one seed per prompt, so an image never
        depends on the batch it was drawn in. Non-finite values are returned as they are, so
        the caller can record a failed generation instead of crashing. ``few_step`` asks for a
        solver built for a handful of steps (cheap previews for triage, never stored)."""

    def encode_text(self, prompts: Sequence[str]) -> Any:
        """Condition tensors for ``predict_noise``; the empty string gives the null condition."""

    def encode_image(self, images: np.ndarray) -> Any:
        """Latents x0 (scaled as the denoiser sees them) of uint8 [N, H, W, 3] images."""

    def add_noise(self, x0: Any, noise: Any, timesteps: Any) -> Any:
        """x_t from the training forward process at integer timesteps."""

    def predict_noise(self, x_t: Any, timesteps: Any, condition: Any) -> Any:
        """The denoiser's epsilon prediction."""

    def initial_noise(self, seeds: Sequence[int]) -> Any:
        """The starting latents x_T of ``generate`` for these seeds."""

    def sampling_timesteps(self, num_inference_steps: int) -> list[int]:
        """The sampler's timesteps, first (noisiest) first."""


class ImageTextEmbedder(Protocol):
    """A CLIP-style model: images and texts into one normalized embedding space."""

    model_ref: str
    model_hash: str
    dim: int

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """L2-normalized float32 [N, dim] embeddings of uint8 [N, H, W, 3] images."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized float32 [N, dim] embeddings of texts."""
