"""The ``memscan`` command: parses flags, calls the stages, prints. No logic of its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from scanner.calibration import criterion_statement, verdict_statement
from scanner.config import SettingError, require_int, require_number
from scanner.errors import MemscanError, input_error
from scanner.models.loading import ModelSpec, load_embedder, portable, worker_pool
from scanner.progress import progress_bar
from scanner.sources import SourceFormat

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audit a text-to-image checkpoint for training data it memorized and can emit.")
console = Console(width=None if sys.stdout.isatty() else 160)  # no wrapped prompts in logs

DEFAULT_DEMO_DB = Path("runs/demo.duckdb")


def _print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    table = Table(title=title)
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row])
    console.print(table)


def _print_findings(store, run_id: str, limit: int = 20) -> None:
    rows = store.query(
        "SELECT rank, cluster_size AS size, n_generations AS of_n, round(mean_distance, 4) AS mean_tiled_l2, "
        "verdict, matched_item, image_of_prompt, round(match_l2, 4) AS match_l2, prompt FROM findings WHERE run_id = ? ORDER BY rank LIMIT ?", [run_id, limit]).to_pylist()
    statement = criterion_statement(store, run_id)
    if rows:
        _print_table(f"Memorization candidates (top {len(rows)})", list(rows[0].keys()), [list(r.values()) for r in rows])
    else:
        console.print(statement.nothing_found)
    for line in statement.lines(found_nothing=not rows):
        console.print(line)
    if (verdicts := verdict_statement(store, run_id)) is not None:
        console.print(verdicts)


def _print_where(db: Path, run_id: str) -> None:
    console.print(f"\nDatabase: {db}  (run {run_id})")
    console.print(f"Query it:  duckdb {db} \"SELECT rank, prompt, cluster_size, verdict FROM findings ORDER BY rank\"")
    console.print(f"       or: memscan sql {db} \"SELECT * FROM findings\"")


RAY_ADDRESS = typer.Option(None, "--ray", help="Run the heavy work on Ray workers: 'local' (a cluster started in this process), 'auto' (a running cluster) or its address.")
RAY_WORKERS = typer.Option(None, help="With --ray: how many workers (default: one per GPU, else one per --ray-cpus-per-worker CPUs).")
RAY_CPUS_PER_WORKER = typer.Option(None, help="With --ray: CPUs (torch threads) per worker (default: 1).")
ENCODING = typer.Option(None, help="Text encoding of prompt, caption and name files and of CSV tables (default: UTF-8, with or without a byte-order mark).")
ALLOW_PICKLE = typer.Option(False, "--allow-pickle", help="Load pickled weights (.bin, .pt, .ckpt...) in model folders. Unpickling can run code: only for files you trust.")
IMAGE_ROOT = typer.Option(None, help="Every image path of a table must resolve under this folder (for a table someone else wrote).")
MODEL_KIND = typer.Option(None, "--model-kind", help="The model's kind, when model_index.json's _class_name should not decide (memscan env lists them).")
REFERENCE_MODEL = typer.Option(None, help="A reference model of the same family, known not to have trained on the data in question (a fine-tune's base): for the reference attacks (loss_ref, clid_ref) and --reference-guidance (default: none).")
REFERENCE_LORA = typer.Option(None, "--reference-lora", help="A LoRA on the reference model, as --lora (default: none).")
HTTP_API = typer.Option(None, help="With an http(s):// --model: a1111 (AUTOMATIC1111 / Forge web UI, seeded) or openai (OpenAI-compatible images API, unseeded); the key comes from MEMSCAN_API_KEY (default: a1111).")
HTTP_RESOLUTION = typer.Option(None, help="With an http(s):// --model: the image size asked for (default: 512).")
LORA = typer.Option(None, "--lora", help="A LoRA on the model: FILE or FILE:SCALE (.safetensors in diffusers' or kohya's format); repeat for several (default: none).")

# settings whose flag is not "--" and the setting's name with dashes
FLAG_OF_SETTING = {"num_inference_steps": "--steps", "guidance_scale": "--guidance", "address": "--ray",
                   "workers": "--ray-workers", "cpus_per_worker": "--ray-cpus-per-worker", "in_flight": "--requests-in-flight",
                   "loras": "--lora", "reference_loras": "--reference-lora"}


def _flag_error(error: ValueError) -> MemscanError:
    """A setting refused while flags were applied, as one line naming the flag that set it."""
    setting = getattr(error, "setting", None)
    if setting is None:
        return MemscanError(f"invalid setting: {error}")
    return MemscanError(f"{FLAG_OF_SETTING.get(setting, '--' + setting.replace('_', '-'))}: {error}")


def _ray_settings(address: Optional[str], workers: Optional[int], cpus_per_worker: Optional[int]):
    from scanner.config import RayConfig, override

    try:
        return override(RayConfig(), address=address, workers=workers, cpus_per_worker=cpus_per_worker)
    except ValueError as error:
        raise _flag_error(error) from None


@app.command()
def demo(
    db: Path = typer.Option(DEFAULT_DEMO_DB, help="DuckDB file to write (created if missing)."),
    samples_per_prompt: int = typer.Option(16, help="Generations per prompt (different seeds): half a scan's default, "
                                                    "enough on the demo model the criterion was tuned on, to keep the demo short."),
    batch_size: int = typer.Option(64, help="Images per sampling batch, across prompts."),
    num_inference_steps: int = typer.Option(20, "--steps", help="DDIM sampling steps."),
    guidance_scale: float = typer.Option(5.0, "--guidance", help="Classifier-free guidance scale."),
    per_bucket: int = typer.Option(15, help="Prompts from each of the x10, x1 and non-member buckets."),
    index_root: Path = typer.Option(Path("indexes"), help="Where the demo training-set index is built (once) and read."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not draw progress bars."),
    finetune: bool = typer.Option(False, "--finetune", help="Audit the demo fine-tune instead: the demo model with a LoRA trained on private items it never saw, against its base."),
) -> None:
    """Scan the bundled demo model on demo prompts and score the findings against the ground truth."""
    if finetune:  # its own database by default, so its report is the fine-tune audit's alone
        _finetune_demo(DEFAULT_DEMO_DB.with_name("demo-finetune.duckdb") if db == DEFAULT_DEMO_DB else db,
                       samples_per_prompt, index_root, no_progress)
        return
    from scanner import demo as demo_world
    from scanner.config import SamplingConfig, ScanConfig
    from scanner.demo.evaluate import score_criterion, score_demo_run
    from scanner.generate import Prompt, check_plan_fits
    from scanner.demo.pipeline import demo_identities, demo_index, demo_membership
    from scanner.models.registry import load_model
    from scanner.report import render_report
    from scanner.scan import run_scan
    from scanner.store import Store

    require_int("--per-bucket", per_bucket, 1)
    items = demo_world.demo_items(per_bucket=per_bucket)
    prompts = [Prompt.from_text(r["caption"], source="demo", source_item_id=r["item_id"]) for r in items]
    try:
        config = ScanConfig(model=str(demo_world.SD_MODEL), prompts="demo", db=str(db), sampling=SamplingConfig(
            samples_per_prompt=samples_per_prompt, batch_size=batch_size, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale))
    except ValueError as error:
        raise _flag_error(error) from None
    console.print(f"Demo: {len(prompts)} prompts x {samples_per_prompt} seeds on {demo_world.SD_MODEL.name}")
    model = load_model(demo_world.SD_MODEL)
    check_plan_fits(config.sampling, model.resolution, config.features.thumbnail_size)
    embedder = load_embedder(config.features)
    training_index = demo_index(embedder, index_root, db.parent)
    with Store(db) as store:
        result = run_scan(store, model, prompts, config, kind="demo", show_progress=not no_progress, embedder=embedder,
                          index=training_index)
        _print_findings(store, result.run_id)
        scores = score_demo_run(store, result.run_id)
        _print_table("Against the ground truth (per duplication bucket)",
                     ["bucket", "prompts", "flagged", "reproduced", "extracted (matched to its own item)"],
                     [[s.bucket, s.prompts, s.flagged, s.reproduced, s.extracted] for s in scores])
        criterion = score_criterion(store, result.run_id)
        console.print(f"Criterion against the per-item truth: {criterion.memorized_flagged} of {criterion.memorized} memorized "
                      f"duplicated items flagged (recall {criterion.recall:.2f}); {criterion.unmemorized_flagged} of "
                      f"{criterion.unmemorized} x1 and non-member prompts whose item is not memorized flagged, "
                      f"{criterion.unmemorized_leaking} of them emitting another member's image (false flags "
                      f"{100 * criterion.false_flag_rate:.0f}%)")
        console.print("Timings: " + ", ".join(f"{k} {v:.1f}{'s' if k.endswith('_s') else ''}" for k, v in result.timings.items()))
        results, names, labels, curve = demo_identities(store, embedder, db.parent)
        _print_idia(results, names, labels, curve, tau=1, per_person=False)
        _print_mia(demo_membership(store, model))
        _print_where(db, result.run_id)
    report_path = Path("reports") / f"{db.stem}.html"
    render_report(db, report_path)
    console.print(f"Report:    {report_path}")


@app.command()
def scan(
    model: Optional[str] = typer.Option(None, help="Diffusers pipeline folder, single .safetensors file, or the URL of a model behind an HTTP API (http://HOST:PORT, with --api) (default: the demo model)."),
    api: Optional[str] = HTTP_API,
    resolution: Optional[int] = HTTP_RESOLUTION,
    requests_in_flight: Optional[int] = typer.Option(None, help="With an http(s):// --model: requests at once (default: 4)."),
    requests_per_minute: Optional[float] = typer.Option(None, help="With an http(s):// --model: at most this many requests a minute (default: 0, no limit)."),
    single_file_config: Optional[Path] = typer.Option(None, help="For a single-file --model: a local pipeline folder with its model_index.json."),
    model_kind: Optional[str] = MODEL_KIND,
    lora: Optional[list[str]] = LORA,
    reference_model: Optional[Path] = REFERENCE_MODEL,
    reference_lora: Optional[list[str]] = REFERENCE_LORA,
    prompts: Path = typer.Option(None, help="Prompts: .txt (one per line), .csv or .parquet (default: the demo captions)."),
    caption_column: str = typer.Option("caption", help="Column holding the prompts in a CSV or Parquet file."),
    encoding: Optional[str] = ENCODING,
    prompts_from_index: Optional[str] = typer.Option(None, help="Sample the most duplicated captions of this index instead of --prompts."),
    top: int = typer.Option(100, help="With --prompts-from-index: how many captions."),
    index: Optional[str] = typer.Option(None, help="Match candidates against this training-set index (name or folder)."),
    index_root: Path = typer.Option(Path("indexes"), help="Folder holding indexes."),
    db: Path = typer.Option(None, help="DuckDB file to write (default: runs/scan.duckdb)."),
    images_dir: Optional[Path] = typer.Option(None, help="Folder for generated images (default: <db>.files beside the database)."),
    config: Optional[Path] = typer.Option(None, help="TOML configuration; flags given here override it."),
    samples_per_prompt: Optional[int] = typer.Option(None, help="Generations per prompt (default: the model family's: 32 for a text-to-image model; an unconditional model's whole sample, 256 on the demo's, 4096 above 64 px)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per sampling batch (default: 32)."),
    num_inference_steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the model family's at its resolution, with its source in the run: 20 on the demo, 50 on a demo-sized SDXL (measured), the pipeline's 50 on a released SD or SDXL)."),
    guidance_scale: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale (default: the model family's at its resolution: 5.0 on the demo, 7.5 on a released SD 1/2, 5.0 on SDXL)."),
    seed_base: Optional[int] = typer.Option(None, help="First seed; prompt i uses seeds base..base+N-1 (default: 0)."),
    triage_fraction: Optional[float] = typer.Option(None, "--triage", help="Mass-sample only this top fraction of prompts by the memorization detector (default: 1, all)."),
    triage_detector: Optional[str] = typer.Option(None, help="Detector that ranks prompts for --triage: seed_agreement, wen or norm_align (default: seed_agreement)."),
    triage_seeds: Optional[int] = typer.Option(None, help="Seeds the triage detector draws per prompt (default: 4)."),
    reference_guidance: Optional[float] = typer.Option(None, help="With --reference-model: FineXtract's model guidance, each prediction f_ref + W (f_model - f_ref), drawing samples towards what a fine-tune learned (default: 0, plain sampling)."),
    stop_early: Optional[bool] = typer.Option(None, "--stop-early/--every-seed", help="Stop drawing seeds for a prompt once they cannot change whether it is flagged: the same flagged prompts, fewer generations each (default: every seed)."),
    threshold: Optional[float] = typer.Option(None, help="A fixed clique edge threshold, tiled l2, instead of the one calibrated on null prompts (default: calibrated)."),
    null_factor: Optional[float] = typer.Option(None, help="A prompt's calibrated threshold over its anchor distance, as a fraction of the null prompts' reference (their collapse distance over anchor) (default: 0.55, chosen on nine calibration models with the colour-centred view, docs/CALIBRATION.md session 20)."),
    null_quantile: Optional[float] = typer.Option(None, help="The null prompts' reference: this quantile of their collapse distance over anchor, robust while fewer than this share of them collapse (default: 0.5, the median)."),
    floor_factor: Optional[float] = typer.Option(None, help="No prompt's threshold is under this fraction of the null prompts' upper quartile collapse distance: it finds memorized prompts the anchor hides; 0 turns it off (default: 0.15)."),
    core_share: Optional[float] = typer.Option(None, help="A prompt's clique flags it only when this share of its planned generations also agree within its core threshold: a memorized image shows in most seeds, an ordinary prompt's chance clique of 5 does not; 0 turns it off (default: 0.5, docs/CALIBRATION.md session 25)."),
    core_factor: Optional[float] = typer.Option(None, help="The core threshold over a prompt's anchor, as a fraction of the null prompts' reference at the core's size (default: 0.7, docs/CALIBRATION.md session 25)."),
    colour_centred: Optional[bool] = typer.Option(None, "--colour-centred/--plain-only", help="Judge a prompt not flagged on its generations as drawn again on them each centred on its own mean colour, calibrated on the null prompts centred: finds a memorized layout redrawn under a background colour that changes from seed to seed (default: colour-centred)."),
    grey_standardized: Optional[bool] = typer.Option(None, "--grey-standardized/--no-grey-standardized", help="Judge a prompt flagged in neither view again on its generations in grey, each standardized to zero mean and unit spread (the layout alone, whatever its hue and contrast), calibrated on the null prompts so (default: on)."),
    grey_factor: Optional[float] = typer.Option(None, help="The grey view's threshold factor over --null-factor (default: 0.9, docs/CALIBRATION.md session 31)."),
    null_prompts: Optional[int] = typer.Option(None, help="Null prompts (the prompts' words, and the index's captions for an audit under 48 prompts, recombined slot by slot) sampled to calibrate the threshold (default: 32)."),
    min_clique: Optional[int] = typer.Option(None, help="Smallest clique that makes a candidate (default: 5)."),
    criterion: Optional[str] = typer.Option(None, help="clique (Carlini) or component (dense components) (default: clique)."),
    clip_model: Optional[str] = typer.Option(None, help="open_clip folder or architecture name for embeddings (default: the demo CLIP)."),
    clip_pretrained: Optional[str] = typer.Option(None, help="Weights file when --clip-model is an architecture name."),
    no_embeddings: bool = typer.Option(False, "--no-embeddings", help="Skip CLIP embeddings (hash proposals only)."),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    allow_pickle: bool = ALLOW_PICKLE,
    ray: Optional[str] = RAY_ADDRESS,
    ray_workers: Optional[int] = RAY_WORKERS,
    ray_cpus_per_worker: Optional[int] = RAY_CPUS_PER_WORKER,
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not draw progress bars."),
) -> None:
    """Sample a model on many prompts and seeds, and find prompts whose generations collapse."""
    from scanner.config import ScanConfig, load_scan_config, override
    from scanner.generate import check_plan_fits
    from scanner.index import TrainingIndex
    from scanner.prompts import scan_prompts
    from scanner.models.base import TEXT
    from scanner.scan import run_scan, unconditional_prompts
    from scanner.store import Store

    settings = load_scan_config(config) if config else ScanConfig(db="runs/scan.duckdb")
    try:
        settings = override(settings, model=model or None,
                            single_file_config=str(single_file_config) if single_file_config else None, model_kind=model_kind,
                            loras=tuple(lora) if lora else None,
                            reference_model=str(reference_model) if reference_model else None,
                            reference_loras=tuple(reference_lora) if reference_lora else None, prompts=str(prompts) if prompts else None,
                            db=str(db) if db else None, images_dir=str(images_dir) if images_dir else None, device=device,
                            index=index,
                            sampling=override(settings.sampling, samples_per_prompt=samples_per_prompt,
                                              batch_size=batch_size, num_inference_steps=num_inference_steps,
                                              guidance_scale=guidance_scale, seed_base=seed_base,
                                              triage=triage_fraction, triage_detector=triage_detector,
                                              triage_seeds=triage_seeds, stop_early=stop_early,
                                              reference_guidance=reference_guidance),
                            features=override(settings.features, clip_model=clip_model, clip_pretrained=clip_pretrained,
                                              embeddings=False if no_embeddings else None, allow_pickle=allow_pickle or None),
                            cluster=override(settings.cluster, threshold=threshold, null_factor=null_factor, null_quantile=null_quantile,
                                             floor_factor=floor_factor, core_share=core_share, core_factor=core_factor,
                                             colour_centred=colour_centred, grey_standardized=grey_standardized,
                                             grey_factor=grey_factor, null_prompts=null_prompts,
                                             min_clique=min_clique, criterion=criterion),
                            ray=override(settings.ray, address=ray, workers=ray_workers, cpus_per_worker=ray_cpus_per_worker),
                            http=override(settings.http, api=api, resolution=resolution, in_flight=requests_in_flight,
                                          requests_per_minute=requests_per_minute))
    except ValueError as error:
        raise _flag_error(error) from None
    prompt_list = scan_prompts(settings.prompts, caption_column, encoding, prompts_from_index, top, index_root)
    model_spec = ModelSpec.for_scan(settings, allow_pickle)
    # the database opens before the models load: a bad --db or --images-dir fails at once
    with Store(settings.db, files_dir=settings.images_dir or None) as store:
        loaded = model_spec.load()
        if TEXT not in loaded.capabilities and not (settings.prompts or prompts_from_index):
            prompt_list = unconditional_prompts(loaded)  # the demo captions are only a default: no prompt was asked for
        check_plan_fits(settings.sampling.for_model(loaded), loaded.resolution, settings.features.thumbnail_size)
        embedder = load_embedder(settings.features)
        training_index = None
        if settings.index:
            if embedder is None:
                raise MemscanError("--index needs CLIP embeddings of the generations; drop --no-embeddings")
            training_index = TrainingIndex.open(settings.index, index_root)
            training_index.check_embedder(embedder)
        pool = worker_pool(model_spec, settings.features, settings.ray)
        try:
            result = run_scan(store, loaded, prompt_list, settings, show_progress=not no_progress, embedder=embedder,
                              index=training_index, pool=pool)
        except SettingError as error:  # checked once the model is known (the family's seeds): named by its flag
            raise _flag_error(error) from None
        if result.resumed:
            console.print(f"Resumed run {result.run_id}: {result.counts['resumed_from']} generations were already stored.")
        if settings.sampling.triage < 1.0:
            console.print(f"Triage ({settings.sampling.triage_detector}) kept {result.counts['prompts_sampled']} of "
                          f"{result.counts['prompts_given']} prompts; every prompt's score: SELECT * FROM mia_scores "
                          f"WHERE attack = '{settings.sampling.triage_detector}_triage'")
        if settings.sampling.stop_early:
            drawn = store.execute("SELECT count(*) FROM generations WHERE run_id = ?", [result.run_id])[0][0]
            console.print(f"Stopped early: {drawn} of {result.counts['planned']} planned generations drawn.")
        _print_findings(store, result.run_id)
        _print_where(Path(settings.db), result.run_id)


index_app = typer.Typer(no_args_is_help=True, help="Build, inspect and query training-set indexes.")
app.add_typer(index_app, name="index")


def _clip_for(clip_model: Optional[str], clip_pretrained: Optional[str], allow_pickle: bool = False):
    from scanner.config import FeatureConfig

    return load_embedder(FeatureConfig(clip_model=clip_model or "", clip_pretrained=clip_pretrained or "",
                                       allow_pickle=allow_pickle))


@index_app.command("build")
def index_build(
    source: Path = typer.Argument(..., help="Image folder with .txt captions, a .parquet/.csv table, or .tar shards."),
    name: str = typer.Option(..., help="Index name: written to ROOT/NAME."),
    root: Path = typer.Option(Path("indexes"), help="Folder holding indexes."),
    append: bool = typer.Option(False, "--append", help="Add the source's new items to an existing index."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index of this name."),
    image_column: str = typer.Option("image_path", help="Column with image paths in a table (absolute, or relative to the table)."),
    caption_column: str = typer.Option("caption", help="Column with captions in a table."),
    image_root: Optional[Path] = IMAGE_ROOT,
    encoding: Optional[str] = ENCODING,
    thumbnail_size: int = typer.Option(64, help="Side of the thumbnails kept for pixel verification."),
    clip_model: Optional[str] = typer.Option(None, help="open_clip folder or architecture name (default: the demo CLIP)."),
    clip_pretrained: Optional[str] = typer.Option(None, help="Weights file when --clip-model is an architecture name."),
    allow_pickle: bool = ALLOW_PICKLE,
    ray: Optional[str] = RAY_ADDRESS,
    ray_workers: Optional[int] = RAY_WORKERS,
    ray_cpus_per_worker: Optional[int] = RAY_CPUS_PER_WORKER,
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not draw progress bars."),
) -> None:
    """Index a training set: CLIP image and caption embeddings, perceptual hashes, thumbnails."""
    import functools

    from scanner.config import FeatureConfig
    from scanner.distributed import RayPool
    from scanner.index import IndexConfig, build_index

    if not source.exists():
        raise input_error(source, "no such source; expected an image folder, a .parquet/.csv table or .tar shards")
    index_config = IndexConfig(thumbnail_size=thumbnail_size)
    features = FeatureConfig(clip_model=clip_model or "", clip_pretrained=clip_pretrained or "", allow_pickle=allow_pickle)
    embedder = load_embedder(features)
    ray_settings = _ray_settings(ray, ray_workers, ray_cpus_per_worker)
    pool = RayPool(functools.partial(load_embedder, portable(features)), ray_settings) if ray_settings.address else None
    with progress_bar("indexing", total=None, enabled=not no_progress, unit="items") as advance:
        manifest = build_index(source, name, embedder, index_config, root=root,
                               append=append, overwrite=overwrite, on_progress=advance, pool=pool,
                               source_format=SourceFormat(image_column, caption_column, encoding, image_root))
    console.print(f"Index {root / name}: {manifest['counts']['items']} items, {manifest['counts']['skipped']} skipped, "
                  f"image index {manifest['image_index']['kind']}, {manifest['build_seconds']}s")
    for skipped in manifest["skipped"][:10]:
        console.print(f"  skipped {skipped['path']}: {skipped['reason']}")


@index_app.command("stats")
def index_stats_command(
    name: str = typer.Argument(..., help="Index name (under --root) or folder."),
    root: Path = typer.Option(Path("indexes"), help="Folder holding indexes."),
    top: int = typer.Option(10, help="How many of the most duplicated captions and images to list."),
) -> None:
    """Counts, caption duplication histogram, most duplicated captions and images."""
    from scanner.index import TrainingIndex, index_stats

    require_int("--top", top, 1)
    stats = index_stats(TrainingIndex.open(name, root), top=top)
    console.print(f"{stats['items']} items, {stats['distinct_captions']} distinct captions, "
                  f"{stats['distinct_images_by_phash']} distinct images by pHash, {stats['skipped']} skipped at build")
    _print_table("Caption duplication histogram", ["copies", "captions"],
                 [[k, v] for k, v in stats["caption_duplication_histogram"].items()])
    _print_table("Most duplicated captions (exact)", ["copies", "caption"], [[n, c] for c, n in stats["top_captions"]])
    _print_table("Most duplicated captions (near-duplicate by text embedding)", ["items", "caption"],
                 [[n, c] for c, n in stats["top_near_duplicate_captions"]])
    _print_table("Most duplicated images (by pHash)", ["copies", "item", "caption"],
                 [[n, i, c] for i, c, n in stats["top_images"]])


@index_app.command("query")
def index_query(
    name: str = typer.Argument(..., help="Index name (under --root) or folder."),
    image: Optional[Path] = typer.Option(None, help="Query image file."),
    text: Optional[str] = typer.Option(None, help="Query text."),
    k: int = typer.Option(10, "-k", help="How many items to return."),
    root: Path = typer.Option(Path("indexes"), help="Folder holding indexes."),
    clip_model: Optional[str] = typer.Option(None, help="The open_clip model the index was built with (default: the demo CLIP)."),
    clip_pretrained: Optional[str] = typer.Option(None, help="Weights file when --clip-model is an architecture name."),
    allow_pickle: bool = ALLOW_PICKLE,
) -> None:
    """The k nearest training items to an image (CLIP, with pixel distances) or a text (captions)."""
    from scanner import distances
    from scanner.features import load_image
    from scanner.features import resize
    from scanner.index import TrainingIndex

    if (image is None) == (text is None):
        raise MemscanError("give exactly one of --image PATH or --text \"...\"")
    require_int("-k", k, 1)
    index = TrainingIndex.open(name, root)
    embedder = _clip_for(clip_model, clip_pretrained, allow_pickle)
    index.check_embedder(embedder)
    if text is not None:
        scores, ids = index.search_texts(embedder.embed_texts([text]), k)
        _print_table(f"Nearest captions to {text!r}", ["rank", "cosine", "item", "caption"],
                     [[r + 1, float(s), index.item_ids[i], index.captions[i]] for r, (s, i) in enumerate(zip(scores[0], ids[0])) if i >= 0])
        return
    if not image.is_file():
        raise input_error(image, "no such image file")
    try:
        pixels = load_image(image)
    except Exception:
        raise input_error(image, "not a readable image") from None
    scores, ids = index.search_images(embedder.embed_images(pixels[None]), k)
    query = resize(pixels, index.manifest["thumbnail_size"])
    rows = []
    for rank, (score, i) in enumerate(zip(scores[0], ids[0])):
        if i < 0:
            continue
        thumbnail = np.asarray(index.thumbnails[i])
        rows.append([rank + 1, float(score), float(distances.normalized_l2(query, thumbnail)),
                     float(distances.tiled_l2(query, thumbnail)), index.item_ids[i], index.captions[i]])
    _print_table(f"Nearest images to {image}", ["rank", "cosine", "l2", "tiled_l2", "item", "caption"], rows)


MIA_MODEL = typer.Option(None, help="Diffusers pipeline folder, or the URL of an AUTOMATIC1111 API for the black-box attacks (default: the demo model).")
MIA_CLIP = typer.Option(None, "--clip-model", help="open_clip folder or architecture name the Wu et al. attacks embed with (default: the demo CLIP).")
MIA_CLIP_PRETRAINED = typer.Option(None, help="Weights file when --clip-model is an architecture name.")
IMAGE_COLUMN = typer.Option("image_path", help="Image path column of a table (absolute, or relative to the table).")
CAPTION_COLUMN = typer.Option("caption", help="Caption column of a table.")
MIA_DB = typer.Option(Path("runs/mia.duckdb"), help="DuckDB file to write.")

mia_app = typer.Typer(no_args_is_help=True, help="Membership inference: was this image trained on?")
app.add_typer(mia_app, name="mia")


@mia_app.command("eval")
def mia_eval(
    model: Optional[str] = MIA_MODEL,
    api: Optional[str] = HTTP_API,
    resolution: Optional[int] = HTTP_RESOLUTION,
    members: Optional[Path] = typer.Option(None, help="Known members: image folder with .txt captions, .parquet/.csv or tar shards (default: demo members)."),
    nonmembers: Optional[Path] = typer.Option(None, help="Known non-members, same distribution, same formats (default: demo non-members)."),
    image_column: str = IMAGE_COLUMN,
    caption_column: str = CAPTION_COLUMN,
    image_root: Optional[Path] = IMAGE_ROOT,
    encoding: Optional[str] = ENCODING,
    allow_pickle: bool = ALLOW_PICKLE,
    model_kind: Optional[str] = MODEL_KIND,
    lora: Optional[list[str]] = LORA,
    reference_model: Optional[Path] = REFERENCE_MODEL,
    reference_lora: Optional[list[str]] = REFERENCE_LORA,
    clip_model: Optional[str] = MIA_CLIP,
    clip_pretrained: Optional[str] = MIA_CLIP_PRETRAINED,
    attacks: Optional[str] = typer.Option(None, help="Comma-separated: loss, loss_vec, clid_th, clid_vec, wen, norm_align, seed_agreement, wu_pixel, wu_clip, wu_classifier (the Wu et al. black-box attacks sample each caption 4 times) (default: loss,clid_th,wen; loss,loss_vec for a model without prompts; wu_pixel,wu_clip,seed_agreement for a model behind an HTTP API)."),
    db: Path = MIA_DB,
    seed: int = typer.Option(0, help="Seed of the auxiliary/evaluation split and of the shared noise."),
    ray: Optional[str] = RAY_ADDRESS,
    ray_workers: Optional[int] = RAY_WORKERS,
    ray_cpus_per_worker: Optional[int] = RAY_CPUS_PER_WORKER,
) -> None:
    """Evaluate membership attacks: thresholds fitted on one half, metrics on the other."""
    from scanner import demo as demo_world
    from scanner.mia.denoising import NoiseProtocol
    from scanner.mia.evaluate import run_mia_eval
    from scanner.mia.labelled import labelled_sets
    from scanner.store import Store

    chosen = _attack_list(attacks, model, model_kind, "eval")
    require_int("--seed", seed, 0)
    items = labelled_sets(members, nonmembers, ("--members", "--nonmembers"), demo_world.membership_items,
                          SourceFormat(image_column, caption_column, encoding, image_root), halves=True)
    models, pool = _mia_models(model, model_kind, lora, (api, resolution), (reference_model, reference_lora), chosen, (clip_model, clip_pretrained),
                               ray, ray_workers, ray_cpus_per_worker, allow_pickle)
    with Store(db) as store:
        run_id, results, per_bucket = run_mia_eval(store, models.model, items, chosen, NoiseProtocol(seed=seed), seed,
                                                   models.embedder, pool, models.reference)
    _print_mia(results)
    if per_bucket:
        _print_table("Per duplication bucket (members of the bucket vs all evaluation non-members)",
                     ["attack", "bucket", "AUC", "TPR@1%FPR", "members", "non-members"],
                     [[b["attack"], b["bucket"], b["auc"], b["tpr_at_1pct_fpr"], b["members"], b["non_members"]] for b in per_bucket])
    console.print(f"Database: {db}  (run {run_id}); SELECT * FROM metrics WHERE metric LIKE 'mia_%'")


@mia_app.command("score")
def mia_score(
    items: Optional[Path] = typer.Option(None, help="Images to score: folder with .txt captions, .parquet/.csv or tar shards (default: 20 demo items)."),
    members: Optional[Path] = typer.Option(None, help="Labelled reference members, same formats (default: demo members)."),
    nonmembers: Optional[Path] = typer.Option(None, help="Labelled reference non-members (default: demo non-members)."),
    model: Optional[str] = MIA_MODEL,
    api: Optional[str] = HTTP_API,
    resolution: Optional[int] = HTTP_RESOLUTION,
    image_column: str = IMAGE_COLUMN,
    caption_column: str = CAPTION_COLUMN,
    image_root: Optional[Path] = IMAGE_ROOT,
    encoding: Optional[str] = ENCODING,
    allow_pickle: bool = ALLOW_PICKLE,
    model_kind: Optional[str] = MODEL_KIND,
    lora: Optional[list[str]] = LORA,
    reference_model: Optional[Path] = REFERENCE_MODEL,
    reference_lora: Optional[list[str]] = REFERENCE_LORA,
    clip_model: Optional[str] = MIA_CLIP,
    clip_pretrained: Optional[str] = MIA_CLIP_PRETRAINED,
    attacks: Optional[str] = typer.Option(None, help="Comma-separated: loss, loss_vec, clid_th, clid_vec, wen, norm_align, seed_agreement, wu_pixel, wu_clip, wu_classifier (default: loss,clid_th; loss,loss_vec for a model without prompts; wu_pixel,wu_clip for a model behind an HTTP API)."),
    db: Path = MIA_DB,
    ray: Optional[str] = RAY_ADDRESS,
    ray_workers: Optional[int] = RAY_WORKERS,
    ray_cpus_per_worker: Optional[int] = RAY_CPUS_PER_WORKER,
) -> None:
    """Score unlabeled images with thresholds calibrated on a labelled reference set."""
    from scanner import demo as demo_world
    from scanner.mia.evaluate import run_mia_score
    from scanner.mia.labelled import demo_labelled, distinct_ids, labelled_items, labelled_sets
    from scanner.store import Store

    chosen = _attack_list(attacks, model, model_kind, "score")
    source_format = SourceFormat(image_column, caption_column, encoding, image_root)
    reference = labelled_sets(members, nonmembers, ("--members", "--nonmembers"), demo_world.membership_items,
                              source_format)
    unlabeled = demo_labelled(demo_world.unlabeled_items()) if items is None else \
        distinct_ids([("reference", reference), ("items", labelled_items(items, False, source_format))])[1]
    models, pool = _mia_models(model, model_kind, lora, (api, resolution), (reference_model, reference_lora), chosen, (clip_model, clip_pretrained),
                               ray, ray_workers, ray_cpus_per_worker, allow_pickle)
    with Store(db) as store:
        run_id, rows = run_mia_score(store, models.model, reference, unlabeled, chosen, embedder=models.embedder, pool=pool,
                                     reference_model=models.reference)
    _print_table(f"Membership scores (thresholds from {len(reference)} labelled reference items)",
                 ["item", "attack", "score", "threshold", "predicted member"],
                 [[r["item_id"], r["attack"], r["score"], r["threshold"], r["predicted_member"]] for r in rows])
    console.print(f"Database: {db}  (run {run_id}); SELECT * FROM mia_scores WHERE run_id = '{run_id}'")


def _attack_list(attacks: Optional[str], model: Optional[str], kind: Optional[str], command: str) -> list[str]:
    """The attacks asked for, else the command's defaults for what the model offers."""
    from scanner import demo as demo_world
    from scanner.mia.attacks import default_attacks, parse_attacks
    from scanner.models.loading import declared_capabilities

    if attacks is None:
        return default_attacks(declared_capabilities(model or demo_world.SD_MODEL, kind), command)
    return parse_attacks(attacks.split(","))


