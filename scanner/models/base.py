"""The interfaces every model adapter implements, split by capability (see docs/ARCHITECTURE.md).

A *sampler* is the black box: images for prompts and seeds. Extraction, seed-agreement triage
and the Wu et al. attacks need nothing more, so a model behind an HTTP API can be audited with
them. A *denoiser* is the gray box: the family's own training loss and raw predictions, in its
own parametrisation (epsilon, v, flow velocity), so that losses, CLiD and the Wen and Asthana
detectors never assume one. A text-to-image model also offers *text* conditioning; an
unconditional model (Carlini et al.'s CIFAR-10 setting) does not, so the attacks that work
through the prompt are refused on it; a class-conditional one (DiT) is conditioned on a *label*
instead, its class names standing for prompts. An adapter declares what it offers in ``capabilities``; commands
ask ``require`` before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from scanner.errors import MemscanError

SAMPLE = "sample"    # generate(prompts, seeds, steps, guidance)
DENOISE = "denoise"  # training_loss and predict: gray-box access to the denoiser
TEXT = "text"        # a prompt's text conditions the model (not so for an unconditional model)
LABEL = "label"      # a class label conditions the model (DiT's): its "prompts" are the names of its classes

CAPABILITY_NAMES = {SAMPLE: "sampling (black box)", DENOISE: "the denoiser's losses and predictions (gray box)",
                    TEXT: "conditioning on a prompt's text", LABEL: "conditioning on a class label"}


@dataclass(frozen=True)
class FamilyDefaults:
    """Settings chosen per family and resolution, with where they come from: measured here (on
    which model) or carried from a paper or the family's pipeline (docs/CALIBRATION.md). A scan or
    attack that leaves them unset takes these, so the 32-pixel demo's choices never silently
    reach a 512-pixel model."""

    num_inference_steps: int
    guidance_scale: float
    loss_timesteps: tuple[int, ...]   # the noise levels of the loss and CLiD (training scale, 0-1000)
    source: str
    # seeds per prompt for a text-to-image family: 32, measured on the calibration models (session 13: where 16 fell
    # short of 90% recall, 0.79-0.87 -> 0.89-1.00; session 15's stricter truth: sd-64 0.59 at 16 -> 0.67 at 32, the
    # demo 0.92 at both; docs/CALIBRATION.md). An unconditional model has
    # one "prompt", so its whole sample is these seeds
    samples_per_prompt: int = 32


SMALL_DEMO_PIXELS = 64  # at or below this size a model is of the demo world's kind: memscan's own measurements apply


class Sampler(Protocol):
    """A text-to-image model as a black box."""

    kind: str           # the registry's name for the model kind (a diffusers pipeline class, ...)
    model_ref: str
    model_hash: str     # covers the weights and any LoRA files with their scales
    loras: tuple        # the LoRAs on it (``scanner.models.lora.Lora``), in the order applied
    precision: str      # device type and dtype, e.g. "cuda-float16": fp16 draws visibly other images than fp32 from one seed
    resolution: int
    capabilities: frozenset[str]
    defaults: FamilyDefaults
    failure_reasons: Mapping[int, str]  # why the image at an index of the last generate call failed, when known

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int,
                 guidance_scale: float, few_step: bool = False) -> np.ndarray:
        """Images as float32 [N, H, W, 3] in [0, 1]; one seed per prompt, so an image never
        depends on the batch it was drawn in. Non-finite values are returned as they are, so
        the caller can record a failed generation instead of crashing. ``few_step`` asks for a
        solver built for a handful of steps (cheap previews for triage, never stored)."""


class Denoiser(Protocol):
    """A diffusion model's denoiser with its conditioning, in the family's own parametrisation.

    Timesteps are on the training scale of the family's scheduler (0 to 1000 for DDPM-style and
    flow-matching schedulers alike: diffusers' flow schedulers use sigma x 1000)."""

    end_of_text: str    # the tokenizer's end-of-text token, as text (CLiD masks words with it)

    def encode_image(self, images: np.ndarray) -> Any:
        """Latents x0 (scaled as the denoiser sees them) of uint8 [N, H, W, 3] images."""

    def encode_condition(self, prompts: Sequence[str]) -> Any:
        """The family's condition for these prompts (opaque to callers); the empty string gives
        the condition the sampler guides against."""

    def text_features(self, prompts: Sequence[str]) -> np.ndarray:
        """float32 [N, F]: the condition as one vector per prompt (CLiD ranks words by how far it moves)."""

    def training_loss(self, x0: Any, condition: Any, timesteps: Any, noise: Any) -> Any:
        """Per-item mean squared error [N] of the denoiser's prediction against the family's
        training target, x_t made by the family's training scheduler from (x0, noise, timesteps)."""

    def sampling_timesteps(self, num_inference_steps: int) -> list[float]:
        """The sampler's timesteps, first (noisiest) first."""

    def first_step_input(self, seeds: Sequence[int], num_inference_steps: int) -> Any:
        """The denoiser's input at the sampler's first step for these seeds (x_T, scaled as the
        sampling scheduler scales model inputs)."""

    def predict(self, model_input: Any, timestep: float, condition: Any) -> Any:
        """The denoiser's raw output (its own parametrisation) at one timestep."""


class TextToImageModel(Sampler, Denoiser, Protocol):
    """A model with both capabilities: what the diffusers adapters are."""


UNCONDITIONAL_PROMPT = ""  # what an unconditional model is "prompted" with: one prompt, many seeds


def require(model: Sampler, capability: str, purpose: str) -> None:
    """One line, before any work, when ``purpose`` needs a capability the model lacks."""
    if capability not in model.capabilities:
        raise MemscanError(f"{purpose} needs {CAPABILITY_NAMES[capability]}, which a {model.kind} model "
                           f"({model.model_ref}) does not offer; it offers: "
                           f"{', '.join(CAPABILITY_NAMES[c] for c in sorted(model.capabilities)) or 'nothing'}")


class ImageTextEmbedder(Protocol):
    """A CLIP-style model: images and texts into one normalized embedding space."""

    model_ref: str
    model_hash: str
    dim: int

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """L2-normalized float32 [N, dim] embeddings of uint8 [N, H, W, 3] images."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized float32 [N, dim] embeddings of texts."""
