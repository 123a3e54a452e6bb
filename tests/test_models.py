"""The adapters on the demo models: real loading paths, offline, with real outputs."""

import json

import numpy as np
import pytest

from scanner.demo import CLIP_MODEL, SD_MODEL, decode_png, load_world
from scanner.errors import MemscanError
from scanner.models.registry import load_model
from scanner.models.open_clip_model import OpenClip


def test_generation_is_seeded_and_independent_of_the_batch(demo_sd):
    prompts = ["one red circle at the left on a gray background", "two blue squares at the top on a pink background"]
    together = demo_sd.generate(prompts, [7, 8], num_inference_steps=8, guidance_scale=5.0)
    alone = demo_sd.generate(prompts[1:], [8], num_inference_steps=8, guidance_scale=5.0)
    again = demo_sd.generate(prompts[1:], [9], num_inference_steps=8, guidance_scale=5.0)
    assert together.shape == (2, 32, 32, 3) and together.dtype == np.float32
    assert np.isfinite(together).all() and together.min() >= 0 and together.max() <= 1
    np.testing.assert_allclose(together[1], alone[0], atol=2e-3)  # same (prompt, seed), another batch
    assert np.abs(again[0] - alone[0]).mean() > 1e-3  # another seed, another image


def test_model_hash_is_stable_and_names_the_weights(demo_sd):
    again = load_model(SD_MODEL, device="cpu")
    assert again.model_hash == demo_sd.model_hash and len(demo_sd.model_hash) == 64


def test_bad_model_paths_are_one_line_errors(tmp_path):
    with pytest.raises(MemscanError, match="no such file or folder"):
        load_model(tmp_path / "missing")
    with pytest.raises(MemscanError, match="model_index.json is missing"):
        load_model(tmp_path)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not loaded")
    with pytest.raises(MemscanError, match="never loaded"):
        load_model(pickle)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(MemscanError, match="cannot load") as error:
        load_model(broken)
    assert "\n" not in str(error.value)


def test_open_clip_local_dir_embeds_and_retrieves_captions(demo_clip):
    rows = [r for r in load_world(["caption", "image_png", "kind", "clip_train"]) if r["kind"] == "object" and r["clip_train"]][:64]
    images = np.stack([decode_png(r["image_png"]) for r in rows])
    image_features = demo_clip.embed_images(images)
    text_features = demo_clip.embed_texts([r["caption"] for r in rows])
    assert image_features.shape == (64, demo_clip.dim) == text_features.shape
    np.testing.assert_allclose(np.linalg.norm(image_features, axis=1), 1.0, atol=1e-4)
    top1 = (image_features @ text_features.T).argmax(axis=1) == np.arange(64)
    assert top1.mean() > 0.3  # chance is 1/64
    assert demo_clip.preprocess_cfg["mean"] == pytest.approx(json.loads((CLIP_MODEL / "open_clip_config.json").read_text())["preprocess_cfg"]["mean"])


def test_open_clip_architecture_name_with_local_weights_matches_the_folder(demo_clip, tmp_path):
    import open_clip

    config = json.loads((CLIP_MODEL / "open_clip_config.json").read_text())
    (tmp_path / "memscan-demo-tiny.json").write_text(json.dumps(config["model_cfg"]))
    open_clip.add_model_config(tmp_path / "memscan-demo-tiny.json")
    by_name = OpenClip.load("memscan-demo-tiny", pretrained=CLIP_MODEL / "open_clip_model.safetensors", device="cpu")
    texts = ["a photo of someone", "three green stars at the top on a navy background"]
    np.testing.assert_allclose(by_name.embed_texts(texts), demo_clip.embed_texts(texts), atol=1e-5)
    with pytest.raises(MemscanError, match="no such weights file"):
        OpenClip.load("memscan-demo-tiny", pretrained=tmp_path / "missing.safetensors")
    with pytest.raises(MemscanError, match="open_clip_config.json is missing"):
        OpenClip.load(tmp_path)


def test_single_file_checkpoint_loads_the_same_model(demo_sd, tmp_path):
    from ldm_checkpoint import write_single_file

    path = write_single_file(demo_sd.pipeline, tmp_path / "sd-tiny.safetensors")
    single = load_model(path, device="cpu", single_file_config=SD_MODEL)
    prompt = ["three green stars at the top on a navy background"]
    np.testing.assert_allclose(single.generate(prompt, [5], num_inference_steps=6),
                               demo_sd.generate(prompt, [5], num_inference_steps=6), atol=1e-5)
    assert single.model_hash != demo_sd.model_hash  # the evidence names the file that was scanned
    with pytest.raises(MemscanError, match="needs --single-file-config"):
        load_model(path)