def _mia_models(model: Optional[str], kind: Optional[str], loras: Optional[list[str]],
                http: tuple[Optional[str], Optional[int]], reference: tuple[Optional[Path], Optional[list[str]]], attacks: list[str],
                clip: tuple[Optional[str], Optional[str]], ray: Optional[str], workers: Optional[int],
                cpus_per_worker: Optional[int], allow_pickle: bool):
    from scanner import demo as demo_world
    from scanner.config import FeatureConfig, HttpConfig, override
    from scanner.models.loading import attack_models

    try:
        http_config = override(HttpConfig(), api=http[0], resolution=http[1])
    except ValueError as error:
        raise _flag_error(error) from None
    if reference[1] and not reference[0]:
        raise MemscanError("--reference-lora needs --reference-model (the model the LoRA goes on)")
    spec = ModelSpec.of(model or demo_world.SD_MODEL, allow_pickle=allow_pickle, kind=kind, loras=loras or (),
                        http=http_config)
    reference_spec = spec.reference(reference[0], reference[1] or ()) if reference[0] else None
    return attack_models(spec, attacks, FeatureConfig(clip_model=clip[0] or "", clip_pretrained=clip[1] or "",
                                                      allow_pickle=allow_pickle),
                         _ray_settings(ray, workers, cpus_per_worker), reference_spec)


