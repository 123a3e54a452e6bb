"""Adapter for diffusers text-to-image pipelines (the reference: ``StableDiffusionPipeline``).

Loads a local pipeline folder (``model_index.json`` + component folders) with
``from_pretrained(path, local_files_only=True, use_safetensors=True)``, or a single
``.safetensors`` checkpoint with ``from_single_file(path, config=LOCAL_FOLDER)``. Never the
network, and never a pickle unless the user passes ``allow_pickle`` (``--allow-pickle``).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from scanner.errors import MemscanError, input_error
from scanner.models import force_offline, load_failure, refuse_pickles

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt")


def hash_files(paths: Sequence[Path], root: Path) -> str:
    """sha256 over the named files' relative paths and bytes: the model's identity in evidence."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def pick_device(device: str | None) -> str:
    """``device`` (``--device``) when this machine has it, else cuda when present, else cpu: a
    mistyped or absent device is one line before any weights load."""
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise MemscanError(f"--device {device}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise MemscanError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPUs")
    return device


class DiffusersT2I:
    """A diffusers text-to-image pipeline behind memscan's ``TextToImageModel`` interface."""

    def __init__(self, pipeline, model_ref: str, model_hash: str):
        self.pipeline = pipeline
        self.model_ref = model_ref
        self.model_hash = model_hash
        self.device = pipeline.device
        self.dtype = pipeline.unet.dtype
        self.precision = f"{self.device.type}-{str(self.dtype).removeprefix('torch.')}"
        self.resolution = int(pipeline.unet.config.sample_size * pipeline.vae_scale_factor)
        self.scheduler_name = type(pipeline.scheduler).__name__
        self.end_of_text = pipeline.tokenizer.eos_token
        pipeline.set_progress_bar_config(disable=True)
        self._few_step_pipeline = None

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, single_file_config: str | Path | None = None,
             allow_pickle: bool = False) -> "DiffusersT2I":
        """Load a pipeline folder, or a single ``.safetensors`` file with a local config folder;
        pickled weight files in either are refused unless ``allow_pickle``."""
        force_offline()
        path = Path(path)
        if not path.exists():
            raise input_error(path, "no such file or folder; expected a diffusers pipeline folder "
                                    "(with model_index.json) or a single .safetensors checkpoint")
        import torch
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        for library in (diffusers_logging, transformers_logging):
            library.set_verbosity_error()
            library.disable_progress_bar()
        device = pick_device(device)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise input_error(path, "not a diffusers pipeline folder: model_index.json is missing")
            refuse_pickles((p for p in path.rglob("*") if p.is_file()), allow_pickle)
            files = [p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
            loader = lambda: StableDiffusionPipeline.from_pretrained(  # noqa: E731
                path, torch_dtype=dtype, local_files_only=True, use_safetensors=None if allow_pickle else True,
                safety_checker=None, requires_safety_checker=False)
            root = path
        else:
            if path.suffix != ".safetensors":
                raise input_error(path, "single-file checkpoints must be .safetensors (pickled .ckpt files are never loaded)")
            if single_file_config is None or not (Path(single_file_config) / "model_index.json").is_file():
                raise input_error(path, "a single-file checkpoint needs --single-file-config, a local pipeline "
                                        "folder with model_index.json that describes its architecture")
            refuse_pickles((p for p in Path(single_file_config).rglob("*") if p.is_file()), allow_pickle)
            files = [path]
            loader = lambda: StableDiffusionPipeline.from_single_file(  # noqa: E731
                str(path), config=str(single_file_config), torch_dtype=dtype, local_files_only=True,
                safety_checker=None, requires_safety_checker=False)
            root = path.parent
        try:
            with warnings.catch_warnings():
                # newer diffusers renames torch_dtype to dtype (with a warning); older releases know only torch_dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipeline = loader()
        except Exception as error:  # diffusers raises many kinds; the user needs the first line
            raise input_error(path, f"cannot load as a StableDiffusionPipeline: {load_failure(error)}") from None
        pipeline = pipeline.to(device)
        return cls(pipeline, model_ref=str(path.resolve()), model_hash=hash_files(files, root))

    def _generators(self, seeds: Sequence[int]):
        import torch

        # CPU generators: the initial noise of a seed is the same on every device and in every batch
        return [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]

    def initial_noise(self, seeds: Sequence[int]):
        """x_T for each seed, exactly as ``generate`` starts from it."""
        import torch

        config = self.pipeline.unet.config
        shape = (config.in_channels, config.sample_size, config.sample_size)
        noise = torch.stack([torch.randn(shape, generator=g) for g in self._generators(seeds)])
        return noise.to(self.device, self.dtype) * self.pipeline.scheduler.init_noise_sigma

    def sampling_timesteps(self, num_inference_steps: int) -> list[int]:
        scheduler = self.pipeline.scheduler
        scheduler.set_timesteps(num_inference_steps)
        return [int(t) for t in scheduler.timesteps]

    def few_step_pipeline(self):
        """The same modules with DPM-Solver++ (2M, trailing timesteps): at a handful of steps it
        lands much nearer the image the default sampler draws from a seed than DDIM does (on the
        demo, tiled l2 0.033 from the 20-step DDIM image at 5 steps, against 0.053 for 5-step DDIM)."""
        if self._few_step_pipeline is None:
            from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

            solver = DPMSolverMultistepScheduler.from_config(self.pipeline.scheduler.config, algorithm_type="dpmsolver++",
                                                             solver_order=2, timestep_spacing="trailing")
            self._few_step_pipeline = StableDiffusionPipeline(**{**self.pipeline.components, "scheduler": solver},
                                                               requires_safety_checker=False)
            self._few_step_pipeline.set_progress_bar_config(disable=True)
        return self._few_step_pipeline

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 25,
                 guidance_scale: float = 5.0, few_step: bool = False) -> np.ndarray:
        import torch

        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        pipeline = self.few_step_pipeline() if few_step else self.pipeline
        with torch.inference_mode():
            output = pipeline(
                prompt=list(prompts), generator=self._generators(seeds), num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, height=self.resolution, width=self.resolution, output_type="np")
        return np.asarray(output.images, dtype=np.float32)

    def encode_text(self, prompts: Sequence[str]):
        import torch

        tokenizer = self.pipeline.tokenizer
        ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(self.device)
        with torch.inference_mode():
            return self.pipeline.text_encoder(ids)[0]

    def encode_image(self, images: np.ndarray):
        import torch

        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device, self.dtype) / 127.5 - 1.0
        vae = self.pipeline.vae
        with torch.inference_mode():
            return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor

    def add_noise(self, x0, noise, timesteps):
        return self.pipeline.scheduler.add_noise(x0, noise, timesteps)

    def predict_noise(self, x_t, timesteps, condition):
        import torch

        with torch.inference_mode():
            return self.pipeline.unet(x_t, timesteps, encoder_hidden_states=condition).sample
