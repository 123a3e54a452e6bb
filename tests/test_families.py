"""Every model family behind the capability-split seam (issue 19), on the demo world's models of
each family: the loss the adapter reports is the family's own training loss, sampling is seeded
and batch-independent, every attack runs where the model has what it needs, and the wrong
family or a missing capability is refused with one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from scanner.demo import FAMILY_MODELS, decode_png, load_world
from scanner.errors import MemscanError
from scanner.models.base import SAMPLE, TEXT

FAMILIES = sorted(FAMILY_MODELS)


@pytest.fixture(scope="module")
def family_models():
    from scanner.models.registry import load_model

    return {name: load_model(path, device="cpu") for name, path in FAMILY_MODELS.items()}


def _members(n: int = 4, family: str = "sd"):
    """Duplicated members and what each family conditions on: the caption, or the class (the demo DiT's: the shape)."""
    rows = [r for r in load_world(["caption", "shape", "image_png", "dup_count", "kind"]) if r["dup_count"] >= 50][:n]
    return np.stack([decode_png(r["image_png"]) for r in rows]), [r["shape" if family == "dit" else "caption"] for r in rows]


def _independent_condition(pipeline, captions):
    """The condition and denoiser keywords as the family's pipeline builds them, without memscan."""
    import torch

    if type(pipeline).__name__ == "FluxPipeline":  # T5 states padded to the T5 tokenizer's length, CLIP's pooled output
        embeds, pooled, text_ids = pipeline.encode_prompt(captions, None, device="cpu",
                                                          max_sequence_length=pipeline.tokenizer_2.model_max_length)
        return embeds, {"pooled_projections": pooled, "txt_ids": text_ids}
    if type(pipeline).__name__ == "PixArtAlphaPipeline":  # T5 states masked at padding, no size conditions
        tokens = pipeline.tokenizer(captions, padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
        with torch.no_grad():
            states = pipeline.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        return states, {"encoder_attention_mask": tokens.attention_mask,
                        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    if hasattr(pipeline, "transformer"):  # SD3
        embeds, _, pooled, _ = pipeline.encode_prompt(captions, None, None, device="cpu", do_classifier_free_guidance=False)
        return embeds, {"pooled_projections": pooled}
    if hasattr(pipeline, "text_encoder_2"):
        embeds, _, pooled, _ = pipeline.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
        side = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
        time_ids = pipeline._get_add_time_ids((side, side), (0, 0), (side, side), dtype=embeds.dtype,
                                              text_encoder_projection_dim=pipeline.text_encoder_2.config.projection_dim)
        return embeds, {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.repeat(len(captions), 1)}}
    ids = pipeline.tokenizer(captions, padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipeline.text_encoder(ids)[0], {}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_loss_is_the_familys_own_training_loss(family, family_models):
    import torch
    from diffusers import DDPMScheduler

    model = family_models[family]
    images, captions = _members(family=family)
    x0 = model.encode_image(images)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    timesteps = torch.tensor([50, 250, 500, 900])
    reported = model.training_loss(x0, model.encode_condition(captions), timesteps, noise).numpy()

    if family == "ddpm":  # unconditional, in pixel space: x0 is the image in [-1, 1], and the captions change nothing
        assert model.encode_condition(captions) is None
        x0_pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        torch.testing.assert_close(x0, x0_pixels)
        condition, keywords = None, {}
    elif family == "dit":  # the class numbers that model_index.json's id2label gives the shapes
        classes = {name: int(number) for number, name in
                   json.loads((FAMILY_MODELS["dit"] / "model_index.json").read_text())["id2label"].items()}
        condition, keywords = None, {"class_labels": torch.tensor([classes[c] for c in captions])}
    else:
        condition, keywords = _independent_condition(model.pipeline, captions)
    if family in ("sd3", "flux"):
        # independently: rectified flow as SD3 and Flux train it, x_t = (1 - sigma) x0 + sigma n at sigma = t / 1000,
        # target n - x0
        assert model.prediction_type == "flow"
        sigma = (timesteps.float() / 1000)[:, None, None, None]
        x_t, target = (1 - sigma) * x0 + sigma * noise, noise - x0
        with torch.no_grad():
            if family == "sd3":
                prediction = model.pipeline.transformer(x_t, encoder_hidden_states=condition, timestep=timesteps.float(),
                                                        **keywords).sample
            else:  # Flux: 2x2 patches as tokens, their (0, row, column) ids, sigma as the timestep; the loss is
                # the same on tokens, so the target is packed too
                n, channels, side = x_t.shape[0], x_t.shape[1], x_t.shape[2] // 2
                pack = lambda x: x.view(n, channels, side, 2, side, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, side * side, -1)  # noqa: E731
                rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
                image_ids = torch.stack([torch.zeros_like(rows), rows, columns], dim=-1).reshape(-1, 3).float()
                prediction = model.pipeline.transformer(hidden_states=pack(x_t), timestep=timesteps.float() / 1000,
                                                        encoder_hidden_states=condition, img_ids=image_ids,
                                                        **keywords).sample
                target = pack(target)
    else:
        # independently: the training scheduler from the folder, the target its prediction_type names
        scheduler = DDPMScheduler.from_pretrained(FAMILY_MODELS[family] / "scheduler")
        x_t = scheduler.add_noise(x0, noise, timesteps)
        v_target = scheduler.get_velocity(x0, noise, timesteps)
        target = v_target if scheduler.config.prediction_type == "v_prediction" else noise
        with torch.no_grad():
            if family == "ddpm":
                prediction = model.pipeline.unet(x_t, timesteps).sample
            elif family in ("pixart", "dit"):  # the transformer learns its variance too: epsilon is the first half of its output
                if family == "pixart":
                    keywords["encoder_hidden_states"] = condition
                output = model.pipeline.transformer(x_t, timestep=timesteps, **keywords).sample
                assert output.shape[1] == 2 * x_t.shape[1]
                prediction = output[:, :x_t.shape[1]]
            else:
                prediction = model.pipeline.unet(x_t, timesteps, encoder_hidden_states=condition, **keywords).sample
    expected = ((prediction - target) ** 2).mean(dim=tuple(range(1, target.dim()))).numpy()
    np.testing.assert_allclose(reported, expected, rtol=1e-4, atol=1e-6)
    # a trained denoiser beats predicting zeros on its own members (whose loss is 1, or 2 for a flow's velocity)
    assert (reported < (2.0 if model.prediction_type == "flow" else 1.0)).all()
    if family == "sd2-v":  # the epsilon target would be silently wrong here: a different number
        assert model.prediction_type == "v_prediction"
        epsilon_loss = ((prediction - noise) ** 2).mean(dim=(1, 2, 3)).numpy()
        assert np.abs(epsilon_loss - reported).max() > 0.05


@pytest.mark.parametrize("family", ["sd2-v", "sdxl", "sd3", "flux", "pixart", "ddpm", "dit"])
def test_sampling_is_seeded_and_independent_of_the_batch(family, family_models):
    model = family_models[family]
    prompts = ["one red circle at the left on a gray background", "two blue squares at the top on a pink background"]
    if family == "ddpm":  # an unconditional model's one prompt; any other is refused
        with pytest.raises(ValueError, match="takes no prompt"):
            model.generate(prompts, [7, 8], num_inference_steps=6, guidance_scale=1.0)
        prompts = ["", ""]
    if family == "dit":  # a class-conditional model's prompts are its classes; anything else is one line
        with pytest.raises(MemscanError, match="class label 'one red circle .*' is not one of this DiTPipeline's 8 classes "
                                               r"\(bar, circle, cross, diamond, ring, square, star, triangle\)"):
            model.generate(prompts, [7, 8], num_inference_steps=6, guidance_scale=1.0)
        prompts = ["circle", "5"]  # a name, or a class number
    together = model.generate(prompts, [7, 8], num_inference_steps=6, guidance_scale=5.0)
    alone = model.generate(prompts[1:], [8], num_inference_steps=6, guidance_scale=5.0)
    other_seed = model.generate(prompts[1:], [9], num_inference_steps=6, guidance_scale=5.0)
    assert together.shape == (2, model.resolution, model.resolution, 3) and np.isfinite(together).all()
    np.testing.assert_allclose(together[1], alone[0], atol=2e-3)
    assert np.abs(other_seed[0] - alone[0]).mean() > 1e-3


def test_the_first_step_input_is_what_the_sampler_feeds_the_denoiser(family_models):
    """SDXL's Euler scheduler starts from noise scaled by its largest sigma at the chosen steps
    (on "leading" timesteps that scale depends on the steps) and scales the model's input back;
    DDIM does neither, nor does a flow (which feeds x_T as it is; Flux packs it into tokens and
    shifts its sigmas by the resolution). The denoiser's input and timestep at the first step are
    caught from the pipeline's own call."""
    import torch

    for family, model in family_models.items():
        caught = []
        hook = model.denoiser.register_forward_pre_hook(lambda module, args, kwargs: caught.append((args, kwargs)),
                                                        with_kwargs=True)
        try:
            model.generate(["circle" if family == "dit" else ""], [1], num_inference_steps=20, guidance_scale=1.0)
        finally:
            hook.remove()
        args, kwargs = caught[0]
        fed = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        x = model.first_step_input([1], 20)
        if family == "flux":  # packed into tokens, and the timestep given as sigma
            fed = model.pipeline._unpack_latents(fed, model.resolution, model.resolution, model.pipeline.vae_scale_factor)
            timestep = timestep * 1000
        torch.testing.assert_close(x, fed)
        assert float(timestep.flatten()[0]) == pytest.approx(model.sampling_timesteps(20)[0], rel=1e-4), family
        assert 0.9 < float(x.std()) < 1.1, family  # the denoiser's input is unit-scale noise in every family


@pytest.mark.parametrize("family", FAMILIES)
def test_every_attack_runs_on_every_family(family, family_models, demo_clip):
    from scanner.mia.attacks import ATTACKS
    from scanner.mia.denoising import NoiseProtocol
    from scanner.mia.evaluate import LabelledItem, features_on

    images, captions = _members(3, family)
    items = [LabelledItem(f"i{i}", c, image, True) for i, (c, image) in enumerate(zip(captions, images))]
    model = family_models[family]
    # a model without text (unconditional, or class-conditional) runs the attacks that need no prompt's text, and
    # refuses the others before any work
    textless = family in ("ddpm", "dit")
    runnable = [name for name, attack in ATTACKS.items() if not attack.text or not textless]
    for name in set(ATTACKS) - set(runnable):
        with pytest.raises(MemscanError, match=f"the {name} attack needs conditioning on a prompt's text, which a "
                                               f"{model.kind} model .* does not offer"):
            features_on(None, model, items, ["loss", name], NoiseProtocol(timesteps=(200,), repeats=1), embedder=demo_clip)
    assert not textless or runnable == ["loss", "loss_vec", "loss_ref"]
    # the model as its own reference: the reference attacks run, and measure exactly no difference
    features = features_on(None, model, items, runnable, NoiseProtocol(timesteps=(200,), repeats=1), embedder=demo_clip,
                           reference_model=model)
    assert set(features) == set(runnable)
    assert np.all(features["loss_ref"]["score"] == 0)
    for attack, raw in features.items():
        for values in raw.values():
            assert len(values) == 3 and np.isfinite(values).all(), (family, attack)


class BlackBoxOnly:
    """A model that can only sample (the shape of an HTTP-only model): wraps a real one."""

    kind = "black-box test model"
    capabilities = frozenset({SAMPLE, TEXT})

    def __init__(self, model):
        self.model_ref, self.model_hash, self.precision, self.loras = model.model_ref, model.model_hash, model.precision, ()
        self.resolution, self.generate, self.defaults = model.resolution, model.generate, model.defaults


def test_an_attack_the_model_cannot_run_is_refused_before_any_work(demo_sd, tmp_path):
    from scanner.config import SamplingConfig, ScanConfig
    from scanner.generate import Prompt
    from scanner.mia.attacks import check_attacks
    from scanner.scan import run_scan
    from scanner.store import Store

    black_box = BlackBoxOnly(demo_sd)
    check_attacks(black_box, ["seed_agreement", "wu_pixel"])  # sampling is enough for these
    with pytest.raises(MemscanError, match="the loss attack needs the denoiser's losses") as refused:
        check_attacks(black_box, ["seed_agreement", "loss"])
    assert "\n" not in str(refused.value) and "offers: sampling" in str(refused.value)
    config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=8, triage=0.5, triage_detector="wen"))
    with Store(tmp_path / "scan.duckdb") as store:
        with pytest.raises(MemscanError, match="the wen attack needs"):
            run_scan(store, black_box, [Prompt.from_text("a red circle")], config, show_progress=False)
        assert store.execute("SELECT count(*) FROM runs")[0][0] == 0  # refused before the run began


def test_the_kind_comes_from_model_index_and_the_wrong_one_is_one_line(tmp_path, family_models):
    from scanner.models.registry import load_model, resolve_kind
    from scanner.models.stable_diffusion import StableDiffusion
    from scanner.models.stable_diffusion_xl import StableDiffusionXL

    assert isinstance(family_models["sdxl"], StableDiffusionXL) and isinstance(family_models["sd2-v"], StableDiffusion)
    assert resolve_kind(FAMILY_MODELS["sdxl"]).name == "StableDiffusionXLPipeline"
    foreign = tmp_path / "audio"
    foreign.mkdir()
    (foreign / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDMPipeline"}))
    with pytest.raises(MemscanError, match="AudioLDMPipeline is not a kind memscan can audit; supported: "
                                           "StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline"):
        load_model(foreign)
    with pytest.raises(MemscanError, match="--model-kind Kandinsky: not a kind"):
        load_model(FAMILY_MODELS["sd"], kind="Kandinsky")
    with pytest.raises(MemscanError, match="SD 1/2-shaped weights loaded as a StableDiffusionXLPipeline") as wrong:
        load_model(FAMILY_MODELS["sd"], kind="StableDiffusionXLPipeline", device="cpu")
    assert "\n" not in str(wrong.value)
    # SDXL weights under an SD 1 config: the folder loads, its UNet does not fit the family
    relabelled = tmp_path / "sdxl-as-sd"
    shutil.copytree(FAMILY_MODELS["sdxl"], relabelled)
    index = json.loads((relabelled / "model_index.json").read_text())
    (relabelled / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(MemscanError, match="SDXL-shaped weights loaded as a StableDiffusionPipeline"):
        load_model(relabelled, device="cpu")


@pytest.mark.parametrize("family", ["sd2-v", "sdxl", "sd3"])
def test_a_single_file_checkpoint_loads_the_same_model(family, family_models, tmp_path):
    """SDXL's file holds its second text encoder in open_clip's layout: converted back exactly.
    SD3's holds its MMDiT and autoencoder alone, as released: the encoders come from the config folder."""
    from ldm_checkpoint import write_single_file
    from scanner.models.registry import load_model

    model = family_models[family]
    path = write_single_file(model.pipeline, tmp_path / f"{family}.safetensors")
    single = load_model(path, device="cpu", single_file_config=FAMILY_MODELS[family])
    assert type(single) is type(model) and single.prediction_type == model.prediction_type
    prompt = ["three green stars at the top on a navy background"]
    np.testing.assert_allclose(single.generate(prompt, [5], num_inference_steps=6),
                               model.generate(prompt, [5], num_inference_steps=6), atol=1e-5)


def test_a_flux_transformer_file_loads_with_its_config_folders_encoders_and_autoencoder(family_models, tmp_path):
    """Flux files are released as the transformer alone. (diffusers converts the original layout
    only at the released width, 3072, so the tiny model's file is in diffusers' own layout.)"""
    from safetensors.torch import save_file
    from scanner.models.registry import load_model

    model = family_models["flux"]
    path = tmp_path / "flux-transformer.safetensors"
    save_file({k: v.contiguous() for k, v in model.pipeline.transformer.state_dict().items()}, str(path))
    single = load_model(path, device="cpu", single_file_config=FAMILY_MODELS["flux"])
    prompt = ["three green stars at the top on a navy background"]
    # the same weights: equal up to float32 rounding (the loaded copy's memory layout may take other kernels)
    np.testing.assert_allclose(single.generate(prompt, [5], num_inference_steps=4),
                               model.generate(prompt, [5], num_inference_steps=4), atol=1e-5)


@pytest.mark.parametrize("family", ["pixart", "dit", "ddpm"])
def test_a_single_file_of_a_family_diffusers_cannot_load_from_one_is_one_line(family, tmp_path):
    from safetensors.torch import save_file
    from scanner.models.registry import load_model

    path = tmp_path / f"{family}.safetensors"
    save_file({}, str(path))
    with pytest.raises(MemscanError, match="from a pipeline folder only \\(it has no single-file loader\\)") as error:
        load_model(path, device="cpu", single_file_config=FAMILY_MODELS[family])
    assert "\n" not in str(error.value)


def test_an_encoderless_sd3_file_whose_config_folder_lacks_an_encoder_is_one_line(family_models, tmp_path):
    from ldm_checkpoint import write_single_file
    from scanner.models.registry import load_model

    path = write_single_file(family_models["sd3"].pipeline, tmp_path / "sd3.safetensors")
    config = tmp_path / "config"
    shutil.copytree(FAMILY_MODELS["sd3"], config, ignore=shutil.ignore_patterns("text_encoder_2"))
    with pytest.raises(MemscanError, match="holds no text_encoder_2 and its config folder .* has no text_encoder_2 folder") as error:
        load_model(path, device="cpu", single_file_config=config)
    assert "\n" not in str(error.value)


def test_an_sd3_folder_without_t5_loads_and_a_half_present_t5_is_one_line(family_models, tmp_path):
    """SD3's T5 encoder is optional: the demo SD3 has none (the pipeline's zeros stand in). A
    folder that names T5 but lacks its files, or names only its tokenizer, is one line."""
    from scanner.models.registry import load_model

    model = family_models["sd3"]
    assert model.pipeline.text_encoder_3 is None and model.denoiser_name == "transformer"
    assert model.encode_condition(["a red circle"]).prompt_embeds.shape[1] == 77 + 256  # CLIP tokens, then T5's zeros
    broken = tmp_path / "sd3-missing-t5"
    shutil.copytree(FAMILY_MODELS["sd3"], broken)
    index = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "text_encoder_3": ["transformers", "T5EncoderModel"],
                                                         "tokenizer_3": ["transformers", "T5TokenizerFast"]}))
    with pytest.raises(MemscanError, match=f"{broken}.*cannot load as a StableDiffusion3Pipeline") as missing:
        load_model(broken, device="cpu")
    assert "\n" not in str(missing.value)
    (broken / "model_index.json").write_text(json.dumps({**index, "tokenizer_3": ["transformers", "T5TokenizerFast"]}))
    with pytest.raises(MemscanError, match="T5 encoder and its tokenizer must both be present or both absent"):
        load_model(broken, device="cpu")