@mia_app.command("dataset")
def mia_dataset(
    suspect: Optional[Path] = typer.Option(None, help="The owner's images: folder with .txt captions, .parquet/.csv or tar shards (default: 40 demo x1 members)."),
    reference: Optional[Path] = typer.Option(None, help="Same-distribution images known not to be trained on (default: 60 demo non-members)."),
    model: Optional[str] = MIA_MODEL,
    api: Optional[str] = HTTP_API,
    resolution: Optional[int] = HTTP_RESOLUTION,
    image_column: str = IMAGE_COLUMN,
    caption_column: str = CAPTION_COLUMN,
    image_root: Optional[Path] = IMAGE_ROOT,
    encoding: Optional[str] = ENCODING,
    allow_pickle: bool = ALLOW_PICKLE,
    model_kind: Optional[str] = MODEL_KIND,
    lora: Optional[list[str]] = LORA,
    reference_model: Optional[Path] = REFERENCE_MODEL,
    reference_lora: Optional[list[str]] = REFERENCE_LORA,
    clip_model: Optional[str] = MIA_CLIP,
    clip_pretrained: Optional[str] = MIA_CLIP_PRETRAINED,
    alpha: float = typer.Option(0.05, help="Significance level."),
    db: Path = MIA_DB,
    ray: Optional[str] = RAY_ADDRESS,
    ray_workers: Optional[int] = RAY_WORKERS,
    ray_cpus_per_worker: Optional[int] = RAY_CPUS_PER_WORKER,
) -> None:
    """Was this set of images trained on? A one-sided test of held-out classifier scores (CLiD's features; Wu et al.'s over HTTP; the loss per noise level for an unconditional model) against a reference set."""
    from scanner import demo as demo_world
    from scanner.mia.dataset import ATTACK, dataset_features, run_dataset_inference
    from scanner.mia.labelled import labelled_sets
    from scanner.models.loading import declared_capabilities
    from scanner.store import Store

    require_number("--alpha", alpha, 0, 1, low_open=True)
    items = labelled_sets(suspect, reference, ("--suspect", "--reference"),
                          lambda: demo_world.membership_items(per_bucket=0, x1=40, nonmembers=60),
                          SourceFormat(image_column, caption_column, encoding, image_root), halves=True)
    features = dataset_features(declared_capabilities(model or demo_world.SD_MODEL, model_kind), bool(reference_model))
    models, pool = _mia_models(model, model_kind, lora, (api, resolution), (reference_model, reference_lora), [features],
                               (clip_model, clip_pretrained), ray, ray_workers, ray_cpus_per_worker, allow_pickle)
    with Store(db) as store:
        run_id, verdict = run_dataset_inference(store, models.model, items, alpha, pool, reference_model=models.reference,
                                                embedder=models.embedder)
    in_suspect = sum(item.member for item in items)
    needed = f"{verdict.items_needed} held-out suspect items were enough" if verdict.items_needed else "not significant"
    console.print(f"Suspect set ({in_suspect} items) vs reference ({len(items) - in_suspect}); the classifier fitted on "
                  f"half of each scores the other half ({verdict.suspect} vs {verdict.reference}): one-sided Mann-Whitney "
                  f"p = {verdict.p_value:.2e} (alpha {alpha}); {needed}. Median score "
                  f"{verdict.suspect_median:.3f} vs {verdict.reference_median:.3f}.")
    console.print(f"Database: {db}  (run {run_id}); SELECT * FROM mia_scores WHERE run_id = '{run_id}' AND attack = '{ATTACK}'")


