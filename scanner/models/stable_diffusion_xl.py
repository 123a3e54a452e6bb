"""Stable Diffusion XL (``StableDiffusionXLPipeline``): two CLIP text encoders whose penultimate
hidden states are concatenated, the second one's pooled projection, and size ids
(original size, crop corner, target size) as added conditioning. The empty prompt is the
all-zero condition when the pipeline says ``force_zeros_for_empty_prompt`` (what it guides
against); the VAE encodes in float32 when it says ``force_upcast`` in fp16."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from scanner.errors import input_error
from scanner.models.base import FamilyDefaults
from scanner.models.diffusers_t2i import DiffusersT2I

# on the demo world's SDXL-shaped model CLiD's timesteps beat the demo's (100, 200, 300): AUC 0.809 against 0.776; its
# Euler sampler at 50 steps flags all 17 of its memorized items (32 seeds), at 20 steps 16 of 18, with no false flag at either
DEMO_SIZED = FamilyDefaults(50, 5.0, (440, 450, 460), "measured here on the demo world's SDXL-shaped model "
                                                       "(32 px; docs/MEASUREMENTS.md; steps: docs/CALIBRATION.md)")
RELEASED = FamilyDefaults(50, 5.0, (440, 450, 460),
                          "steps and guidance: StableDiffusionXLPipeline's own defaults; loss timesteps: CLiD's for SD v1-4 "
                          "(Zhai et al. 2024), carried to SDXL unmeasured")


@dataclass(frozen=True)
class XLCondition:
    prompt_embeds: Any   # [N, tokens, width of both encoders]
    pooled: Any          # [N, projection width of the second encoder]


class StableDiffusionXL(DiffusersT2I):
    kind = "StableDiffusionXLPipeline"
    demo_sized, released = DEMO_SIZED, RELEASED
    upcast_vae = True

    def check_shape(self) -> None:
        if self.pipeline.unet.config.get("addition_embed_type") != "text_time":
            raise input_error(self.model_ref, "the UNet takes no pooled text and size ids: SD 1/2-shaped weights "
                                              "loaded as a StableDiffusionXLPipeline (by model_index.json or --model-kind); "
                                              "use --model-kind StableDiffusionPipeline with an SD config")

    def encode_condition(self, prompts: Sequence[str]) -> XLCondition:
        import torch

        prompts = list(prompts)
        with torch.inference_mode():
            embeds, _, pooled, _ = self.pipeline.encode_prompt(prompts, device=self.device, num_images_per_prompt=1,
                                                               do_classifier_free_guidance=False)
        if self.pipeline.config.get("force_zeros_for_empty_prompt", True):
            keep = torch.tensor([p != "" for p in prompts], device=self.device, dtype=embeds.dtype)
            embeds, pooled = embeds * keep[:, None, None], pooled * keep[:, None]
        return XLCondition(embeds, pooled)

    def text_features(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        condition = self.encode_condition(prompts)
        return torch.cat([condition.prompt_embeds.flatten(1), condition.pooled], dim=1).float().cpu().numpy()

    def size_ids(self, n: int):
        """(original size, top-left crop, target size): the pipeline's defaults for its own resolution."""
        import torch

        side = self.resolution
        return torch.tensor([[side, side, 0, 0, side, side]] * n, device=self.device, dtype=self.dtype)

    def predict(self, model_input, timestep, condition: XLCondition):
        import torch

        n = len(model_input)
        with torch.inference_mode():
            return self.pipeline.unet(model_input.to(self.dtype), self._timesteps(timestep, n),
                                      encoder_hidden_states=condition.prompt_embeds,
                                      added_cond_kwargs={"text_embeds": condition.pooled, "time_ids": self.size_ids(n)}).sample
