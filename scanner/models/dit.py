"""Class-conditional DiT (``DiTPipeline``, Peebles and Xie): a transformer on 2x2 patches of the
latents, conditioned on a class label through adaLN-zero, usually with learned variance (its
output then has twice the latent channels; the first half is epsilon, what the pipeline keeps).

A class-conditional model is audited as Carlini et al. audit their class-conditional CIFAR-10
models: its class names stand for prompts (every class when none are given), many seeds each,
and every generation is matched against the training set (``scanner.match``), since a clique
threshold calibrated on null prompts has no null class to calibrate on. The loss attack runs on
the denoiser conditioned on an item's class: its caption in a labelled set (``mia eval``: an image
folder of a class-labelled data set captions each image with its class name), in a scan the class
whose generations reproduced it. The attacks that work through a prompt's text are refused: the
adapter offers a label, not text.

Classes are named by ``id2label`` in ``model_index.json`` (the pipeline's ``labels``, where an
entry may hold several comma-separated names), or by their number when it has none. Guidance is
the pipeline's: against the null class 1000, so the label table has at least 1001 rows."""

from __future__ import annotations

from typing import Sequence

from scanner.errors import MemscanError
from scanner.models.base import DENOISE, LABEL, SAMPLE, FamilyDefaults
from scanner.models.diffusers_t2i import DiffusersT2I

# the loss's noise levels, steps and seeds per class: measured on the demo world's DiT (docs/MEASUREMENTS.md); at
# released size the pipeline's guidance 4.0 and the steps of DiT's own sampling (250 DDPM steps; 50 with DDIM)
DEMO_SIZED = FamilyDefaults(50, 4.0, (100, 200, 300), "measured here on the demo world's DiT (32 px; docs/MEASUREMENTS.md)",
                            samples_per_prompt=64)
RELEASED = FamilyDefaults(50, 4.0, (100, 200, 300),
                          "steps: DDIM's 50; guidance: DiTPipeline's 4.0; loss noise levels: the demo's, not measured above "
                          "32 px; seeds per class: 512", samples_per_prompt=512)


class DiT(DiffusersT2I):
    kind = "DiTPipeline"
    denoiser_name = "transformer"
    capabilities = frozenset({SAMPLE, DENOISE, LABEL})
    demo_sized, released = DEMO_SIZED, RELEASED

    def native_resolution(self) -> int:
        """The transformer's latent size times the autoencoder's downsampling (a DiTPipeline keeps no
        ``vae_scale_factor``)."""
        return int(self.denoiser.config.sample_size * 2 ** (len(self.pipeline.vae.config.block_out_channels) - 1))

    @property
    def class_names(self) -> list[str]:
        """Every class by one name, in class order: ``id2label``'s first name, else the number."""
        by_id: dict[int, str] = {}
        for name, class_id in self.pipeline.labels.items():
            by_id.setdefault(class_id, name)
        return [by_id[i] for i in sorted(by_id)] or [str(i) for i in range(self.denoiser.config.num_embeds_ada_norm)]

    def names_class(self, label: str) -> bool:
        """A name ``id2label`` gives, or the number of a class it names (of any row of the label table without it)."""
        numbers = set(self.pipeline.labels.values()) or range(self.denoiser.config.num_embeds_ada_norm)
        return label in self.pipeline.labels or (label.isdigit() and int(label) in numbers)

    def class_ids(self, labels: Sequence[str]) -> list[int]:
        """Each label's class: a name ``id2label`` gives, or a class number; anything else is one line."""
        for label in labels:
            if not self.names_class(label):
                names = self.class_names
                raise MemscanError(f"{self.model_ref}: class label {label!r} is not one of this {self.kind}'s {len(names)} "
                                   f"classes ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
        return [self.pipeline.labels[label] if label in self.pipeline.labels else int(label) for label in labels]

    def prompt_keywords(self, prompts: Sequence[str]) -> dict:
        """The prompts are class labels: the pipeline takes their numbers (and draws at its own size)."""
        return {"class_labels": self.class_ids(prompts)}

    def encode_condition(self, prompts: Sequence[str]):
        """The labels' class numbers, as the pipeline hands them to the transformer."""
        import torch

        return torch.tensor(self.class_ids(prompts), device=self.device)

    def predict(self, model_input, timestep, condition):
        import torch

        with torch.inference_mode():
            output = self.denoiser(model_input.to(self.dtype), timestep=self._timesteps(timestep, len(model_input)),
                                   class_labels=condition).sample
        learned_variance = self.denoiser.config.out_channels == 2 * model_input.shape[1]
        return output.chunk(2, dim=1)[0] if learned_variance else output