@app.command()
def idia(
    clip_model: Optional[str] = typer.Option(None, "--clip", help="open_clip folder or architecture name (default: the demo CLIP)."),
    clip_pretrained: Optional[str] = typer.Option(None, help="Weights file when --clip is an architecture name."),
    people: Optional[Path] = typer.Option(None, help="One sub-folder of images per person (default: the demo identities)."),
    names: Optional[Path] = typer.Option(None, help="Candidate names, one per line: the people and many distractors (default: the demo's 1,000)."),
    labels: Optional[Path] = typer.Option(None, help="CSV name,member (true/false) to measure TPR/FPR (default: the demo's labels)."),
    mapping: Optional[Path] = typer.Option(None, help="CSV folder,name when folder names are not the names."),
    tau: int = typer.Option(1, help="A person is a predicted member when at least tau templates give the right name."),
    encoding: Optional[str] = ENCODING,
    allow_pickle: bool = ALLOW_PICKLE,
    db: Path = typer.Option(Path("runs/idia.duckdb"), help="DuckDB file to write."),
) -> None:
    """Identity inference (Hintersdorf et al.): does a CLIP model know these people's names?"""
    from scanner import demo as demo_world
    from scanner.idia import TEMPLATES, read_csv_pairs, read_labels, read_names, read_people, run_idia
    from scanner.store import Store

    require_int("--tau", tau, 1, len(TEMPLATES))
    if people is None:
        people, default_names, default_labels = demo_world.export_people(db.parent / "demo-identities")
        names, labels = names or default_names, labels or default_labels
    if names is None:
        raise MemscanError("--names FILE is needed with --people")
    folder_names = read_csv_pairs(mapping, "folder", "name", encoding) if mapping else None
    person_images, skipped = read_people(people, folder_names)
    candidates = read_names(names, encoding)
    label_of = read_labels(labels, encoding) if labels else {}
    embedder = _clip_for(clip_model, clip_pretrained, allow_pickle)
    with Store(db) as store, progress_bar("people", len(person_images), unit="people") as advance:
        try:
            run_id, results, curve = run_idia(store, embedder, person_images, candidates, label_of, tau,
                                              {"people": str(people), "names": str(names), "skipped": skipped},
                                              on_person=advance)
        except ValueError as error:
            raise input_error(names, str(error)) from None
    _print_idia(results, candidates, label_of, curve, tau)
    if skipped:
        console.print(f"Skipped {len(skipped)} unreadable images: " + "; ".join(skipped[:5]))
    console.print(f"Database: {db}  (run {run_id}); SELECT * FROM idia_results")


