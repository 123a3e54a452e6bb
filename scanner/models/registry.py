"""The model kinds memscan can audit, chosen from ``model_index.json``'s ``_class_name``
(override: ``--model-kind``). Adding a family is one adapter file and one entry here."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from scanner.errors import input_error


@dataclass(frozen=True)
class ModelKind:
    name: str                     # the diffusers pipeline class that ``_class_name`` names
    adapter: str                  # "module:Class"; the class says what it offers (``capabilities``)
    summary: str

    def adapter_class(self):
        module, _, name = self.adapter.partition(":")
        return getattr(importlib.import_module(module), name)


KINDS = {kind.name: kind for kind in (
    ModelKind("StableDiffusionPipeline", "scanner.models.stable_diffusion:StableDiffusion",
              "Stable Diffusion 1.x and 2.x: one CLIP text encoder, epsilon or v-prediction"),
    ModelKind("StableDiffusionXLPipeline", "scanner.models.stable_diffusion_xl:StableDiffusionXL",
              "SDXL: two CLIP text encoders, pooled embedding and size ids"),
    ModelKind("StableDiffusion3Pipeline", "scanner.models.stable_diffusion_3:StableDiffusion3",
              "SD3: MM-DiT transformer, flow matching, two CLIP encoders and an optional T5"),
    ModelKind("FluxPipeline", "scanner.models.flux:Flux",
              "Flux: double- and single-stream transformer on packed latents, flow matching, CLIP pooled and T5"),
    ModelKind("PixArtAlphaPipeline", "scanner.models.pixart:PixArtAlpha",
              "PixArt-alpha: DiT with cross-attention to T5 (120 tokens), learned variance, DDPM-trained"),
    ModelKind("PixArtSigmaPipeline", "scanner.models.pixart:PixArtSigma",
              "PixArt-sigma: as PixArt-alpha, with 300 T5 tokens"),
    ModelKind("DiTPipeline", "scanner.models.dit:DiT",
              "class-conditional DiT: class labels stand for prompts, every generation matched; learned variance"),
    ModelKind("DDPMPipeline", "scanner.models.unconditional:DDPMUnconditional",
              "unconditional pixel-space DDPM (Carlini et al.'s CIFAR-10 setting): no prompt, every generation matched"),
    ModelKind("DDIMPipeline", "scanner.models.unconditional:UnconditionalDiffusion",
              "unconditional pixel-space diffusion sampled with DDIM: no prompt, every generation matched"),
)}


def supported() -> str:
    return ", ".join(KINDS)


def declared_class(path: Path, single_file_config: str | Path | None) -> str | None:
    """``_class_name`` of the pipeline folder (or of a single file's config folder), when readable."""
    folder = path if path.is_dir() else Path(single_file_config) if single_file_config else None
    index = folder / "model_index.json" if folder else None
    if index is None or not index.is_file():
        return None
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise input_error(index, "not a JSON object with a _class_name") from None
    return name if isinstance(name, str) else None


def resolve_kind(path: str | Path, single_file_config: str | Path | None = None, kind: str | None = None) -> ModelKind:
    """The kind ``--model-kind`` names, else the one the folder declares, else Stable Diffusion
    (the loader then says what is missing)."""
    path = Path(path)
    if kind:
        if kind not in KINDS:
            raise input_error(path, f"--model-kind {kind}: not a kind memscan can audit; supported: {supported()}")
        return KINDS[kind]
    name = declared_class(path, single_file_config) if path.exists() else None
    if name is None:
        return KINDS["StableDiffusionPipeline"]
    if name not in KINDS:
        raise input_error(path, f"a {name} is not a kind memscan can audit; supported: {supported()}")
    return KINDS[name]


def load_model(path: str | Path, kind: str | None = None, device: str | None = None,
               single_file_config: str | Path | None = None, allow_pickle: bool = False, loras: tuple = ()):
    """Load a model with the adapter of its kind, with its LoRAs (``scanner.models.lora.Lora``)."""
    adapter = resolve_kind(path, single_file_config, kind).adapter_class()
    return adapter.load(path, device=device, single_file_config=single_file_config, allow_pickle=allow_pickle,
                        loras=tuple(loras))
