"""How a process (the CLI, or a Ray worker) loads the models a configuration names."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanner.config import FeatureConfig, HttpConfig, RayConfig, ScanConfig
from scanner.errors import MemscanError
from scanner.models.lora import Lora, named_with
from scanner.models.http_api import is_url


@dataclass(frozen=True)
class ModelSpec:
    """Enough to load the same text-to-image model in another process: an absolute path, so a
    worker started in another folder finds it too, and whether the user allowed pickled weights,
    so a worker refuses them as the driver does."""

    path: str
    device: str | None = None
    single_file_config: str | None = None
    allow_pickle: bool = False
    kind: str | None = None  # --model-kind; None: the kind model_index.json declares
    loras: tuple[Lora, ...] = ()  # --lora FILE[:SCALE], in the order given
    # sample with model guidance from this reference model (--reference-model, --reference-guidance W)
    guided_from: "ModelSpec | None" = None
    guidance: float = 0.0

    http: HttpConfig = HttpConfig()  # for a model behind an HTTP API (a URL as its path)

    @classmethod
    def of(cls, path: str | Path, device: str | None = None, single_file_config: str | Path | None = None,
           allow_pickle: bool = False, kind: str | None = None, loras: Sequence[str] = (),
           http: HttpConfig | None = None) -> "ModelSpec":
        config = str(Path(single_file_config).resolve()) if single_file_config else None
        where = str(path) if is_url(path) else str(Path(path).resolve())  # a URL is not a local path
        return cls(where, device, config, allow_pickle, kind or None, tuple(Lora.parse(text) for text in loras),
                   http=http or HttpConfig())

    @classmethod
    def for_scan(cls, settings: ScanConfig, allow_pickle: bool = False) -> "ModelSpec":
        """The model a scan samples: its LoRAs, and model guidance from the reference when asked for."""
        from scanner import demo as demo_world

        spec = cls.of(settings.model or demo_world.SD_MODEL, settings.device, settings.single_file_config or None,
                      allow_pickle, settings.model_kind, settings.loras, settings.http)
        if not settings.sampling.reference_guidance:
            return spec
        return dataclasses.replace(spec, guided_from=spec.reference(settings.reference_model, settings.reference_loras),
                                   guidance=settings.sampling.reference_guidance)

    @property
    def model_ref(self) -> str:
        """The ``model_ref`` the loaded model will carry (runs of it are found by it)."""
        return named_with(self.path, self.loras)

    def reference(self, path: str | Path, loras: Sequence[str] = ()) -> "ModelSpec":
        """A reference model loaded as this one is (device, pickles), with its own LoRAs."""
        return ModelSpec.of(path, self.device, allow_pickle=self.allow_pickle, loras=loras)

    def load(self):
        from scanner.models.registry import load_model

        if is_url(self.path):
            from scanner.models.http_api import HttpModel

            if self.loras or self.guided_from:
                raise MemscanError("--lora and --reference-guidance need the model's weights; a model behind an HTTP "
                                   "API can only be sampled as it is served")
            return HttpModel(self.path, self.http)
        model = load_model(self.path, self.kind, device=self.device, single_file_config=self.single_file_config,
                           allow_pickle=self.allow_pickle, loras=self.loras)
        return model.guided_by(self.guided_from.load(), self.guidance) if self.guided_from and self.guidance else model


def load_embedder(features: FeatureConfig):
    """The CLIP that embeds generations: the configured open_clip model, else the demo CLIP;
    None when embeddings are switched off."""
    from scanner import demo as demo_world
    from scanner.models.open_clip_model import OpenClip

    if not features.embeddings:
        return None
    if features.clip_model:
        return OpenClip.load(features.clip_model, pretrained=features.clip_pretrained or None,
                             allow_pickle=features.allow_pickle)
    return OpenClip.load(demo_world.CLIP_MODEL)


@dataclass(frozen=True)
class WorkerModels:
    """What a worker (Ray actor, or this process) holds: the model, the CLIP that embeds images,
    and the reference model the reference attacks compare it with."""

    model: Any
    embedder: Any = None
    reference: Any = None


def load_worker_models(model: ModelSpec, features: FeatureConfig | None, reference: ModelSpec | None = None) -> WorkerModels:
    """A Ray worker's setup: load the models once; no embedder when ``features`` is None."""
    return WorkerModels(model.load(), load_embedder(features) if features is not None else None,
                        reference.load() if reference is not None else None)


def _model_precision(models: WorkerModels, _unit) -> str:
    return models.model.precision


def pool_precision(pool) -> str:
    """The precision a pool's workers compute in (a GPU worker: fp16, whatever the driver has);
    part of every run id whose rows depend on it."""
    return next(iter(pool.imap_unordered(_model_precision, [None])))[1]


def portable(features: FeatureConfig) -> FeatureConfig:
    """Feature settings with absolute paths: Ray workers may start in another folder."""
    if not (features.clip_model and Path(features.clip_model).exists()):
        return features
    return dataclasses.replace(features, clip_model=str(Path(features.clip_model).resolve()),
                               clip_pretrained=str(Path(features.clip_pretrained).resolve()) if features.clip_pretrained else "")


def worker_pool(model: ModelSpec, features: FeatureConfig | None, ray: RayConfig, reference: ModelSpec | None = None):
    """Ray workers that each load the model (and the CLIP, unless ``features`` is None, and the
    reference model, when there is one) once; None when ``ray`` names no cluster (the work then
    runs in this process)."""
    if not ray.address:
        return None
    from scanner.distributed import RayPool

    return RayPool(functools.partial(load_worker_models, model, portable(features) if features else None, reference), ray)


def declared_capabilities(model: str | Path, kind: str | None = None) -> frozenset[str]:
    """What a model offers, known before it loads: from the registry's adapter for its kind, or
    the HTTP model's (a command choosing what to compute before loading anything asks this)."""
    if is_url(model):
        from scanner.models.http_api import HttpModel

        return HttpModel.capabilities
    from scanner.models.registry import resolve_kind

    return resolve_kind(model, kind=kind).adapter_class().capabilities


def attack_models(model: ModelSpec, attacks: Sequence[str], clip: FeatureConfig, ray: RayConfig,
                  reference: ModelSpec | None = None) -> tuple[WorkerModels, Any]:
    """What the membership commands run on: the model (refused, before any work, when it cannot
    run one of ``attacks``), the CLIP the Wu et al. attacks embed with (``clip``) when one of them
    is asked for, the reference model (of the same family) when one is given, and a pool of Ray
    workers holding them when ``ray`` names a cluster."""
    from scanner.mia.attacks import check_attacks, needs_embedder
    from scanner.models.reference import check_reference

    loaded = model.load()
    check_attacks(loaded, attacks, has_reference=reference is not None)
    reference_loaded = reference.load() if reference is not None else None
    if reference_loaded is not None:
        check_reference(loaded, reference_loaded)
    features = clip if needs_embedder(attacks) else None
    models = WorkerModels(loaded, load_embedder(features) if features else None, reference_loaded)
    return models, worker_pool(model, features, ray, reference)