def _print_idia(results, candidates, label_of, curve, tau, per_person: bool = True) -> None:
    from scanner.idia import TEMPLATES

    if per_person:
        _print_table(f"IDIA: {len(results)} people, {len(candidates)} candidate names, {len(TEMPLATES)} templates",
                     ["person", "images", "correct templates", "image share", "predicted member", "label"],
                     [[r.person, r.n_images, f"{r.correct_templates}/{len(TEMPLATES)}", r.image_share,
                       r.predicted_member, label_of.get(r.person, "")] for r in results])
    if curve:
        point = next(p for p in curve if p["tau"] == tau)
        console.print(f"Identity inference, {len(results)} people among {len(candidates)} names, at tau={tau}: TPR {point['tpr']:.2f}, FPR {point['fpr']:.2f}, accuracy {point['accuracy']:.2f} "
                      f"({point['members']} members, {point['non_members']} non-members)")


def _finetune_demo(db: Path, samples_per_prompt: int, index_root: Path, no_progress: bool) -> None:
    from scanner import demo as demo_world
    from scanner.config import FeatureConfig
    from scanner.demo.finetune import run_finetune_demo
    from scanner.report import render_report
    from scanner.store import Store

    console.print(f"Fine-tune demo: {demo_world.FINETUNE_LORA.name} on {demo_world.SD_MODEL.name}, private and control "
                  f"captions x {samples_per_prompt} seeds; the base model scanned alike for contrast")
    with Store(db) as store:
        audit = run_finetune_demo(store, load_embedder(FeatureConfig()), index_root, db.parent, samples_per_prompt,
                                  show_progress=not no_progress)
        for title, scores in (("Fine-tune, model guidance from the base", audit.fine_tune), ("Base model, plain", audit.reference)):
            _print_table(f"{title}: against the ground truth (per group of the fine-tuning set; control flags are false flags)",
                         ["group", "prompts", "memorized by the fine-tune", "flagged", "extracted", "recall"],
                         [[s.group, s.prompts, s.memorized, s.flagged, s.extracted, s.recall] for s in scores])
        _print_mia(audit.membership)
        _print_where(db, audit.fine_tune_run)
    report_path = Path("reports") / f"{db.stem}.html"
    render_report(db, report_path)
    console.print(f"Report:    {report_path}")


