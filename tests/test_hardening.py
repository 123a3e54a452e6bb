"""Issue 17, items 2, 3, 5, 7 and 8 (docs/SECURITY.md): names and paths stay in their folder, no
all-clear without evidence, text is read as text, user tables may point anywhere, and pickled
weights are loaded only when the user asks."""

import base64
import io
import json
import math
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli_checks import assert_one_line_error, checksums, memscan
from scanner.config import FeatureConfig, RayConfig, SamplingConfig, SettingError, load_scan_config
from scanner.errors import MemscanError
from scanner.features import png_bytes
from scanner.index import IndexConfig, TrainingIndex, build_index
from scanner.sources import SourceFormat, iter_source
from scanner.store import Store, now


def png(seed: int) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


# ---- item 2: names and paths never escape their folder ---------------------------------------

@pytest.mark.parametrize("name", [".", "..", "../escape", "a/b", "a\\b", "/tmp/abs", ""])
def test_index_names_must_be_plain_names(tmp_path, demo_clip, name):
    root = tmp_path / "indexes"
    (root / "kept").mkdir(parents=True)
    (root / "kept" / "notes.txt").write_text("someone's file")
    before = checksums(tmp_path)
    with pytest.raises(MemscanError, match="must be a plain name"):
        build_index(tmp_path / "no-source-needed", name, demo_clip, root=root, overwrite=True)
    with pytest.raises(MemscanError, match="must be a plain name"):
        TrainingIndex.open(name, root)
    assert checksums(tmp_path) == before


def test_overwrite_replaces_only_an_index(tmp_path, demo_clip):
    root = tmp_path / "indexes"
    victim = root / "photos"
    victim.mkdir(parents=True)
    (victim / "holiday.png").write_bytes(png(0))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "manifest.json").write_text("{}")
    (root / "link").symlink_to(tmp_path / "elsewhere")
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.png").write_bytes(png(1))
    before = checksums(tmp_path)
    for name in ("photos", "link"):
        with pytest.raises(MemscanError, match="not a memscan index folder"):
            build_index(source, name, demo_clip, IndexConfig(thumbnail_size=16), root=root, overwrite=True)
    assert checksums(tmp_path) == before
    build_index(source, "real", demo_clip, IndexConfig(thumbnail_size=16), root=root)
    build_index(source, "real", demo_clip, IndexConfig(thumbnail_size=16), root=root, overwrite=True)
    assert TrainingIndex.open("real", root).item_ids == ["a"]


def test_cli_refuses_an_index_name_with_a_path(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.png").write_bytes(png(1))
    before = checksums(tmp_path)
    assert_one_line_error(memscan("index", "build", str(source), "--name", "../outside", "--root", str(tmp_path / "ix")),
                          "must be a plain name")
    assert_one_line_error(memscan("index", "stats", "../outside", "--root", str(tmp_path / "ix")), "must be a plain name")
    assert checksums(tmp_path) == before


def test_a_folder_source_does_not_follow_symlinks_out(tmp_path):
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png(2))
    (outside / "secret.txt").write_text("a private caption")
    source = tmp_path / "source"
    source.mkdir()
    (source / "own.png").write_bytes(png(3))
    (source / "own.txt").write_text("own caption")
    (source / "linked.png").symlink_to(outside / "secret.png")
    (source / "captioned.png").write_bytes(png(4))
    (source / "captioned.txt").symlink_to(outside / "secret.txt")
    (source / "folder").symlink_to(outside, target_is_directory=True)
    items = {item.key: item for item in iter_source(source)}
    assert sorted(items) == ["captioned", "linked", "own"]  # the linked folder is not walked
    assert items["own"].caption == "own caption" and items["own"].read_bytes() == png(3)
    for key in ("captioned", "linked"):
        assert items[key].caption == ""
        with pytest.raises(OSError, match="symlink to outside the source folder"):
            items[key].read_bytes()


def test_store_image_file_stays_in_the_files_folder(tmp_path):
    (tmp_path / "secret.png").write_bytes(png(5))
    with Store(tmp_path / "scan.duckdb") as store:
        (store.files_dir / "images").mkdir(parents=True)
        (store.files_dir / "images" / "out.png").symlink_to(tmp_path / "secret.png")
        assert store.image_file("images/ab/x.png") == store.files_dir / "images/ab/x.png"
        for crafted in ("../secret.png", str(tmp_path / "secret.png"), "images/../../secret.png", "images/out.png"):
            with pytest.raises(MemscanError, match="resolves outside the files folder"):
                store.image_file(crafted)