def test_a_flux_folder_without_its_t5_encoder_is_one_line(family_models, tmp_path):
    """Flux, unlike SD3, cannot run without T5: a folder whose T5 encoder is missing or declared
    absent is refused naming the folder, before diffusers loads anything. The T5 states are padded
    to the T5 tokenizer's own length, and without guidance embedding the guidance is true
    classifier-free guidance against the empty prompt."""
    from scanner.models.registry import load_model

    model = family_models["flux"]
    assert model.t5_tokens == model.pipeline.tokenizer_2.model_max_length < 512 and not model.guidance_embedded
    assert model.encode_condition(["a red circle"]).prompt_embeds.shape[1] == model.t5_tokens
    assert model.guidance_keywords(5.0, 2)["negative_prompt"] == ["", ""]
    assert "true_cfg_scale" not in model.guidance_keywords(1.0, 2)
    # a guidance-distilled transformer (FLUX.1 dev) takes the scale as its input instead, and at released size gets
    # dev's defaults; one without guidance embedding gets schnell's
    from scanner.models import flux

    assert model.released is flux.RELEASED_UNGUIDED and model.defaults is flux.DEMO_SIZED
    model.denoiser.register_to_config(guidance_embeds=True)
    try:
        assert model.guidance_keywords(3.5, 2) == {"guidance_scale": 3.5, "max_sequence_length": model.t5_tokens}
        assert model.defaults_for(1024) is flux.RELEASED_DISTILLED
    finally:
        model.denoiser.register_to_config(guidance_embeds=False)
    broken = tmp_path / "flux-without-t5"
    shutil.copytree(FAMILY_MODELS["flux"], broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(MemscanError, match=f"{broken}: a Flux model needs its T5 encoder, but text_encoder_2 is missing"):
        load_model(broken, device="cpu")
    index = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "text_encoder_2": [None, None], "tokenizer_2": [None, None]}))
    with pytest.raises(MemscanError, match="text_encoder_2 and tokenizer_2 are missing") as declared:
        load_model(broken, device="cpu")
    assert "\n" not in str(declared.value)


