"""Typed configuration, loadable from TOML; every value has a default that works on the demo.

A TOML file mirrors the dataclasses::

    model = "path/to/pipeline"
    prompts = "prompts.txt"
    db = "runs/scan.duckdb"

    [sampling]
    samples_per_prompt = 32
    num_inference_steps = 20

    [cluster]
    threshold = 0.08

    [ray]
    address = "auto"
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner.errors import MemscanError, input_error
from scanner.mia.attacks import DETECTORS

MAX_SEED = 2**63 - 1  # seeds are stored as DuckDB BIGINT


class SettingError(ValueError, MemscanError):
    """A setting outside its allowed range; ``setting`` names it, so the CLI can name its flag."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting} {problem}")
        self.setting = setting


def require_int(setting: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    """Checked when a setting is parsed, so no plan starts that cannot run or would prove nothing."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(setting, f"must be an integer, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise SettingError(setting, f"must be {allowed}, not {value}")


def require_number(setting: str, value: Any, low: float | None = None, high: float | None = None,
                   low_open: bool = False) -> None:
    """A finite number in [low, high] (``low_open``: in (low, high]); either bound may be absent."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingError(setting, f"must be a finite number, not {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    if below or (high is not None and value > high):
        bounds = ([f"{'>' if low_open else '>='} {low}"] if low is not None else []) + \
                 ([f"<= {high}"] if high is not None else [])
        raise SettingError(setting, f"must be {' and '.join(bounds)}, not {value}")


@dataclass(frozen=True)
class SamplingConfig:
    """How each prompt is sampled. A generation is identified by (prompt, seed, these settings)."""

    # None: the model family's (``FamilyDefaults.samples_per_prompt``): 32 seeds per prompt for a text-to-image family,
    # the whole sample of an unconditional model, whose one "prompt" is the empty one
    samples_per_prompt: int | None = None
    batch_size: int = 32
    # None: the model family's default at its resolution (the adapter's ``defaults``, which say where
    # they come from: 20 and 5.0 measured on the demo-sized models, the pipeline's own for released ones)
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed_base: int = 0
    triage: float = 1.0  # mass-sample only this top fraction of prompts by the memorization detector
    triage_detector: str = "seed_agreement"  # or wen (Wen et al. 2024), norm_align (Asthana and Belagiannis 2026): they rank worse on the demo
    # seeds the detector draws per prompt: with fewer, a prompt that collapses on half its seeds is missed by luck
    # (docs/MEASUREMENTS.md); they cost about 2% of 16 full seeds each
    triage_seeds: int = 4
    # draw no more seeds for a prompt once they cannot change whether it is flagged (same flagged
    # prompts as the full plan, fewer generations to show for each; see scanner/scan.py)
    stop_early: bool = False
    # FineXtract's model guidance from the reference model (ScanConfig.reference_model): each
    # prediction f_ref + w (f_model - f_ref); 0 = plain sampling (scanner/models/reference.py)
    reference_guidance: float = 0.0

    def __post_init__(self) -> None:
        if self.samples_per_prompt is not None:  # zero seeds would report "no candidates" on no evidence
            require_int("samples_per_prompt", self.samples_per_prompt, 1)
        require_int("batch_size", self.batch_size, 1)
        if self.num_inference_steps is not None:
            require_int("num_inference_steps", self.num_inference_steps, 1)
        if self.guidance_scale is not None:
            require_number("guidance_scale", self.guidance_scale)
        require_int("seed_base", self.seed_base, 0, MAX_SEED + 1 - (self.samples_per_prompt or 1))
        require_number("triage", self.triage, 0, 1, low_open=True)
        if self.triage_detector not in DETECTORS:
            raise SettingError("triage_detector", f"must be one of {', '.join(DETECTORS)}, not {self.triage_detector!r}")
        require_int("triage_seeds", self.triage_seeds, 2)  # seed agreement compares two samples
        require_number("reference_guidance", self.reference_guidance, 0)

    def for_model(self, model: Any) -> "SamplingConfig":
        """Seeds, steps and guidance left unset take the model family's defaults for its resolution."""
        defaults = model.defaults
        return dataclasses.replace(
            self, samples_per_prompt=self.samples_per_prompt or defaults.samples_per_prompt,
            num_inference_steps=self.num_inference_steps or defaults.num_inference_steps,
            guidance_scale=defaults.guidance_scale if self.guidance_scale is None else self.guidance_scale)


@dataclass(frozen=True)
class FeatureConfig:
    """What is computed for every generation besides its perceptual hashes."""

    clip_model: str = ""        # open_clip folder or architecture name; "" = the demo CLIP
    clip_pretrained: str = ""   # weights file when clip_model is an architecture name
    embeddings: bool = True     # CLIP image embeddings (FAISS proposes near-duplicate edges from them)
    thumbnail_size: int = 64    # pixel distances are computed on thumbnails no larger than this
    # load pickled weights (.bin, .pt, .ckpt...) in the CLIP folder: a pickle can run code, so only when asked
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        require_int("thumbnail_size", self.thumbnail_size, 8)


@dataclass(frozen=True)
class ClusterConfig:
    """The memorization criterion: among a prompt's generations, a clique of at least
    ``min_clique`` whose pairwise tiled l2 is at most a threshold (Carlini et al. 2023), or with
    ``criterion = "component"`` a connected component of at least ``min_clique`` whose edge
    density is at least ``min_density``.

    The threshold is calibrated on every scan by default (``threshold`` None), one per prompt: the
    scan also samples ``null_prompts`` prompts of its captions' words recombined (with the index's
    training captions when the audit is small: ``calibration.null_donors``). A prompt's threshold
    is ``null_factor`` times the ``null_quantile`` of the nulls' anchored collapse distances (collapse
    distance over anchor, ``calibration.prompt_anchors``) times its own anchor, and never under the
    floor, ``floor_factor`` times the ``floor_quantile`` of the nulls' plain collapse distances
    (scanner/cluster.py: ``calibrate``). With ``colour_centred``, a prompt not flagged so is judged
    again on its generations each centred on its own mean colour, the same rule calibrated on the
    nulls centred, and with ``grey_standardized`` again on them in grey, each standardized to zero mean
    and unit spread, at ``grey_factor`` x ``null_factor`` (``cluster.views``). A fixed ``threshold`` is a constant of the model it was
    tuned on (0.02 on the demo model, and a wrong all-clear on others: docs/CALIBRATION.md)."""

    threshold: float | None = None
    # the anchored criterion (session 17; 0.575 tuned on the demo model alone), with the colour-centred view (session
    # 20): 0.55 in both views is the setting with the largest smallest recall over the nine calibration models of
    # sessions 12 to 19, none over 5% false flags (averaged over draws of 32 nulls), then measured on the tenth,
    # sd-reseeded, trained after it was chosen (docs/CALIBRATION.md, session 20)
    null_factor: float = 0.55
    null_quantile: float = 0.5
    # the floor: prompts collapsing tighter than 0.15 x the nulls' upper quartile of plain collapse distances
    # are flagged whatever their anchor (the session-12 criterion at a stricter factor). It finds what the
    # anchor can hide, memorized prompts reproducing the same image from many captions; 0.15 is the largest
    # that keeps the demo model under 5% with the anchored one (docs/CALIBRATION.md); 0 turns it off
    floor_factor: float = 0.15
    floor_quantile: float = 0.75
    # a prompt not flagged on its generations as drawn is also judged on them centred on their own mean colour, that
    # view calibrated on the nulls in it (scanner/cluster.py: ``views``)
    colour_centred: bool = True
    # ... and then on them in grey, each standardized to zero mean and unit spread (layout only: no hue, no contrast),
    # at grey_factor x null_factor: 0.9 keeps the fourteen calibration models' false flags within the defaults' largest
    # (4.4%) while sdxl's recall goes 0.82 -> 0.89 (chosen on those fourteen, sdxl's misses in view; on a fifteenth
    # trained after, sd-reseeded-e, 8.4% -> 8.8%: docs/CALIBRATION.md, sessions 30 and 31)
    grey_standardized: bool = True
    grey_factor: float = 0.9
    # the core: a prompt's clique flags it only when core_share of its planned generations (16 of 32) also agree, within
    # core_factor x the nulls' median of their collapse distance at that size over anchor, x its anchor (never under
    # its clique threshold). A memorized prompt reproduces its image in most seeds; an ordinary prompt whose model
    # draws a background alike has a tight clique of 5 to 7 and no such core (docs/CALIBRATION.md, session 25); 0 turns it off
    core_share: float = 0.5
    core_factor: float = 0.7
    # a prompt's anchor is taken on the generations of its first anchor_seeds seeds (those a scan stopping early
    # draws for every prompt before it judges any), against the nearest of anchor_prompts other prompts
    anchor_seeds: int = 8
    anchor_prompts: int = 10
    # null prompts sampled beside the audit's, with its seeds; 16 already give the same threshold on
    # the demo within a few percent, 32 make it steady (docs/CALIBRATION.md)
    null_prompts: int = 32
    # 5 of 16 seeds (31%): a model that reproduces an image in a third of its samples has memorized it;
    # 8 of 16 missed 43% of the weaker sd-short's memorized items (docs/CALIBRATION.md). Carlini et al.: 10 of 500.
    # A clique size, not a share: 5 of the default 32 finds more than 10 of 32 (0.90 against 0.58 on sdxl)
    min_clique: int = 5
    tiles: int = 4
    criterion: str = "clique"
    min_density: float = 0.5
    # a prompt with more generations than this gets candidate edges from FAISS (embedding
    # cosine >= min_cosine) and from pHash (Hamming <= max_hamming) instead of all pairs
    all_pairs_limit: int = 64
    min_cosine: float = 0.9
    max_hamming: int = 12
    cross_prompt: bool = True

    def __post_init__(self) -> None:
        if self.criterion not in ("clique", "component"):
            raise SettingError("criterion", f"must be 'clique' or 'component', not {self.criterion!r}")
        require_int("min_clique", self.min_clique, 2)
        require_int("tiles", self.tiles, 1)
        require_number("min_density", self.min_density, 0, 1)
        require_int("all_pairs_limit", self.all_pairs_limit, 0)
        require_number("min_cosine", self.min_cosine, -1, 1)
        require_int("max_hamming", self.max_hamming, 0, 64)
        require_number("null_factor", self.null_factor, 0, 1, low_open=True)
        require_number("grey_factor", self.grey_factor, 0, 2, low_open=True)
        require_number("null_quantile", self.null_quantile, 0, 1, low_open=True)
        require_number("floor_factor", self.floor_factor, 0, 1)
        require_number("floor_quantile", self.floor_quantile, 0, 1, low_open=True)
        require_number("core_share", self.core_share, 0, 1)
        require_number("core_factor", self.core_factor, 0, 2, low_open=True)
        require_int("anchor_seeds", self.anchor_seeds, 1)
        require_int("anchor_prompts", self.anchor_prompts, 1)
        require_int("null_prompts", self.null_prompts, 0)
        if self.threshold is None:
            if self.null_prompts == 0:
                raise SettingError("null_prompts", "must be at least 1 when no fixed threshold is given: "
                                                   "the threshold is calibrated on the null prompts")
        else:
            require_number("threshold", self.threshold, 0, 1, low_open=True)  # a tiled l2 on [0, 1] pixels

    @property
    def seeds_before_judging(self) -> int:
        """Seeds every prompt is sampled to before any verdict: the calibrated criterion's anchor seeds."""
        return self.anchor_seeds if self.threshold is None else 0


@dataclass(frozen=True)
class MatchConfig:
    """How candidates are matched to training items and judged (see scanner/match.py)."""

    # distinct CLIP neighbours proposed per generation beyond the anchor set; as many pixel neighbours. At 10 the
    # nearest training image in tiled l2 (the verdict's own distance) was sometimes not proposed: two near-copies
    # on sd-reseeded-c missed, and a wrong verdict on sd-reseeded whose nearer items were never compared (session 21)
    k: int = 50
    max_hamming: int = 10       # pHash neighbours proposed per generation
    # extracted: the generation is closer to the training item than the item's 50 nearest other distinct
    # training images are on average (its tiled l2 to the item over the item's spacing at most
    # extraction_ratio), and the item is its nearest distinct training image (its tiled l2 at most nearest_margin
    # times the nearest's). Measured on nine calibration
    # models against the identification truth (docs/CALIBRATION.md, session 15): at 1.0 one wrong verdict
    # (sd-short, at 0.94), at 0.9 none on any model; since the criterion flags more (session 17), one on each of
    # sd-64 and sd-short (0.89, 0.79): no ratio separates them (sd-reseeded's, at 0.82, went with deeper retrieval, below)
    extraction_ratio: float = 0.9
    # 1.1 named equally close twins together, and both wrong verdicts of sd-reseeded-b and -d were such twins (at
    # 1.045 and 1.064, on navy: a small dark object the tiled l2 barely sees); at 1.0 only the nearest is named, and
    # no near-copy of the seven models measured is lost (docs/CALIBRATION.md, session 26)
    nearest_margin: float = 1.0
    # ... and the generation is clearly nearer the item than the rest of the training set: its tiled l2
    # to the item at most this fraction of its mean tiled l2 to its anchor_n nearest distinct training
    # images (anchored tiled l2; an image far from everything, such as noise, is at 0.96 to 0.97 of it).
    # Measured with k = 10 (sessions 15-20): at 0.9 one verdict of the unconditional model was wrong (a generation
    # 0.20 from any item, at 0.83), 0.8 changed no verdict of the nine calibration scans. With k = 50 the anchor set
    # holds nearer images, every ratio rises, and 0.8 lost near-copies (sd-textured 0.96 -> 0.85 recall); at 0.9 the
    # twelve scans keep every right verdict they had at k = 10 and lose one wrong one (docs/CALIBRATION.md, session 21)
    anchored_tiled_ratio: float = 0.9
    similar_ratio: float = 1.2  # images that are clearly not copies lie at 1.0 to 1.8 (median 1.14 to 1.47)
    spacing_n: int = 50         # the item's spacing: mean tiled l2 to this many nearest other distinct images
    spacing_search: int = 1000  # distinct CLIP neighbours of the item among which those nearest are found (and spacing_n pixel ones)
    anchor_n: int = 50
    anchor_alpha: float = 0.5
    tiles: int = 4
    keep: int = 5               # matches stored per candidate: the closest distinct items (tiled l2)

    def __post_init__(self) -> None:
        require_int("k", self.k, 1)
        require_int("max_hamming", self.max_hamming, 0, 64)
        require_number("extraction_ratio", self.extraction_ratio, 0, self.similar_ratio, low_open=True)
        require_number("similar_ratio", self.similar_ratio, 0, low_open=True)
        require_int("anchor_n", self.anchor_n, 1)
        require_int("spacing_n", self.spacing_n, 1)
        require_int("spacing_search", self.spacing_search, 1)
        require_number("nearest_margin", self.nearest_margin, 1)
        require_number("anchored_tiled_ratio", self.anchored_tiled_ratio, 0, low_open=True)
        require_number("anchor_alpha", self.anchor_alpha, 0, low_open=True)
        require_int("tiles", self.tiles, 1)
        require_int("keep", self.keep, 1)


@dataclass(frozen=True)
class RayConfig:
    """Where sampling, index embedding and membership scoring run when a Ray cluster does the work
    (see docs/SCALING.md). ``address`` "" runs everything in this process."""

    address: str = ""            # "local" starts a cluster in-process, "auto" joins a running one, or host:port
    workers: int = 0             # 0: one per GPU of the cluster, else one per cpus_per_worker CPUs
    cpus_per_worker: int = 1
    in_flight: int = 2           # units queued per worker, so none idles between units
    max_task_retries: int = 3    # a unit whose worker dies is retried this many times
    flush_rows: int = 4096       # the driver ingests results in transactions of about this many rows
    flush_seconds: float = 2.0   # ... or at least this often

    def __post_init__(self) -> None:
        require_int("workers", self.workers, 0)
        require_int("cpus_per_worker", self.cpus_per_worker, 1)
        require_int("in_flight", self.in_flight, 1)
        require_int("max_task_retries", self.max_task_retries, 0)
        require_int("flush_rows", self.flush_rows, 1)
        require_number("flush_seconds", self.flush_seconds, 0, low_open=True)


HTTP_APIS = ("a1111", "openai")  # scanner/models/http_api.py


@dataclass(frozen=True)
class HttpConfig:
    """How memscan talks to a model behind an HTTP API (``--model http://...``; scanner/models/http_api.py)."""

    api: str = "a1111"               # a1111 (AUTOMATIC1111 / Forge, seeded) or openai (unseeded)
    resolution: int = 512            # the size asked for: the web UIs' usual 512
    in_flight: int = 4               # requests at once
    requests_per_minute: float = 0   # 0: no limit
    timeout_s: float = 300.0
    retries: int = 5                 # on 429, 5xx, timeouts and dropped connections
    backoff_s: float = 1.0           # the first retry's base wait; doubled each retry, with jitter, capped at 60 s
    api_key_file: str = ""           # a file whose first line is the key ("" = MEMSCAN_API_KEY); the key is never stored

    def __post_init__(self) -> None:
        if self.api not in HTTP_APIS:
            raise SettingError("api", f"must be one of {', '.join(HTTP_APIS)}, not {self.api!r}")
        require_int("resolution", self.resolution, 8)
        require_int("in_flight", self.in_flight, 1)
        require_number("requests_per_minute", self.requests_per_minute, 0)
        require_number("timeout_s", self.timeout_s, 0, low_open=True)
        require_int("retries", self.retries, 0)
        require_number("backoff_s", self.backoff_s, 0)


@dataclass(frozen=True)
class ScanConfig:
    model: str = ""
    single_file_config: str = ""  # a local pipeline folder describing a single-file checkpoint
    model_kind: str = ""  # a registered model kind (scanner/models/registry.py); "" = what model_index.json declares
    loras: tuple[str, ...] = ()  # LoRA files on the model, each "FILE" or "FILE:SCALE" (scanner/models/lora.py)
    reference_model: str = ""  # the base of a fine-tune, for model guidance (sampling.reference_guidance)
    reference_loras: tuple[str, ...] = ()  # LoRAs on the reference model, as loras
    prompts: str = ""
    db: str = "runs/scan.duckdb"
    images_dir: str = ""  # "" = beside the database, in <db>.files/
    device: str | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    index: str = ""  # a training-set index (name under indexes/ or folder) to match candidates against
    ray: RayConfig = field(default_factory=RayConfig)
    http: HttpConfig = field(default_factory=HttpConfig)

    def __post_init__(self) -> None:
        from scanner.models.registry import KINDS

        if self.model_kind and self.model_kind not in KINDS:
            raise SettingError("model_kind", f"must be one of {', '.join(KINDS)}, not {self.model_kind!r}")
        for name in ("loras", "reference_loras"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(lora, str) for lora in value):
                raise SettingError(name, f'must be a list of "FILE" or "FILE:SCALE" strings, not {value!r}')
            object.__setattr__(self, name, tuple(value))  # TOML gives a list
        if self.sampling.reference_guidance and not self.reference_model:
            raise SettingError("reference_guidance", "needs a reference model (--reference-model) to guide from")
        if self.sampling.stop_early and self.cluster.criterion != "clique":
            raise SettingError("stop_early", "needs the clique criterion: a component can lose its edge density as seeds are added")

    def check_clique_can_form(self) -> None:
        """A prompted scan whose seeds are fewer than ``min_clique`` could never flag a prompt: an
        all-clear on no evidence. (Checked once the model is known: its family may set the seeds, and
        a model without prompts forms no cliques.)"""
        if self.sampling.samples_per_prompt is not None and self.sampling.samples_per_prompt < self.cluster.min_clique:
            raise SettingError("min_clique", f"must be at most samples_per_prompt ({self.sampling.samples_per_prompt}), "
                                             f"not {self.cluster.min_clique}: no prompt could ever be flagged")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], source: Path, section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        where = f"[{section}] " if section else ""
        raise input_error(source, f"unknown setting {where}{', '.join(unknown)}; known: {', '.join(known)}")
    kwargs = {}
    for name, value in values.items():
        nested = {"sampling": SamplingConfig, "features": FeatureConfig, "cluster": ClusterConfig,
                  "match": MatchConfig, "ray": RayConfig, "http": HttpConfig}.get(name) if cls is ScanConfig else None
        if nested is not None:
            if not isinstance(value, dict):
                raise input_error(source, f"[{name}] must be a table")
            kwargs[name] = _build(nested, value, source, name)
        else:
            _check_text_or_switch(known[name], value, source, section)
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise input_error(source, str(error)) from None


# TOML types of the text and on/off settings (numbers are checked by each class's __post_init__)
_TEXT_OR_SWITCH = {"str": (str, "a string"), "str | None": (str, "a string"), "bool": (bool, "true or false")}


def _check_text_or_switch(setting: dataclasses.Field, value: Any, source: Path, section: str) -> None:
    """A string or boolean setting given another TOML type (``address = 3``, ``embeddings = "yes"``)
    is refused here: nothing downstream would notice before it fails or, worse, runs."""
    expected = _TEXT_OR_SWITCH.get(str(setting.type))
    if expected is not None and not isinstance(value, expected[0]):
        where = f"[{section}] " if section else ""
        raise input_error(source, f"{where}{setting.name} must be {expected[1]}, not {value!r}")


def load_scan_config(path: str | Path) -> ScanConfig:
    """Read a TOML scan configuration; unknown keys are an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "no such configuration file")
    try:
        values = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise input_error(path, f"not valid TOML ({error})") from None
    return _build(ScanConfig, values, path, "")


def override(config: Any, **changes: Any) -> Any:
    """A copy with the given fields replaced; ``None`` means "keep the configured value"."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