def crafted_findings(store: Store, image_paths: list[str]) -> None:
    """A run with one finding per image path, as a crafted database may hold them."""
    store.start_run("scan-1", "scan", "model", "abc", {"sampling": {}, "cluster": {}, "match": {}}, {})
    store.insert("prompts", [{"run_id": "scan-1", "prompt_id": "p", "text": "a cat", "source": None, "source_item_id": None}])
    for n, image_path in enumerate(image_paths):
        store.insert("generations", [{
            "run_id": "scan-1", "generation_id": f"g{n}", "prompt_id": "p", "seed": n, "num_inference_steps": 1,
            "guidance_scale": 1.0, "scheduler": "x", "height": 16, "width": 16, "batch_size": 1, "status": "ok",
            "image_path": image_path, "created_at": now()}])
        store.insert("clusters", [{
            "run_id": "scan-1", "cluster_id": f"c{n}", "scope": "prompt", "prompt_id": "p", "size": 2, "n_generations": 2,
            "medoid_generation_id": f"g{n}", "mean_distance": 0.0, "max_distance": 0.0, "distance": "tiled_l2",
            "threshold": 0.02, "criterion": "clique"}])
        store.insert("candidates", [{"run_id": "scan-1", "candidate_id": f"k{n}", "cluster_id": f"c{n}", "prompt_id": "p",
                                     "score": 1.0, "rank": n + 1, "reason": "clique"}])
    store.finish_run("scan-1", {})


def test_the_report_embeds_only_pngs_from_the_files_folder(tmp_path):
    from scanner.report import render_report

    secret = png(6)
    (tmp_path / "secret.png").write_bytes(secret)
    db = tmp_path / "crafted.duckdb"
    with Store(db) as store:
        images = store.files_dir / "images"
        images.mkdir(parents=True)
        (images / "ok.png").write_bytes(png(7))
        (images / "notes.png").write_text("not an image")
        crafted_findings(store, ["images/ok.png", "../secret.png", str(tmp_path / "secret.png"), "images/notes.png"])
    out = tmp_path / "report.html"
    counts = render_report(db, out)
    html = out.read_text()
    assert counts["findings"] == 4
    assert base64.b64encode(png(7)).decode() in html
    assert base64.b64encode(secret).decode() not in html and "not an image" not in html
    assert html.count("image not found in the files folder") == 3


def test_the_report_writes_only_an_html_file(tmp_path):
    from scanner.report import render_report

    db = tmp_path / "scan.duckdb"
    Store(db).close()
    (tmp_path / "folder.html").mkdir()
    before = checksums(tmp_path)
    for target in (db, tmp_path / "run.sh", tmp_path / "folder.html"):
        with pytest.raises(MemscanError, match="a report is written to an .html file"):
            render_report(db, target)
    assert checksums(tmp_path) == before


# ---- item 3: no all-clear without evidence ------------------------------------------------

@pytest.mark.parametrize("config, settings, message", [
    (SamplingConfig, {"samples_per_prompt": 0}, "samples_per_prompt must be at least 1, not 0"),
    (SamplingConfig, {"samples_per_prompt": -4}, "samples_per_prompt must be at least 1"),
    (SamplingConfig, {"batch_size": 0}, "batch_size must be at least 1"),
    (SamplingConfig, {"num_inference_steps": 0}, "num_inference_steps must be at least 1"),
    (SamplingConfig, {"guidance_scale": math.nan}, "guidance_scale must be a finite number"),
    (SamplingConfig, {"guidance_scale": math.inf}, "guidance_scale must be a finite number"),
    (SamplingConfig, {"seed_base": -1}, "seed_base must be between 0 and"),
    (SamplingConfig, {"seed_base": 2**63 - 2, "samples_per_prompt": 16}, "seed_base must be between 0 and"),  # the last seed must fit a BIGINT
    (SamplingConfig, {"triage": 0.0}, r"triage must be > 0 and <= 1"),
    (SamplingConfig, {"triage": 1.5}, r"triage must be > 0 and <= 1"),
    (SamplingConfig, {"samples_per_prompt": "16"}, "samples_per_prompt must be an integer"),
    (SamplingConfig, {"batch_size": True}, "batch_size must be an integer"),
    (FeatureConfig, {"thumbnail_size": 4}, "thumbnail_size must be at least 8"),
    (RayConfig, {"workers": -1}, "workers must be at least 0"),
    (RayConfig, {"flush_seconds": 0}, "flush_seconds must be > 0"),
    (IndexConfig, {"batch_size": 0}, "batch_size must be at least 1"),
])
def test_settings_are_checked_when_parsed(config, settings, message):
    with pytest.raises(SettingError, match=message) as error:
        config(**settings)
    assert error.value.setting == next(iter(settings))