@pytest.mark.slow
def test_an_unconditional_model_is_audited_by_matching_every_generation(family_models, demo_clip, demo_world_index, tmp_path):
    """Carlini et al.'s CIFAR-10 extraction on the demo world's unconditional model: seeds of the
    empty prompt, every generation matched against the training index, one finding per training
    image reproduced, judged right against the world's ground truth; what needs a prompt is
    refused with one line before any work."""
    from scanner.calibration import MatchingStatement, criterion_statement
    from scanner.config import SamplingConfig, ScanConfig
    from scanner.demo.evaluate import score_extraction, score_unconditional
    from scanner.generate import Prompt
    from scanner.scan import run_scan, unconditional_prompts
    from scanner.store import Store

    model = family_models["ddpm"]
    index = demo_world_index
    config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=48, batch_size=48))
    with Store(tmp_path / "scan.duckdb") as store:
        for prompts, given, problem in (([Prompt.from_text("a red circle")], index, "takes no prompts"),
                                        (unconditional_prompts(model), None, "give --index")):
            with pytest.raises(MemscanError, match=f"a DDIMPipeline model is unconditional: .*{problem}"):
                run_scan(store, model, prompts, config, show_progress=False, embedder=demo_clip, index=given)
        assert store.execute("SELECT count(*) FROM runs")[0][0] == 0  # refused before the run began
        # fewer seeds than a clique's size: no clique is formed here, so nothing refuses it
        few = run_scan(store, model, unconditional_prompts(model), ScanConfig(sampling=SamplingConfig(samples_per_prompt=3)),
                       show_progress=False, embedder=demo_clip, index=index)
        assert few.counts["generated"] == 3
        result = run_scan(store, model, unconditional_prompts(model), config, show_progress=False, embedder=demo_clip, index=index)
        truth = score_unconditional(store, result.run_id)
        verdicts = score_extraction(store, result.run_id)
        statement = criterion_statement(store, result.run_id)
        scored = store.execute("SELECT DISTINCT attack FROM mia_scores WHERE run_id = ?", [result.run_id])
        sizes = store.execute("SELECT sum(size), count(*) FROM clusters WHERE run_id = ?", [result.run_id])[0]
    print(truth.by_bucket(), truth.recall, verdicts, statement)
    assert result.counts["generated"] == 48 and result.counts["null_prompts"] == 0
    assert isinstance(statement, MatchingStatement) and statement.generations == 48
    reproduced = truth.by_bucket()
    assert reproduced["x200"][0] >= 3  # the most duplicated images come back, each found
    assert reproduced["x200"][1] == reproduced["x200"][0] and truth.recall >= 0.9
    assert verdicts.judged >= 3 and verdicts.precision == 1.0
    assert sizes[1] == result.counts["candidates"] and sizes[0] <= 48  # a generation is in one cluster at most
    assert scored == [("loss",)]  # the matched items' loss: CLiD and Wen need a prompt


