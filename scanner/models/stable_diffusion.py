"""Stable Diffusion 1.x and 2.x (``StableDiffusionPipeline``): one CLIP text encoder whose last
hidden states condition the UNet; epsilon or v-prediction, as the scheduler config says."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from scanner.errors import input_error
from scanner.models.base import FamilyDefaults
from scanner.models.diffusers_t2i import DiffusersT2I

# the demo model's own choice: CLiD's timesteps (440, 450, 460) are 0.01 of AUC worse on it, 0.045 better on the
# v-prediction model of the demo world (docs/MEASUREMENTS.md, model families)
DEMO_SIZED = FamilyDefaults(20, 5.0, (100, 200, 300), "measured here on the demo model (32 px; docs/MEASUREMENTS.md)")
RELEASED = FamilyDefaults(50, 7.5, (440, 450, 460),
                          "steps and guidance: StableDiffusionPipeline's own defaults; loss timesteps: CLiD's for SD v1-4 "
                          "(Zhai et al. 2024); not measured here")


class StableDiffusion(DiffusersT2I):
    kind = "StableDiffusionPipeline"
    demo_sized, released = DEMO_SIZED, RELEASED

    @classmethod
    def pipeline_keywords(cls, folder):
        return {"safety_checker": None, "requires_safety_checker": False}  # an audit needs the model's own images

    def check_shape(self) -> None:
        if self.pipeline.unet.config.get("addition_embed_type") is not None:
            raise input_error(self.model_ref, "the UNet takes added conditioning "
                                              f"({self.pipeline.unet.config.addition_embed_type}): SDXL-shaped weights "
                                              "loaded as a StableDiffusionPipeline (by model_index.json or --model-kind); use "
                                              "--model-kind StableDiffusionXLPipeline with an SDXL config")

    def encode_condition(self, prompts: Sequence[str]):
        import torch

        with torch.inference_mode():  # the pipeline's own prompt encoding (clip_skip and all)
            return self.pipeline.encode_prompt(list(prompts), self.device, 1, False)[0]

    def text_features(self, prompts: Sequence[str]) -> np.ndarray:
        return self.encode_condition(prompts).float().flatten(1).cpu().numpy()

    def predict(self, model_input, timestep, condition):
        import torch

        with torch.inference_mode():
            return self.pipeline.unet(model_input.to(self.dtype), self._timesteps(timestep, len(model_input)),
                                      encoder_hidden_states=condition).sample