def test_toml_settings_are_checked_with_the_file_named(tmp_path):
    path = tmp_path / "scan.toml"
    for text, message in (("[sampling]\nsamples_per_prompt = 0\n", "samples_per_prompt must be at least 1"),
                          ("[sampling]\nguidance_scale = nan\n", "guidance_scale must be a finite number"),
                          ('[sampling]\nbatch_size = "32"\n', "batch_size must be an integer")):
        path.write_text(text)
        with pytest.raises(MemscanError, match=f"scan.toml: {message}"):
            load_scan_config(path)


@pytest.mark.parametrize("flags, needle", [
    (["--samples-per-prompt", "0"], "--samples-per-prompt: samples_per_prompt must be at least 1, not 0"),
    (["--samples-per-prompt", "-3"], "--samples-per-prompt: samples_per_prompt must be at least 1"),
    (["--steps", "0"], "--steps: num_inference_steps must be at least 1"),
    (["--guidance", "nan"], "--guidance: guidance_scale must be a finite number"),
    (["--triage", "0"], "--triage: triage must be > 0 and <= 1"),
    (["--ray-workers", "-1"], "--ray-workers: workers must be at least 0"),
])
def test_scan_flags_out_of_range_are_one_line_before_anything_is_written(tmp_path, flags, needle):
    db = tmp_path / "scan.duckdb"
    assert_one_line_error(memscan("scan", "--db", str(db), *flags), needle)
    assert list(tmp_path.iterdir()) == []


def no_run_in(db) -> bool:
    """Nothing was started: the database (if the scan opened one) records no run."""
    if not db.exists():
        return True
    with Store(db, read_only=True) as store:
        return store.count("runs") == 0


def test_a_plan_that_cannot_fit_in_memory_is_refused(tmp_path):
    from scanner.generate import check_plan_fits

    check_plan_fits(SamplingConfig(batch_size=64, samples_per_prompt=1024), 512, 64)  # fits anywhere
    with pytest.raises(SettingError, match="batch_size 1000000000 needs at least .* GiB for its 512x512 float32 images alone"):
        check_plan_fits(SamplingConfig(batch_size=10**9), 512, 64)
    with pytest.raises(SettingError, match="samples_per_prompt .* 32x32 thumbnails"):
        check_plan_fits(SamplingConfig(samples_per_prompt=10**12), 32, 64)
    db = tmp_path / "scan.duckdb"
    assert_one_line_error(memscan("scan", "--db", str(db), "--batch-size", str(10**9)), "batch_size", "GiB")
    assert no_run_in(db)


def test_other_commands_check_their_numbers(tmp_path):
    assert_one_line_error(memscan("index", "stats", "x", "--top", "0", "--root", str(tmp_path)), "--top must be at least 1")
    assert_one_line_error(memscan("idia", "--tau", "22", "--db", str(tmp_path / "i.duckdb")), "--tau must be between 1 and 21")
    assert_one_line_error(memscan("mia", "dataset", "--alpha", "1.5"), "--alpha must be > 0 and <= 1")
    assert list(tmp_path.iterdir()) == []


# ---- item 5: text is read as text --------------------------------------------------------

def test_prompt_files_in_utf8_with_bom_or_another_encoding(tmp_path):
    from scanner.prompts import read_prompts

    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffcafé au lait\nthé\n".encode("utf-8"))
    assert [p.text for p in read_prompts(bom)] == ["café au lait", "thé"]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("a cat\ncafé\n".encode("latin-1"))
    with pytest.raises(MemscanError, match=r"latin.txt: not utf-8 text: byte 0xe9 at byte offset 9 cannot be decoded"):
        read_prompts(latin)
    assert [p.text for p in read_prompts(latin, encoding="latin-1")] == ["a cat", "café"]
    with pytest.raises(MemscanError, match="unknown text encoding 'klingon'"):
        read_prompts(latin, encoding="klingon")
    table = tmp_path / "latin.csv"
    table.write_bytes("caption\nna\u00efve\n".encode("latin-1"))
    with pytest.raises(MemscanError, match="latin.csv: not utf-8 text: byte 0xef at byte offset 10"):
        read_prompts(table)  # pyarrow alone would read this column as b'na\xefve'
    assert [p.text for p in read_prompts(table, encoding="latin-1")] == ["naïve"]


