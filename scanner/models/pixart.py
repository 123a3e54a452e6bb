"""PixArt-alpha and PixArt-sigma (``PixArtAlphaPipeline``, ``PixArtSigmaPipeline``): a DiT on
2x2 patches of the latents with cross-attention to a T5 encoder's states (padding masked), and
the timestep through adaLN-single. Trained as DDPM: the target is epsilon or v as the scheduler's
``prediction_type`` says (``DiffusersT2I``). A PixArt transformer usually learns its variance
too: its output then has twice the latent channels, and the first half is the prediction (what
the pipeline keeps, and what memscan's losses and detectors see).

The prompt is encoded as given: the pipelines' optional caption cleaning needs bs4 and ftfy, and
would make the condition depend on what is installed. T5 states are padded to the tokenizer's
``model_max_length``, at most the pipeline's own length (120 tokens for alpha, 300 for sigma).
Sampling is at the model's own square size, without the pipelines' aspect-ratio binning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from scanner.models.base import FamilyDefaults
from scanner.models.diffusers_t2i import DiffusersT2I

# the loss's noise levels: on the demo world's PixArt-shaped model CLiD's (440, 450, 460) edge out (100, 200, 300),
# (400, 500, 600) and (700, 800, 900) (loss AUC 0.725 against 0.713, 0.717, 0.667; docs/MEASUREMENTS.md)
DEMO_SIZED = FamilyDefaults(20, 5.0, (440, 450, 460), "measured here on the demo world's PixArt-shaped model "
                                                       "(32 px; docs/MEASUREMENTS.md)")
RELEASED = FamilyDefaults(20, 4.5, (440, 450, 460),
                          "steps and guidance: the PixArt pipelines' own defaults; loss timesteps: CLiD's for SD v1-4 "
                          "(Zhai et al. 2024), carried to PixArt unmeasured")


@dataclass(frozen=True)
class PixArtCondition:
    prompt_embeds: Any   # [N, T5 tokens, T5 width]
    mask: Any            # [N, T5 tokens]: 1 on the prompt's tokens, 0 on padding


class PixArtAlpha(DiffusersT2I):
    kind = "PixArtAlphaPipeline"
    demo_sized, released = DEMO_SIZED, RELEASED
    denoiser_name = "transformer"
    pipeline_t5_tokens = 120  # PixArtAlphaPipeline's max_sequence_length

    @property
    def t5_tokens(self) -> int:
        return min(int(self.pipeline.tokenizer.model_max_length), self.pipeline_t5_tokens)

    def guidance_keywords(self, guidance_scale: float, n: int) -> dict:
        return {"guidance_scale": guidance_scale, "max_sequence_length": self.t5_tokens, "clean_caption": False,
                "use_resolution_binning": False}

    def encode_condition(self, prompts: Sequence[str]) -> PixArtCondition:
        import torch

        with torch.inference_mode():  # the pipeline's own prompt encoding
            embeds, mask, _, _ = self.pipeline.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                                             device=self.device, clean_caption=False,
                                                             max_sequence_length=self.t5_tokens)
        return PixArtCondition(embeds, mask)

    def text_features(self, prompts: Sequence[str]) -> np.ndarray:
        condition = self.encode_condition(prompts)
        return (condition.prompt_embeds * condition.mask[..., None]).float().flatten(1).cpu().numpy()

    def size_conditions(self, n: int) -> dict:
        """The 1024 px PixArt-alpha is conditioned on the image size and aspect ratio too (as its pipeline makes them)."""
        import torch

        if not self.denoiser.config.use_additional_conditions:
            return {"resolution": None, "aspect_ratio": None}
        side = self.resolution
        return {"resolution": torch.tensor([[side, side]] * n, device=self.device, dtype=self.dtype),
                "aspect_ratio": torch.ones((n, 1), device=self.device, dtype=self.dtype)}

    def predict(self, model_input, timestep, condition: PixArtCondition):
        import torch

        n = len(model_input)
        with torch.inference_mode():
            output = self.denoiser(model_input.to(self.dtype), encoder_hidden_states=condition.prompt_embeds,
                                   encoder_attention_mask=condition.mask, timestep=self._timesteps(timestep, n),
                                   added_cond_kwargs=self.size_conditions(n)).sample
        learned_variance = self.denoiser.config.out_channels == 2 * model_input.shape[1]
        return output.chunk(2, dim=1)[0] if learned_variance else output


class PixArtSigma(PixArtAlpha):
    kind = "PixArtSigmaPipeline"
    pipeline_t5_tokens = 300  # PixArtSigmaPipeline's max_sequence_length