def test_a_class_conditional_model_is_audited_class_by_class(family_models, demo_clip, demo_world_index, tmp_path):
    """Carlini et al.'s class-conditional setting on the demo world's DiT (an item's class is its
    shape): its class names stand for prompts (all of them when none are given), every generation
    is matched against the training index, and a label that names no class is one line before the
    run. A matched item's loss is conditioned on the class whose generations reproduced it."""
    from scanner.calibration import criterion_statement
    from scanner.config import SamplingConfig, ScanConfig
    from scanner.demo.evaluate import score_extraction, score_unconditional
    from scanner.generate import Prompt
    from scanner.report import render_report
    from scanner.scan import run_scan, unconditional_prompts
    from scanner.store import Store

    model = family_models["dit"]
    assert [p.text for p in unconditional_prompts(model)] == ["bar", "circle", "cross", "diamond", "ring", "square", "star",
                                                            "triangle"]
    index = demo_world_index
    config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=24, batch_size=48))
    classes = [Prompt.from_text(name, source="class label") for name in ("square", "circle")]
    with Store(tmp_path / "scan.duckdb") as store:
        for prompts, given, problem in (([Prompt.from_text("a red circle")], index, "class label 'a red circle' is not one of"),
                                        (classes, None, "a DiTPipeline model is class-conditional: .*give --index")):
            with pytest.raises(MemscanError, match=problem):
                run_scan(store, model, prompts, config, show_progress=False, embedder=demo_clip, index=given)
        assert store.execute("SELECT count(*) FROM runs")[0][0] == 0  # refused before the run began
        result = run_scan(store, model, classes, config, show_progress=False, embedder=demo_clip, index=index)
        truth, verdicts = score_unconditional(store, result.run_id), score_extraction(store, result.run_id)
        scored = store.execute("SELECT attack, count(*) FROM mia_scores WHERE run_id = ? GROUP BY attack", [result.run_id])
        found_by = store.execute("SELECT DISTINCT p.text FROM candidates c JOIN prompts p USING (run_id, prompt_id) "
                                 "WHERE c.run_id = ? ORDER BY 1", [result.run_id])
        matched = store.execute("SELECT count(DISTINCT item_id) FROM matches WHERE run_id = ? "
                                "AND verdict IN ('extracted', 'similar')", [result.run_id])[0][0]
        statement = criterion_statement(store, result.run_id).lines(found_nothing=True)
    print(truth.by_bucket(), truth.recall, verdicts, found_by)
    assert result.counts["generated"] == 48 and result.counts["null_prompts"] == 0
    # the 7 x200 images of the two classes come back (7 of 7, all found, measured); x1 images near them count as reproduced too
    assert truth.by_bucket()["x200"][0] >= 5 and truth.recall >= 0.85
    assert verdicts.judged >= 2 and verdicts.precision == 1.0
    assert found_by == [("circle",), ("square",)]
    assert matched >= 2 and scored == [("loss", matched)]  # every matched item's loss, under the class that drew it
    assert "48 generations of this class-conditional model (2 classes)" in statement[0]
    assert "class-conditional DiT" in statement[1] and "1 in 24 seeds of its class" in statement[-1]
    render_report(tmp_path / "scan.duckdb", tmp_path / "report.html")  # the report says how it was scanned, by class
    assert "its 2 classes sampled stand for prompts" in (tmp_path / "report.html").read_text()


