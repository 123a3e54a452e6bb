"""Flux (``FluxPipeline``): a transformer of double-stream then single-stream blocks trained by flow
matching (``DiffusersT2I`` makes its loss: ``x_t = (1 - sigma) x0 + sigma n`` by the flow
scheduler's ``scale_noise``, target ``n - x0``). The condition is the CLIP encoder's pooled output
and the T5 encoder's states; the transformer sees the latents packed 2x2 into tokens, with
(0, row, column) position ids, and the timestep as sigma.

memscan's denoiser interface stays in latent shape: ``predict`` packs its input and unpacks the
velocity as the pipeline does, so losses, CLiD and the Wen and Asthana detectors see a Flux
model as they see SD3. Two things differ between Flux models and are read from the folder:
whether the transformer embeds a guidance scale (FLUX.1 dev, guidance-distilled: the scale is an
input of every prediction) or not (FLUX.1 schnell, or a model trained with caption dropout:
guidance, when asked for, is true classifier-free guidance against the empty prompt); and how
many T5 tokens a prompt is padded to (the T5 tokenizer's ``model_max_length``, at most the
pipeline's 512). The resolution is the autoencoder's ``sample_size`` (1024 in FLUX.1): the
transformer itself has no fixed size. The T5 encoder is not optional in Flux: a folder without
it is refused with one line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Sequence

import numpy as np

from scanner.errors import input_error
from scanner.models.base import FamilyDefaults
from scanner.models.diffusers_t2i import LDM_AUTOENCODER, DiffusersT2I

DEMO_SIZED = FamilyDefaults(20, 5.0, (700, 800, 900), "measured here on the demo world's Flux-shaped model "
                                                       "(32 px; docs/MEASUREMENTS.md)")
# FLUX.1 dev (guidance embedded) and FLUX.1 schnell (none): their model cards' steps and guidance
RELEASED_DISTILLED = FamilyDefaults(28, 3.5, (400, 500, 600),
                                    "steps and guidance: FluxPipeline's own defaults (FLUX.1 dev, guidance-distilled); loss "
                                    "noise levels: the middle of the flow, where rectified-flow membership leaks most "
                                    "(arXiv 2603.13421), not measured here at 1024 px")
RELEASED_UNGUIDED = FamilyDefaults(4, 1.0, (400, 500, 600),
                                   "steps and guidance: FLUX.1 schnell's model card (4 steps, no guidance); loss noise "
                                   "levels: the middle of the flow (arXiv 2603.13421), not measured here at 1024 px")
PIPELINE_T5_TOKENS = 512  # FluxPipeline's largest max_sequence_length
T5 = ("text_encoder_2", "tokenizer_2")


@dataclass(frozen=True)
class FluxCondition:
    prompt_embeds: Any   # [N, T5 tokens, T5 width]
    pooled: Any          # [N, CLIP width]
    text_ids: Any        # [T5 tokens, 3]: zeros, as the pipeline makes them


class Flux(DiffusersT2I):
    kind = "FluxPipeline"
    single_file_optional = MappingProxyType({"text_encoder": ("text_encoders.clip_l.",), "text_encoder_2": ("text_encoders.t5xxl.",),
                                             "vae": LDM_AUTOENCODER})
    denoiser_name = "transformer"

    demo_sized = DEMO_SIZED

    @property
    def released(self) -> FamilyDefaults:
        return RELEASED_DISTILLED if self.guidance_embedded else RELEASED_UNGUIDED

    @property
    def guidance_embedded(self) -> bool:
        return bool(self.denoiser.config.guidance_embeds)

    @property
    def t5_tokens(self) -> int:
        return min(int(self.pipeline.tokenizer_2.model_max_length), PIPELINE_T5_TOKENS)

    def native_resolution(self) -> int:
        return int(self.pipeline.vae.config.sample_size)

    def latent_shape(self) -> tuple[int, int, int]:
        """Unpacked latents, as ``FluxPipeline.prepare_latents`` draws them before packing."""
        side = 2 * (self.resolution // (self.pipeline.vae_scale_factor * 2))
        return self.denoiser.config.in_channels // 4, side, side

    @classmethod
    def pipeline_keywords(cls, folder: Path | None) -> dict:
        """Flux cannot run without its T5 encoder: one line naming the folder, before diffusers loads."""
        declared = cls.declared_components(folder)
        if not declared:
            return {}
        missing = [name for name in T5 if declared.get(name, [None])[0] is None or not (folder / name).is_dir()]
        if missing:
            raise input_error(folder, f"a Flux model needs its T5 encoder, but {' and '.join(missing)} "
                                      f"{'is' if len(missing) == 1 else 'are'} missing")
        return {}

    def check_shape(self) -> None:
        config = self.denoiser.config
        clip_width = self.pipeline.text_encoder.config.hidden_size
        t5_width = self.pipeline.text_encoder_2.config.d_model
        if (config.pooled_projection_dim, config.joint_attention_dim) != (clip_width, t5_width):
            raise input_error(self.model_ref, f"the transformer takes a pooled projection {config.pooled_projection_dim} "
                                              f"wide and text states {config.joint_attention_dim} wide, but the CLIP "
                                              f"encoder gives {clip_width} and the T5 encoder {t5_width}")

    def set_sampling_timesteps(self, scheduler, num_inference_steps: int) -> None:
        """As FluxPipeline sets its scheduler: sigmas from 1 to 1/steps, shifted by ``mu`` for this
        many latent tokens (its resolution-dependent shift)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = scheduler.config
        tokens = (self.latent_shape()[1] // 2) ** 2
        mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        sigmas = None if config.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        scheduler.set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu)

    def guidance_keywords(self, guidance_scale: float, n: int) -> dict:
        """A guidance-distilled transformer takes the scale as an input; any other gets true
        classifier-free guidance against the empty prompt (none at a scale of 1 or less)."""
        keywords = {"max_sequence_length": self.t5_tokens}
        if self.guidance_embedded:
            return keywords | {"guidance_scale": guidance_scale}
        if guidance_scale <= 1.0:
            return keywords
        return keywords | {"true_cfg_scale": guidance_scale, "negative_prompt": [""] * n}

    def encode_condition(self, prompts: Sequence[str]) -> FluxCondition:
        import torch

        with torch.inference_mode():  # the pipeline's own prompt encoding
            embeds, pooled, text_ids = self.pipeline.encode_prompt(list(prompts), None, device=self.device,
                                                                   num_images_per_prompt=1,
                                                                   max_sequence_length=self.t5_tokens)
        return FluxCondition(embeds, pooled, text_ids)

    def text_features(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        condition = self.encode_condition(prompts)
        return torch.cat([condition.prompt_embeds.flatten(1), condition.pooled], dim=1).float().cpu().numpy()

    def predict(self, model_input, timestep, condition: FluxCondition):
        """The velocity at ``timestep`` (training scale, sigma x 1000), in latent shape. A
        guidance-distilled transformer predicts at the family's default guidance, as its
        training scripts train it."""
        import torch

        n, channels, height, width = model_input.shape
        pixels = height * self.pipeline.vae_scale_factor
        packed = self.pipeline._pack_latents(model_input.to(self.dtype), n, channels, height, width)
        image_ids = self.pipeline._prepare_latent_image_ids(n, height // 2, width // 2, self.device, self.dtype)
        guidance = torch.full((n,), self.defaults.guidance_scale, device=self.device, dtype=torch.float32) \
            if self.guidance_embedded else None
        with torch.inference_mode():
            velocity = self.denoiser(hidden_states=packed, timestep=self._timesteps(timestep, n).to(self.dtype) / 1000,
                                     guidance=guidance, pooled_projections=condition.pooled,
                                     encoder_hidden_states=condition.prompt_embeds, txt_ids=condition.text_ids,
                                     img_ids=image_ids).sample
        return self.pipeline._unpack_latents(velocity, pixels, pixels, self.pipeline.vae_scale_factor)