def test_binary_parquet_columns_are_decoded_never_stringified(tmp_path):
    from scanner.prompts import read_prompts

    path = tmp_path / "captions.parquet"
    pq.write_table(pa.table({"caption": pa.array(["crème brûlée".encode(), None], pa.binary())}), path)
    assert [p.text for p in read_prompts(path)] == ["crème brûlée"]
    pq.write_table(pa.table({"caption": pa.array([b"ok", "déjà".encode("latin-1")], pa.binary())}), path)
    with pytest.raises(MemscanError, match=r"row 1, column 'caption': not utf-8 text: byte 0xe9 at byte offset 1"):
        read_prompts(path)


def test_cli_names_the_prompt_file_and_offset(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    assert_one_line_error(memscan("scan", "--prompts", str(latin), "--db", str(tmp_path / "x.duckdb")),
                          str(latin), "byte 0xe9 at byte offset 3", "--encoding")
    assert_one_line_error(memscan("scan", "--prompts", str(latin), "--encoding", "nope", "--db", str(tmp_path / "x.duckdb")),
                          "unknown text encoding 'nope'")


def test_captions_in_folders_shards_and_tables_are_decoded(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(8))
    (folder / "a.txt").write_bytes("\ufeffgarçon".encode("utf-8"))
    assert [i.caption for i in iter_source(folder)] == ["garçon"]
    (folder / "a.txt").write_bytes("garçon".encode("cp1252"))
    with pytest.raises(MemscanError, match=r"a.txt: not utf-8 text: byte 0xe7 at byte offset 3"):
        list(iter_source(folder))
    assert [i.caption for i in iter_source(folder, SourceFormat(encoding="cp1252"))] == ["garçon"]

    shard = tmp_path / "shards" / "00000.tar"
    shard.parent.mkdir()
    write_shard(shard, {"k.png": png(9), "k.json": json.dumps({"caption": "über"}, ensure_ascii=False).encode("utf-8-sig"),
                        "l.png": png(10), "l.txt": "señor".encode("utf-8")})
    assert [i.caption for i in iter_source(shard.parent)] == ["über", "señor"]
    write_shard(shard, {"l.png": png(10), "l.txt": "señor".encode("latin-1")})
    with pytest.raises(MemscanError, match=r"00000.tar::l.txt: not utf-8 text: byte 0xf1 at byte offset 2"):
        list(iter_source(shard.parent))
    assert [i.caption for i in iter_source(shard.parent, SourceFormat(encoding="latin-1"))] == ["señor"]

    table = tmp_path / "train.csv"
    table.write_bytes("image_path,caption\nfolder/a.png,Zürich\n".encode("latin-1"))
    assert [i.caption for i in iter_source(table, SourceFormat(encoding="latin-1"))] == ["Zürich"]


def write_shard(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_idia_name_lists_are_decoded(tmp_path):
    from scanner.idia import read_labels, read_names

    names = tmp_path / "names.txt"
    names.write_bytes("\ufeffJosé Núñez\nZoë\n".encode("utf-8"))
    assert read_names(names) == ["José Núñez", "Zoë"]
    names.write_bytes("José\n".encode("latin-1"))
    with pytest.raises(MemscanError, match="names.txt: not utf-8 text: byte 0xe9 at byte offset 3"):
        read_names(names)
    assert read_names(names, "latin-1") == ["José"]
    labels = tmp_path / "labels.csv"
    labels.write_bytes("\ufeffname,member\nZoë,true\n".encode("utf-8"))
    assert read_labels(labels) == {"Zoë": True}


# ---- item 7: tables the user wrote may point anywhere ---------------------------------------

def test_tables_may_hold_absolute_paths_and_image_root_confines_them(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "a.png").write_bytes(png(11))
    (dataset / "leak.png").symlink_to(tmp_path / "private.png")
    (tmp_path / "private.png").write_bytes(png(12))
    tables = tmp_path / "tables"
    tables.mkdir()
    table = tables / "train.parquet"
    pq.write_table(pa.table({"image_path": [str(dataset / "a.png"), "../dataset/a.png"], "caption": ["x", "y"]}), table)
    assert [i.read_bytes() for i in iter_source(table)] == [png(11)] * 2
    assert [i.read_bytes() for i in iter_source(table, SourceFormat(image_root=dataset))] == [png(11)] * 2
    with pytest.raises(MemscanError, match=r"train.parquet: row 0: image path '.*a.png' is outside --image-root"):
        list(iter_source(table, SourceFormat(image_root=tables)))
    pq.write_table(pa.table({"image_path": [str(dataset / "leak.png")], "caption": ["x"]}), table)
    with pytest.raises(MemscanError, match="is outside --image-root"):
        list(iter_source(table, SourceFormat(image_root=dataset)))


def test_index_build_takes_image_root(tmp_path):
    table = tmp_path / "train.csv"
    table.write_text(f"image_path,caption\n{tmp_path / 'a.png'},x\n")
    (tmp_path / "root").mkdir()
    assert_one_line_error(memscan("index", "build", str(table), "--name", "t", "--root", str(tmp_path / "ix"),
                                  "--image-root", str(tmp_path / "root")), "train.csv: row 0", "outside --image-root")
    assert not (tmp_path / "ix" / "t").exists()


# ---- item 8: pickled weights only on request ------------------------------------------------

@pytest.fixture
def pipeline_with_a_pickle(tmp_path):
    from scanner.demo import SD_MODEL

    folder = tmp_path / "sd-tiny"
    shutil.copytree(SD_MODEL, folder)
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"a pickle would run code here")
    return folder


def test_pickled_weights_in_a_pipeline_folder_are_refused_unless_allowed(pipeline_with_a_pickle, demo_sd):
    from scanner.models.loading import ModelSpec

    pickle = pipeline_with_a_pickle / "unet" / "diffusion_pytorch_model.bin"
    for spec in (ModelSpec.of(pipeline_with_a_pickle, "cpu"), ModelSpec.of(pipeline_with_a_pickle, "cpu", allow_pickle=False)):
        with pytest.raises(MemscanError, match=f"{pickle}: pickled weights are never loaded.*--allow-pickle"):
            spec.load()
    allowed = ModelSpec.of(pipeline_with_a_pickle, "cpu", allow_pickle=True)
    assert allowed.allow_pickle  # what a Ray worker receives
    model = allowed.load()  # not refused; diffusers still prefers the safetensors beside it
    prompt = ["three green stars at the top on a navy background"]
    np.testing.assert_allclose(model.generate(prompt, [1], num_inference_steps=2),
                               demo_sd.generate(prompt, [1], num_inference_steps=2), atol=1e-6)


def test_cli_refuses_a_pickle_in_the_model_folder(pipeline_with_a_pickle, tmp_path):
    db = tmp_path / "scan.duckdb"
    assert_one_line_error(memscan("scan", "--model", str(pipeline_with_a_pickle), "--db", str(db)),
                          "diffusion_pytorch_model.bin", "--allow-pickle")
    assert no_run_in(db)


def test_pickled_clip_weights_are_refused_and_torch_advice_is_not_passed_on(tmp_path):
    import fractions

    import open_clip
    import torch

    from scanner.demo import CLIP_MODEL
    from scanner.models import load_failure
    from scanner.models.open_clip_model import OpenClip

    architecture = tmp_path / "memscan-demo-tiny.json"
    architecture.write_text(json.dumps(json.loads((CLIP_MODEL / "open_clip_config.json").read_text())["model_cfg"]))
    open_clip.add_model_config(architecture)
    folder = tmp_path / "clip"
    shutil.copytree(CLIP_MODEL, folder)
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(MemscanError, match="open_clip_pytorch_model.bin: pickled weights are never loaded"):
        OpenClip.load(folder)
    weights = tmp_path / "weights.pt"
    torch.save({"x": fractions.Fraction(1, 3)}, weights)  # not a plain tensor dict: torch's safe loader refuses it
    with pytest.raises(MemscanError, match="weights.pt: pickled weights are never loaded"):
        OpenClip.load("memscan-demo-tiny", pretrained=weights)
    with pytest.raises(MemscanError, match="cannot load as an open_clip model") as error:
        OpenClip.load("memscan-demo-tiny", pretrained=weights, allow_pickle=True, device="cpu")
    assert "weights_only=False" not in str(error.value) and "\n" not in str(error.value)
    advice = RuntimeError("Weights only load failed. ... Re-running `torch.load` with `weights_only` set to `False` will likely succeed")
    assert "False" not in load_failure(advice)