def test_dataset_inference_on_an_unconditional_model_fits_the_loss_per_noise_level(family_models, tmp_path):
    """CLiD's features weaken a caption; with no prompt, dataset inference fits the loss at each
    noise level, and tells heavily duplicated suspects from non-members. A reference model, whose
    comparison is CLiD's, is refused with one line."""
    from scanner import demo as demo_world
    from scanner.mia.dataset import UNCONDITIONAL_FEATURES, run_dataset_inference
    from scanner.mia.labelled import demo_labelled
    from scanner.store import Store

    model = family_models["ddpm"]
    items = demo_labelled(demo_world.membership_items(per_bucket=8, x1=0, nonmembers=16))
    items = [i for i in items if i.member][:16] + [i for i in items if not i.member]
    with Store(tmp_path / "mia.duckdb") as store:
        run_id, verdict = run_dataset_inference(store, model, items)
        [(settings,)] = store.execute("SELECT config FROM runs WHERE run_id = ?", [run_id])
        with pytest.raises(MemscanError, match="an unconditional model takes none: drop --reference-model"):
            run_dataset_inference(store, model, items, reference_model=model)
    assert json.loads(settings)["features"] == UNCONDITIONAL_FEATURES
    assert (verdict.suspect, verdict.reference) == (8, 8) and verdict.p_value < 0.05


def test_the_membership_defaults_are_what_each_model_can_run(family_models, demo_sd):
    """``mia eval`` and ``mia score`` without --attacks run what the model offers: CLiD and Wen on
    a text-to-image denoiser, the loss alone on an unconditional one, Wu et al. on a sampler."""
    from scanner.mia.attacks import check_attacks, default_attacks

    for command in ("eval", "score"):
        for model in (*family_models.values(), BlackBoxOnly(demo_sd)):
            chosen = default_attacks(model.capabilities, command)
            check_attacks(model, chosen)  # none refused
            assert ("clid_th" in chosen) == (model.capabilities == family_models["sd"].capabilities)
        assert default_attacks(family_models["ddpm"].capabilities, command) == ["loss", "loss_vec"]
