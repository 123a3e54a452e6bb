"""Stable Diffusion 3 (``StableDiffusion3Pipeline``): an MM-DiT transformer trained by flow
matching (``DiffusersT2I`` makes its loss: ``x_t = (1 - sigma) x0 + sigma n`` by the flow
scheduler's ``scale_noise``, target ``n - x0``). The condition is two CLIP encoders'
penultimate states, zero-padded to the joint width, followed by the T5 encoder's states, and
the two CLIP encoders' pooled outputs as the pooled projection. The T5 encoder is optional in
SD3: without it the pipeline puts zeros in its place, and memscan loads such a folder as it is.
The empty prompt is encoded like any other (what the pipeline guides against)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Sequence

import numpy as np

from scanner.errors import input_error
from scanner.models.base import FamilyDefaults
from scanner.models.diffusers_t2i import LDM_AUTOENCODER, DiffusersT2I

# the noise levels: on the demo world's SD3-shaped model sigma 0.7-0.9 beats 0.1-0.3, 0.4-0.6 and CLiD's 0.44-0.46
# (loss AUC 0.704 against 0.631, 0.682, 0.666; CLiD 0.704 against 0.666, 0.588, 0.615: docs/MEASUREMENTS.md)
DEMO_SIZED = FamilyDefaults(20, 5.0, (700, 800, 900), "measured here on the demo world's SD3-shaped model "
                                                       "(32 px; docs/MEASUREMENTS.md)")
RELEASED = FamilyDefaults(28, 7.0, (400, 500, 600),
                          "steps and guidance: StableDiffusion3Pipeline's own defaults; loss noise levels: the middle of "
                          "the flow, where rectified-flow membership leaks most (arXiv 2603.13421), not measured here at 1024 px")
OPTIONAL_T5 = ("text_encoder_3", "tokenizer_3")


@dataclass(frozen=True)
class SD3Condition:
    prompt_embeds: Any   # [N, 77 CLIP tokens + T5 tokens, joint width]
    pooled: Any          # [N, both CLIP encoders' projection widths]


class StableDiffusion3(DiffusersT2I):
    kind = "StableDiffusion3Pipeline"
    single_file_optional = MappingProxyType({"text_encoder": ("text_encoders.clip_l.",), "text_encoder_2": ("text_encoders.clip_g.",),
                                             "text_encoder_3": ("text_encoders.t5xxl.",), "vae": LDM_AUTOENCODER})
    demo_sized, released = DEMO_SIZED, RELEASED
    denoiser_name = "transformer"

    @classmethod
    def pipeline_keywords(cls, folder: Path | None) -> dict:
        """A folder saved without the T5 encoder names it null in model_index.json; diffusers then
        wants to be told it is absent rather than missing."""
        declared = cls.declared_components(folder)
        if not declared:
            return {}
        absent = {name: None for name in OPTIONAL_T5 if declared.get(name, [None])[0] is None}
        if len(absent) == 1:
            raise input_error(folder, "the T5 encoder and its tokenizer must both be present or both absent "
                                      f"(model_index.json names only {', '.join(set(OPTIONAL_T5) - set(absent))})")
        return absent

    def check_shape(self) -> None:
        config = self.denoiser.config
        widths = sum(getattr(self.pipeline, name).config.projection_dim for name in ("text_encoder", "text_encoder_2"))
        if config.pooled_projection_dim != widths:
            raise input_error(self.model_ref, f"the transformer takes a pooled projection {config.pooled_projection_dim} "
                                              f"wide, but the two CLIP encoders project to {widths} together")

    def encode_condition(self, prompts: Sequence[str]) -> SD3Condition:
        import torch

        with torch.inference_mode():  # the pipeline's own prompt encoding, T5 (or its zeros) included
            embeds, _, pooled, _ = self.pipeline.encode_prompt(list(prompts), None, None, device=self.device,
                                                               num_images_per_prompt=1, do_classifier_free_guidance=False)
        return SD3Condition(embeds, pooled)

    def text_features(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        condition = self.encode_condition(prompts)
        return torch.cat([condition.prompt_embeds.flatten(1), condition.pooled], dim=1).float().cpu().numpy()

    def predict(self, model_input, timestep, condition: SD3Condition):
        import torch

        with torch.inference_mode():
            return self.denoiser(hidden_states=model_input.to(self.dtype), timestep=self._timesteps(timestep, len(model_input)),
                                 encoder_hidden_states=condition.prompt_embeds, pooled_projections=condition.pooled).sample