def _print_mia(results) -> None:
    _print_table("Membership inference (evaluation half; thresholds from the auxiliary half)",
                 ["attack", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "balanced acc.", "members", "non-members"],
                 [[a, r.auc, r.tpr_at_1_fpr, r.tpr_at_01_fpr, r.balanced_accuracy, r.n_members, r.n_nonmembers]
                  for a, r in results.items()])


@app.command()
def report(
    db: Path = typer.Argument(DEFAULT_DEMO_DB, help="A memscan DuckDB file."),
    out: Optional[Path] = typer.Option(None, help="HTML file to write (default: reports/<database name>.html)."),
) -> None:
    """Render the memorization report: one self-contained HTML file to hand over."""
    from scanner.report import render_report

    target = out or Path("reports") / f"{db.stem}.html"
    counts = render_report(db, target)
    console.print(f"Report: {target} ({counts['runs']} runs, {counts['findings']} findings, {counts['extracted']} extracted)")
    missing = counts["missing_images"]
    if missing:
        console.print(f"{len(missing)} generation images are not in the database's files folder (copied without it?), "
                      f"shown as missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")


@app.command()
def sql(
    db: Path = typer.Argument(..., help="A memscan DuckDB file."),
    query: str = typer.Argument(..., help="SQL to run, read-only."),
    output_format: str = typer.Option("table", "--format", help="table, csv, json or parquet."),
    out: Optional[Path] = typer.Option(None, help="Write the result to this file instead of printing it."),
) -> None:
    """Run a read-only SQL query on a memscan database: it can read that database only, and write
    nothing but --out (docs/SECURITY.md)."""
    from scanner.store import Store

    if output_format not in ("table", "csv", "json", "parquet"):
        raise MemscanError(f"--format {output_format}: expected table, csv, json or parquet")
    if out is None and output_format == "parquet":
        raise MemscanError("--format parquet needs --out FILE")
    if out is not None and output_format == "table":
        raise MemscanError("--out writes csv, json or parquet: add --format csv, json or parquet")
    if out is not None and out.resolve() in (db.resolve(), db.resolve().with_name(db.name + ".wal")):
        raise input_error(out, "--out would overwrite the database being queried")
    with Store(db, read_only=True) as store:
        result = store.user_query(query)
    if output_format == "table":
        _print_table("", result.column_names, [list(r.values()) for r in result.to_pylist()])
        return
    encoded = _encode_result(result, output_format)
    if out is None:
        sys.stdout.buffer.write(encoded)
        return
    try:
        out.write_bytes(encoded)
    except OSError as error:
        raise input_error(out, f"cannot write ({error.strerror})") from None


