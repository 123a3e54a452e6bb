"""A reference model for auditing a fine-tune (``--reference-model``): its base checkpoint, or any
model of the same family known not to have trained on the data in question.

Two uses. The reference attacks (``loss_ref``, ``clid_ref``) subtract the reference's loss from
the audited model's under the same noise (the offline form of Carlini et al.'s LiRA, with the
base as the reference model): what the fine-tune learned stands out from what the base already
knew. And FineXtract's model guidance (ICML 2025) samples with every denoiser prediction
extrapolated from the reference's towards the audited model's,
``f = f_ref + w (f_audited - f_ref)``, so sampling is drawn towards what the fine-tune changed;
``w = 1`` is the audited model itself. Both predictions read the audited model's text
embeddings, so guidance needs the two text encoders to be the same (true of a LoRA of the UNet,
the common case); memscan refuses otherwise rather than guide with mismatched conditions.
"""

from __future__ import annotations

import hashlib

from scanner.errors import MemscanError


def check_reference(audited, reference) -> None:
    """The reference must share the audited model's family, resolution, latent shape and
    parametrisation: a loss difference across parametrisations means nothing."""
    ours, theirs = describe(audited), describe(reference)
    if ours != theirs:
        raise MemscanError(f"--reference-model {reference.model_ref}: a {theirs}, but the audited model is a {ours}; "
                           "a reference must be of the audited model's family (its base checkpoint)")


def describe(model) -> str:
    return f"{model.kind} at {model.resolution} px predicting {model.prediction_type}"


def check_same_text_encoders(audited, reference) -> None:
    """Guidance feeds both denoisers the audited model's text embeddings: refuse when they differ."""
    import torch

    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        ours, theirs = getattr(audited.pipeline, name, None), getattr(reference.pipeline, name, None)
        if ours is None and theirs is None:
            continue
        adapted = any(name in model.pipeline.get_list_adapters() for model in (audited, reference)
                      if hasattr(model.pipeline, "get_list_adapters"))
        same = ours is not None and theirs is not None and not adapted and all(
            torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
        if not same:
            raise MemscanError(f"--reference-guidance: the audited model's {name} differs from the reference's "
                               f"({reference.model_ref}); model guidance needs the same text encoders (a LoRA of the UNet)")


def guided_identity(audited_hash: str, reference_hash: str, weight: float) -> str:
    return hashlib.sha256(f"{audited_hash}|guided-from|{reference_hash}|{weight!r}".encode()).hexdigest()


def guided_denoiser(audited, reference, weight: float):
    """A torch module computing ``f_ref + w (f_audited - f_ref)`` from two denoisers (UNets or transformers), with
    the audited one's config, so a diffusers pipeline runs it as its own (torch is imported lazily)."""
    import torch

    class Guided(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.audited, self.reference = audited, reference

        @property
        def config(self):
            return self.audited.config

        @property
        def dtype(self):
            return self.audited.dtype

        @property
        def device(self):
            return self.audited.device

        def forward(self, *args, **kwargs):
            kwargs["return_dict"] = False
            ours, theirs = self.audited(*args, **kwargs)[0], self.reference(*args, **kwargs)[0]
            return (theirs + weight * (ours - theirs),)

    return Guided()
