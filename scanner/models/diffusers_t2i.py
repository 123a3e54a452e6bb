"""What the diffusers adapters share: loading, hashing, sampling, and the denoiser's training loss.

Loads a local pipeline folder (``model_index.json`` + component folders) with
``from_pretrained(path, local_files_only=True, use_safetensors=True)``, or a single
``.safetensors`` checkpoint with ``from_single_file(path, config=LOCAL_FOLDER)``. Never the
network, and never a pickle unless the user passes ``allow_pickle`` (``--allow-pickle``).

A family adapter (``stable_diffusion.py``, ``stable_diffusion_xl.py``, ``stable_diffusion_3.py``,
``flux.py``, ``pixart.py``, ``unconditional.py``) subclasses ``DiffusersT2I`` once and says what
differs: its pipeline class, its denoiser (a UNet or a transformer), its defaults, how a prompt
becomes a condition, and how the denoiser is called with it (Flux packs latents into tokens there).
The schedulers own the forward process. For a DDPM-style family the training loss noises with a
``DDPMScheduler`` built from the pipeline's own scheduler config and takes its target from
``prediction_type`` (epsilon, or v via ``get_velocity``). For a flow-matching family (a
``FlowMatch*`` sampling scheduler) it noises with the flow scheduler's ``scale_noise``,
``x_t = (1 - sigma) x0 + sigma n``, and the target is the velocity ``n - x0``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Sequence

import numpy as np

from scanner.errors import MemscanError, input_error
from scanner.models import force_offline, load_failure, refuse_pickles
from scanner.models.base import DENOISE, SAMPLE, SMALL_DEMO_PIXELS, TEXT, FamilyDefaults
from scanner.models.lora import Lora, apply_loras, check_lora_files, named_with, with_loras
from scanner.models.reference import check_reference, check_same_text_encoders, guided_denoiser, guided_identity

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt")
LDM_AUTOENCODER = ("first_stage_model.", "vae.")  # an autoencoder's key prefixes in an original-layout file (diffusers' LDM_VAE_KEYS)


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


FLOW = "flow"  # prediction_type of a flow-matching family: the velocity n - x0


class DiffusersT2I:
    """A diffusers pipeline of a latent diffusion family behind memscan's sampler and denoiser
    interfaces. Subclasses set ``kind`` (the pipeline class name) and ``denoiser_name`` and
    implement ``encode_condition``, ``text_features`` and ``predict``."""

    kind = ""
    denoiser_name = "unet"  # the pipeline component that denoises ("transformer" for a DiT family)
    capabilities = frozenset({SAMPLE, DENOISE, TEXT})
    upcast_vae = False  # encode in float32 when the VAE asks for it in fp16 (SDXL's force_upcast)
    demo_sized: FamilyDefaults   # each adapter's defaults at the demo world's size, and at released sizes
    released: FamilyDefaults
    failure_reasons = MappingProxyType({})  # a local model's failed image is non-finite pixels, nothing more to say

    def __init__(self, pipeline, model_ref: str, model_hash: str, loras: tuple[Lora, ...] = ()):
        self.pipeline = pipeline
        self.sampling_pipeline = pipeline  # what generate runs; model guidance swaps its denoiser (guided_by)
        self.loras = loras
        self.model_ref = named_with(model_ref, loras)
        self.model_hash = with_loras(model_hash, loras)
        self.device = pipeline.device
        self.dtype = self.denoiser.dtype
        self.precision = f"{self.device.type}-{str(self.dtype).removeprefix('torch.')}"
        self.resolution = self.native_resolution()
        self.scheduler_name = type(pipeline.scheduler).__name__
        self.prediction_type = FLOW if self.scheduler_name.startswith("FlowMatch") else \
            pipeline.scheduler.config.get("prediction_type", "epsilon")
        tokenizer = getattr(pipeline, "tokenizer", None)  # none in an unconditional pipeline
        self.end_of_text = tokenizer.eos_token if tokenizer is not None else ""
        pipeline.set_progress_bar_config(disable=True)
        self._few_step_pipeline = None
        self.defaults = self.defaults_for(self.resolution)
        self.check_shape()

    @property
    def denoiser(self):
        """The pipeline's denoising network (its UNet or transformer)."""
        return getattr(self.pipeline, self.denoiser_name)

    def native_resolution(self) -> int:
        """The size the model samples at: its denoiser's sample size in pixels (1: a pixel-space model)."""
        return int(self.denoiser.config.sample_size * getattr(self.pipeline, "vae_scale_factor", 1))

    def latent_shape(self) -> tuple[int, int, int]:
        """One seed's initial noise (channels, height, width), as the pipeline draws it."""
        config = self.denoiser.config
        return config.in_channels, config.sample_size, config.sample_size

    @staticmethod
    def declared_components(folder: Path | None) -> dict:
        """``model_index.json`` of a pipeline folder (or a single file's config folder), {} when there is none."""
        index = folder / "model_index.json" if folder else None
        return json.loads(index.read_text(encoding="utf-8")) if index is not None and index.is_file() else {}

    @classmethod
    def pipeline_keywords(cls, folder: Path | None) -> dict:
        """Components the family's pipeline must be told about when loading (``folder``: the
        pipeline folder, or a single file's config folder)."""
        return {}

    # components a released single file of the family may leave out, by the key prefixes they carry
    # when it holds them (SD3's ``sd3_medium.safetensors`` holds its MMDiT and autoencoder, Flux's the transformer alone)
    single_file_optional: MappingProxyType = MappingProxyType({})

    @classmethod
    def components_from_config(cls, path: Path, folder: Path, dtype, allow_pickle: bool = False) -> dict:
        """The components a single file lacks, loaded from its config folder. diffusers looks for a
        missing text encoder under diffusers' weight file name, which a transformers folder never
        has, and converts a missing autoencoder from the file anyway, so without this an SD3 or
        Flux file as released fails to load."""
        import diffusers
        import transformers
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as checkpoint:
            keys = list(checkpoint.keys())
        declared = cls.declared_components(folder)
        libraries = {"transformers": transformers, "diffusers": diffusers}
        components = {}
        for name, prefixes in cls.single_file_optional.items():
            library, class_name = declared.get(name, [None, None])
            if library not in libraries or any(key.startswith(prefixes) for key in keys):
                continue
            if not (folder / name).is_dir():
                raise input_error(path, f"the file holds no {name} and its config folder {folder} has no {name} folder either")
            components[name] = getattr(libraries[library], class_name).from_pretrained(
                folder / name, torch_dtype=dtype, local_files_only=True, use_safetensors=None if allow_pickle else True)
        return components

    def defaults_for(self, resolution: int) -> FamilyDefaults:
        """The family's steps, guidance and loss timesteps at this resolution: measured on the demo
        world's model of the family at its size, the pipeline's own (or a paper's) above it."""
        return self.demo_sized if resolution <= SMALL_DEMO_PIXELS else self.released

    def check_shape(self) -> None:
        """A family adapter refuses weights of another family (SDXL weights under an SD 1 config)."""

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, single_file_config: str | Path | None = None,
             allow_pickle: bool = False, loras: tuple[Lora, ...] = ()) -> "DiffusersT2I":
        """Load a pipeline folder, or a single ``.safetensors`` file with a local config folder, and
        the LoRAs on it; pickled weight files are refused unless ``allow_pickle``."""
        force_offline()
        path = Path(path)
        if not path.exists():
            raise input_error(path, "no such file or folder; expected a diffusers pipeline folder "
                                    "(with model_index.json) or a single .safetensors checkpoint")
        check_lora_files(loras, allow_pickle)
        import diffusers
        import torch
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        for library in (diffusers_logging, transformers_logging):
            library.set_verbosity_error()
            library.disable_progress_bar()
        pipeline_class = getattr(diffusers, cls.kind)
        extra = cls.pipeline_keywords(path if path.is_dir() else Path(single_file_config) if single_file_config else None)
        device = pick_device(device)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise input_error(path, "not a diffusers pipeline folder: model_index.json is missing")
            refuse_pickles((p for p in path.rglob("*") if p.is_file()), allow_pickle)
            files = [p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
            loader = lambda: pipeline_class.from_pretrained(  # noqa: E731
                path, torch_dtype=dtype, local_files_only=True, use_safetensors=None if allow_pickle else True, **extra)
            root = path
        else:
            if not hasattr(pipeline_class, "from_single_file"):
                raise input_error(path, f"diffusers loads a {cls.kind} from a pipeline folder only (it has no single-file loader)")
            if path.suffix != ".safetensors":
                raise input_error(path, "single-file checkpoints must be .safetensors (pickled .ckpt files are never loaded)")
            if single_file_config is None or not (Path(single_file_config) / "model_index.json").is_file():
                raise input_error(path, "a single-file checkpoint needs --single-file-config, a local pipeline "
                                        "folder with model_index.json that describes its architecture")
            refuse_pickles((p for p in Path(single_file_config).rglob("*") if p.is_file()), allow_pickle)
            files = [path]
            loader = lambda: pipeline_class.from_single_file(  # noqa: E731
                str(path), config=str(single_file_config), torch_dtype=dtype, local_files_only=True, **extra,
                **cls.components_from_config(path, Path(single_file_config), dtype, allow_pickle))
            root = path.parent
        try:
            with warnings.catch_warnings():
                # newer diffusers renames torch_dtype to dtype (with a warning); older releases know only torch_dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipeline = loader()
        except Exception as error:  # diffusers raises many kinds; the user needs the first line
            raise input_error(path, f"cannot load as a {cls.kind}: {load_failure(error)}") from None
        apply_loras(pipeline, loras, cls.kind)
        pipeline = pipeline.to(device)
        return cls(pipeline, model_ref=str(path.resolve()), model_hash=hash_files(files, root), loras=loras)

    def guided_by(self, reference: "DiffusersT2I", weight: float) -> "DiffusersT2I":
        """This model sampled with FineXtract's model guidance from ``reference``
        (``scanner.models.reference``); its denoiser, losses and predictions stay this model's own."""
        check_reference(self, reference)
        check_same_text_encoders(self, reference)
        guided = copy.copy(self)
        guided.sampling_pipeline = type(self.pipeline).from_pipe(
            self.pipeline, **{self.denoiser_name: guided_denoiser(self.denoiser, reference.denoiser, weight)})
        guided.sampling_pipeline.set_progress_bar_config(disable=True)
        guided._few_step_pipeline = None
        guided.model_ref = f"{self.model_ref}, guided from {reference.model_ref} (w={weight:g})"
        guided.model_hash = guided_identity(self.model_hash, reference.model_hash, weight)
        return guided

    # --- sampler -------------------------------------------------------------------------

    def _generators(self, seeds: Sequence[int]):
        import torch

        # CPU generators: the initial noise of a seed is the same on every device and in every batch
        return [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]

    def initial_noise(self, seeds: Sequence[int], num_inference_steps: int):
        """x_T for each seed, exactly as ``generate`` starts from it at this many steps (a scheduler's
        starting scale can depend on the steps: Euler's on "leading" timesteps does)."""
        import torch

        noise = torch.stack([torch.randn(self.latent_shape(), generator=g) for g in self._generators(seeds)])
        # flow-matching schedulers start from unit noise and have no init_noise_sigma
        return noise.to(self.device, self.dtype) * getattr(self._sampling_scheduler(num_inference_steps), "init_noise_sigma", 1.0)

    def few_step_scheduler(self):
        """DPM-Solver++ (2M, trailing timesteps): at a handful of steps it lands much nearer the
        image the default sampler draws from a seed than DDIM does (on the demo, tiled l2 0.033
        from the 20-step DDIM image at 5 steps, against 0.053 for 5-step DDIM). A flow-matching
        family keeps its own Euler solver: a rectified flow is made to be integrated in few
        straight steps, and DPM-Solver++ on flow sigmas would be a second solver to validate."""
        from diffusers import DPMSolverMultistepScheduler

        if self.prediction_type == FLOW:
            return type(self.pipeline.scheduler).from_config(self.pipeline.scheduler.config)
        return DPMSolverMultistepScheduler.from_config(self.pipeline.scheduler.config, algorithm_type="dpmsolver++",
                                                       solver_order=2, timestep_spacing="trailing")

    def few_step_pipeline(self):
        """The same modules with the family's few-step solver (``few_step_scheduler``)."""
        if self._few_step_pipeline is None:
            solver = self.few_step_scheduler()
            self._few_step_pipeline = type(self.pipeline).from_pipe(self.sampling_pipeline, scheduler=solver)
            self._few_step_pipeline.set_progress_bar_config(disable=True)
        return self._few_step_pipeline

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 25,
                 guidance_scale: float = 5.0, few_step: bool = False) -> np.ndarray:
        import torch

        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        pipeline = self.few_step_pipeline() if few_step else self.sampling_pipeline
        with torch.inference_mode():
            output = pipeline(generator=self._generators(seeds), num_inference_steps=num_inference_steps, output_type="np",
                              **self.prompt_keywords(prompts), **self.guidance_keywords(guidance_scale, len(prompts)))
        return np.asarray(output.images, dtype=np.float32)

    def prompt_keywords(self, prompts: Sequence[str]) -> dict:
        """How the pipeline call is told what to draw: the prompts, at the model's own square size."""
        return {"prompt": list(prompts), "height": self.resolution, "width": self.resolution}

    def guidance_keywords(self, guidance_scale: float, n: int) -> dict:
        """How the pipeline call is told the guidance scale (classifier-free guidance against the empty prompt)."""
        return {"guidance_scale": guidance_scale}

    # --- denoiser ------------------------------------------------------------------------

    def encode_image(self, images: np.ndarray):
        import torch

        vae = self.pipeline.vae
        upcast = self.upcast_vae and vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
        dtype = torch.float32 if upcast else vae.dtype
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device, dtype) / 127.5 - 1.0
        if upcast:  # as the SDXL pipeline decodes: its fp16 VAE overflows, so it runs in float32 and goes back
            vae.to(torch.float32)
        try:
            with torch.inference_mode():  # as the pipeline decodes, inverted: SD3 and Flux shift latents too
                latents = (vae.encode(pixels).latent_dist.mean - (vae.config.get("shift_factor") or 0.0)) * vae.config.scaling_factor
        finally:
            if upcast:
                vae.to(torch.float16)
        return latents.to(self.dtype)

    @functools.cached_property
    def training_scheduler(self):
        """The forward process the family was trained with, built once (its noising keeps no
        state between calls). DDPM on the pipeline scheduler's betas and prediction type (what
        diffusers' training scripts load from the same folder); for a flow-matching family its
        flow scheduler unshifted, so that timestep t is sigma = t / 1000 exactly: the shift only
        says which noise levels training draws, not how a level noises."""
        if self.prediction_type == FLOW:
            from diffusers import FlowMatchEulerDiscreteScheduler

            return FlowMatchEulerDiscreteScheduler.from_config(self.pipeline.scheduler.config, shift=1.0,
                                                               use_dynamic_shifting=False)
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.pipeline.scheduler.config)

    def training_loss(self, x0, condition, timesteps, noise):
        scheduler = self.training_scheduler
        if self.prediction_type == FLOW:
            timesteps = timesteps.float().clamp(min=1.0)  # the flow schedule's levels are 1..1000 (sigma 0 is the data)
            x_t = scheduler.scale_noise(x0, timesteps, noise)
            prediction = self.predict(x_t, timesteps, condition)
            return ((prediction.float() - (noise - x0).float()) ** 2).mean(dim=tuple(range(1, x0.dim())))
        x_t = scheduler.add_noise(x0, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = scheduler.get_velocity(x0, noise, timesteps)
        elif self.prediction_type == "sample":
            target = x0
        else:
            raise MemscanError(f"{self.model_ref}: the scheduler's prediction_type {self.prediction_type!r} is not one "
                               "memscan knows (epsilon, v_prediction, sample)")
        prediction = self.predict(x_t, timesteps, condition)
        return ((prediction.float() - target.float()) ** 2).mean(dim=tuple(range(1, x0.dim())))

    def _sampling_scheduler(self, num_inference_steps: int):
        """A fresh copy of the pipeline's scheduler, set to this many steps (schedulers keep a
        step index: a shared one would drift between calls)."""
        scheduler = type(self.pipeline.scheduler).from_config(self.pipeline.scheduler.config)
        self.set_sampling_timesteps(scheduler, num_inference_steps)
        return scheduler

    def set_sampling_timesteps(self, scheduler, num_inference_steps: int) -> None:
        """What the pipeline call does to its scheduler before sampling (Flux also shifts by resolution)."""
        scheduler.set_timesteps(num_inference_steps)

    def sampling_timesteps(self, num_inference_steps: int) -> list[float]:
        return [float(t) for t in self._sampling_scheduler(num_inference_steps).timesteps]

    def first_step_input(self, seeds: Sequence[int], num_inference_steps: int):
        scheduler = self._sampling_scheduler(num_inference_steps)
        x_t = self.initial_noise(seeds, num_inference_steps)
        if not hasattr(scheduler, "scale_model_input"):  # flow-matching schedulers feed x_t as it is
            return x_t
        return scheduler.scale_model_input(x_t, scheduler.timesteps[0])

    def _timesteps(self, timestep, n: int):
        """A scalar or [n] timesteps as the [n] tensor the UNet takes."""
        import torch

        timestep = torch.as_tensor(timestep, device=self.device)
        return timestep.expand(n) if timestep.dim() == 0 else timestep