def _encode_result(result, output_format: str) -> bytes:
    """A query's rows as csv, json or parquet bytes, written by memscan rather than DuckDB
    (whose file access is off)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if output_format == "json":
        return (json.dumps(result.to_pylist(), default=str, indent=1) + "\n").encode()
    buffer = pa.BufferOutputStream()
    try:
        if output_format == "csv":
            pacsv.write_csv(result, buffer)
        else:
            pq.write_table(result, buffer)
    except pa.ArrowException as error:
        raise MemscanError(f"cannot write the result as {output_format} ({str(error).splitlines()[0]}); "
                           "try --format json or parquet") from None
    return buffer.getvalue().to_pybytes()


@app.command()
def env() -> None:
    """Print the versions memscan runs with, for bug reports."""
    from scanner.generate import library_versions
    from scanner.store import SCHEMA_VERSION

    import torch

    versions = library_versions()
    versions["schema_version"] = str(SCHEMA_VERSION)
    versions["cuda"] = str(torch.cuda.is_available())
    for name, version in versions.items():
        console.print(f"{name:16} {version}")
    from scanner.models.base import CAPABILITY_NAMES
    from scanner.models.registry import KINDS

    console.print("model kinds (--model-kind; by default model_index.json's _class_name):")
    for kind in KINDS.values():
        offers = ", ".join(CAPABILITY_NAMES[c] for c in sorted(kind.adapter_class().capabilities))
        console.print(f"  {kind.name:28} {kind.summary}; offers {offers}")
    from scanner.config import HTTP_APIS
    from scanner.models.http_api import HttpModel

    offers = ", ".join(CAPABILITY_NAMES[c] for c in sorted(HttpModel.capabilities))
    console.print(f"  {'http(s)://HOST:PORT':28} a model behind an HTTP API (--api {' or '.join(HTTP_APIS)}); offers {offers}")


def main() -> None:
    """Run a command. A user's mistake ends as one line on stderr and exit code 2: memscan's own
    (MemscanError) and a flag or argument the parser refused (a word where a number goes, a
    missing argument, an unknown command)."""
    try:
        code = app(standalone_mode=False)
    except MemscanError as error:
        _fail(str(error))
    except typer.TyperException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # the help is printed already (typer names it so too)
            sys.exit(2)
        context = getattr(error, "ctx", None)
        where = f" (see {context.command_path} --help)" if context is not None else ""
        _fail(error.format_message() + where)
    except typer.Abort:
        _fail("aborted")
    sys.exit(code or 0)


def _fail(message: str) -> None:
    """One line, even when the message quotes a library's error that spans several."""
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"memscan: error: {one_line}", file=sys.stderr)
    sys.exit(2)
