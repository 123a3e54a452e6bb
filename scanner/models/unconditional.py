"""Unconditional diffusion models (``DDPMPipeline``, ``DDIMPipeline``): a pixel-space UNet and no
prompt at all, Carlini et al.'s CIFAR-10 setting. What the model can be made to emit is found by
drawing many seeds and matching every generation against the training set (``scanner.match``);
the loss attack runs on the denoiser as on any family, and the attacks that work through a prompt
(CLiD, the Wen and Asthana detectors, seed agreement, Wu et al.) are refused: the adapter offers
no text conditioning.

The denoiser is ``UNet2DModel(x_t, t)``; its training loss is DDPM's, on pixels scaled to
[-1, 1], with the target its scheduler's ``prediction_type`` names (``DiffusersT2I``). Sampling is
the pipeline's own call; a ``DDIMPipeline`` samples with eta 0, so a seed draws one image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from scanner.models.base import DENOISE, SAMPLE, UNCONDITIONAL_PROMPT, FamilyDefaults
from scanner.models.diffusers_t2i import DiffusersT2I

# steps: DDIM's 50 (Song et al.); the loss's noise levels: measured on the demo world's unconditional model, where
# (100, 200, 300) and (200, 300, 400) tie (loss AUC 0.708, 0.709) ahead of (50, 100, 200) and (440, 450, 460) (0.684,
# 0.685; docs/MEASUREMENTS.md); the seeds: enough for the demo model's reproduced images to show (256), and at released
# size 4096; guidance does not apply (1.0: the model's own prediction)
DEMO_SIZED = FamilyDefaults(50, 1.0, (100, 200, 300), "measured here on the demo world's unconditional model (32 px; "
                                                      "docs/MEASUREMENTS.md)", samples_per_prompt=256)
RELEASED = FamilyDefaults(50, 1.0, (100, 200, 300),
                          "steps: DDIM's 50; loss noise levels: the demo's, not measured above 32 px; seeds: 4096, a "
                          "2^-8 share of the 2^20 Carlini et al. drew from each CIFAR-10 model", samples_per_prompt=4096)


class UnconditionalDiffusion(DiffusersT2I):
    """The shared adapter of the unconditional pipelines; ``kind`` names which."""

    kind = "DDIMPipeline"
    demo_sized, released = DEMO_SIZED, RELEASED
    capabilities = frozenset({SAMPLE, DENOISE})
    sampler_keywords: dict = {"eta": 0.0}  # the pipeline call's own: DDIM with eta 0 draws one image per seed

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 50,
                 guidance_scale: float = 1.0, few_step: bool = False) -> np.ndarray:
        """``prompts`` are all the empty prompt (there is no other); ``guidance_scale`` does not apply.
        ``few_step`` samples with the pipeline's own solver at the steps asked (a DDIMPipeline makes
        any scheduler DDIM)."""
        import torch

        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        if any(prompt != UNCONDITIONAL_PROMPT for prompt in prompts):
            raise ValueError(f"a {self.kind} takes no prompt")
        with torch.inference_mode():
            output = self.sampling_pipeline(batch_size=len(seeds), generator=self._generators(seeds),
                                            num_inference_steps=num_inference_steps, output_type="np", **self.sampler_keywords)
        return np.asarray(output.images, dtype=np.float32)

    def encode_image(self, images: np.ndarray):
        import torch

        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        return (pixels.to(self.device, torch.float32) / 127.5 - 1.0).to(self.dtype)

    def encode_condition(self, prompts: Sequence[str]) -> None:
        """None: the model is not conditioned (an item's caption, where there is one, changes nothing)."""
        return None

    def predict(self, model_input, timestep, condition: None):
        import torch

        with torch.inference_mode():
            return self.denoiser(model_input.to(self.dtype), self._timesteps(timestep, len(model_input))).sample


class DDPMUnconditional(UnconditionalDiffusion):
    kind = "DDPMPipeline"
    sampler_keywords: dict = {}  # ancestral: its noise per step comes from the seed's generator too
