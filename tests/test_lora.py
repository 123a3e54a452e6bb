"""LoRA fine-tunes (issue 20): loaded through memscan exactly as diffusers loads them, part of the
model's identity, and refused in one line when they cannot apply."""

import numpy as np
import pytest

from scanner.demo import FAMILY_MODELS, FINETUNE_LORA, SD_MODEL
from scanner.errors import MemscanError
from scanner.models.loading import ModelSpec

PROMPTS = ["two red circles at the left on a teal background", "one blue star at the top on a grey background"]


@pytest.fixture(scope="module")
def fine_tune():
    return ModelSpec.of(SD_MODEL, device="cpu", loras=[f"{FINETUNE_LORA}:0.8"]).load()


def test_a_lora_gives_the_images_diffusers_gives(fine_tune):
    import torch
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(SD_MODEL, torch_dtype=torch.float32, safety_checker=None,
                                                       requires_safety_checker=False, local_files_only=True)
    pipeline.load_lora_weights(str(FINETUNE_LORA.parent), weight_name=FINETUNE_LORA.name, adapter_name="ours")
    pipeline.set_adapters(["ours"], adapter_weights=[0.8])
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(PROMPTS, generator=[torch.Generator().manual_seed(seed) for seed in (3, 4)], num_inference_steps=6,
                      guidance_scale=5.0, output_type="np").images
    ours = fine_tune.generate(PROMPTS, [3, 4], num_inference_steps=6, guidance_scale=5.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_scale_zero_is_the_base_model_and_the_scale_is_part_of_the_identity(fine_tune, demo_sd):
    at_zero = ModelSpec.of(SD_MODEL, device="cpu", loras=[f"{FINETUNE_LORA}:0"]).load()
    base = demo_sd.generate(PROMPTS, [0, 1], num_inference_steps=6, guidance_scale=5.0)
    np.testing.assert_array_equal(at_zero.generate(PROMPTS, [0, 1], num_inference_steps=6, guidance_scale=5.0), base)
    assert not np.allclose(fine_tune.generate(PROMPTS, [0, 1], num_inference_steps=6, guidance_scale=5.0), base, atol=1e-3)
    assert len({demo_sd.model_hash, at_zero.model_hash, fine_tune.model_hash}) == 3
    assert "LoRA pytorch_lora_weights.safetensors@0.8" in fine_tune.model_ref


def test_a_lora_that_cannot_apply_is_one_line(tmp_path):
    with pytest.raises(MemscanError, match="no such LoRA file"):
        ModelSpec.of(SD_MODEL, loras=[str(tmp_path / "missing.safetensors")]).load()
    pickled = tmp_path / "lora.bin"
    pickled.write_bytes(b"not loaded")
    with pytest.raises(MemscanError, match="pickled weights are never loaded"):
        ModelSpec.of(SD_MODEL, loras=[str(pickled)]).load()
    with pytest.raises(MemscanError, match="the scale nan is not a finite number"):
        ModelSpec.of(SD_MODEL, loras=[f"{FINETUNE_LORA}:nan"])
    # the demo model's LoRA on the SDXL-shaped model: another architecture's modules, the first named
    with pytest.raises(MemscanError, match="shapes do not fit this model's modules, first [a-z_]+[.]") as refused:
        ModelSpec.of(FAMILY_MODELS["sdxl"], loras=[str(FINETUNE_LORA)]).load()
    assert "\n" not in str(refused.value)
    # a file whose keys match no module at all: diffusers would only warn, and the audit be of the base model
    import torch
    from safetensors.torch import save_file

    unmatched = tmp_path / "unmatched.safetensors"
    save_file({"text_model.no_such_module.lora_A.weight": torch.zeros(2, 2)}, str(unmatched))
    with pytest.raises(MemscanError, match="match this StableDiffusionPipeline's modules, first text_model.no_such_module"):
        ModelSpec.of(SD_MODEL, loras=[str(unmatched)]).load()


def reference_items(count: int = 4):
    from scanner import demo as demo_world
    from scanner.mia.evaluate import LabelledItem

    rows = demo_world.membership_items(per_bucket=1, x1=1, nonmembers=count - 4)
    return [LabelledItem(r["item_id"], r["caption"], demo_world.decode_png(r["image_png"]), r["dup_count"] > 0) for r in rows]


def test_the_reference_attacks_share_the_noise_so_identical_models_differ_by_exactly_zero(demo_sd, fine_tune):
    from scanner.mia.denoising import NoiseProtocol
    from scanner.mia.evaluate import attack_scores

    items, protocol = reference_items(), NoiseProtocol(timesteps=(200, 400), repeats=2)
    same = attack_scores(demo_sd, items, ["loss_ref", "clid_ref"], protocol, reference_model=demo_sd)
    assert np.all(same["loss_ref"]["score"] == 0) and np.all(same["clid_ref"]["features"] == 0)
    # against the base, the fine-tune's difference is its own loss minus the base's, item by item
    differs = attack_scores(fine_tune, items, ["loss", "loss_ref"], protocol, reference_model=demo_sd)
    base = attack_scores(demo_sd, items, ["loss"], protocol)
    np.testing.assert_allclose(differs["loss_ref"]["score"], differs["loss"]["score"] - base["loss"]["score"], atol=1e-6)
    assert np.any(differs["loss_ref"]["score"] != 0)


def test_a_reference_attack_without_a_reference_or_of_another_family_is_one_line(demo_sd):
    from scanner.config import FeatureConfig, RayConfig
    from scanner.models.loading import attack_models

    with pytest.raises(MemscanError, match="give --reference-model"):
        attack_models(ModelSpec.of(SD_MODEL), ["loss", "loss_ref"], FeatureConfig(), RayConfig())
    with pytest.raises(MemscanError, match="must be of the audited model's family") as refused:
        attack_models(ModelSpec.of(SD_MODEL), ["loss_ref"], FeatureConfig(), RayConfig(),
                      reference=ModelSpec.of(FAMILY_MODELS["sdxl"]))
    assert "StableDiffusionXLPipeline" in str(refused.value) and "\n" not in str(refused.value)


def test_model_guidance_runs_from_the_reference_at_zero_to_the_fine_tune_at_one(demo_sd, fine_tune):
    from scanner.mia.denoising import NoiseProtocol
    from scanner.mia.evaluate import attack_scores

    guided = {w: fine_tune.guided_by(demo_sd, w) for w in (0.0, 1.0, 3.0)}
    draw = lambda model: model.generate(PROMPTS, [5, 6], num_inference_steps=6, guidance_scale=5.0)  # noqa: E731
    np.testing.assert_allclose(draw(guided[0.0]), draw(demo_sd), atol=1e-4)
    np.testing.assert_allclose(draw(guided[1.0]), draw(fine_tune), atol=1e-4)
    assert not np.allclose(draw(guided[3.0]), draw(fine_tune), atol=1e-3)
    assert len({model.model_hash for model in (*guided.values(), fine_tune)}) == 4
    # the denoiser stays the fine-tune's own: guidance changes sampling only
    protocol = NoiseProtocol(timesteps=(300,), repeats=1)
    np.testing.assert_array_equal(attack_scores(guided[3.0], reference_items(), ["loss"], protocol)["loss"]["score"],
                                  attack_scores(fine_tune, reference_items(), ["loss"], protocol)["loss"]["score"])


def test_a_scan_guided_from_nothing_is_one_line():
    from scanner.config import SamplingConfig, ScanConfig

    with pytest.raises(MemscanError, match="reference_guidance needs a reference model"):
        ScanConfig(sampling=SamplingConfig(reference_guidance=3.0))


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_a_lora_of_another_familys_denoiser_applies_and_at_scale_zero_is_the_base(family, tmp_path):
    """Issues 14 and 22: LoRA on the other families diffusers supports it for, through the same path
    (each family's own LoRA format, as its training script saves it): a random LoRA of the
    denoiser's attention."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    folder = FAMILY_MODELS[family]
    model = ModelSpec.of(folder, device="cpu").load()
    denoiser = model.denoiser
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in denoiser.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: a LoRA that changes nothing
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    type(model.pipeline).save_lora_weights(tmp_path, weight_name=f"{family}_lora.safetensors",
                                           **{f"{model.denoiser_name}_lora_layers": get_peft_model_state_dict(denoiser)})
    lora = tmp_path / f"{family}_lora.safetensors"
    images = {scale: ModelSpec.of(folder, device="cpu", loras=[f"{lora}:{scale}"] if scale is not None else []).load()
              .generate(PROMPTS[:1], [2], num_inference_steps=4, guidance_scale=5.0) for scale in (None, 0, 1)}
    np.testing.assert_array_equal(images[0], images[None])
    assert np.abs(images[1] - images[None]).max() > 1e-3


def kohya_flux_double_blocks(peft_state: dict) -> dict:
    """A Flux LoRA of the double blocks' image attention in kohya's (sd-scripts') layout, the form
    most Flux LoRAs are shared in: q, k and v fused into one ``qkv`` LoRA whose up matrix is block
    diagonal (diffusers splits it back exactly), alpha equal to the rank (scale 1, as peft's)."""
    import torch

    def pair(module: str) -> tuple:
        return peft_state[f"{module}.lora_A.weight"], peft_state[f"{module}.lora_B.weight"]

    out = {}
    blocks = sorted({int(key.split(".")[1]) for key in peft_state if key.startswith("transformer_blocks.")})
    for i in blocks:
        attention = f"transformer_blocks.{i}.attn"
        downs, ups = zip(*(pair(f"{attention}.to_{n}") for n in "qkv"))
        fused = f"lora_unet_double_blocks_{i}_img_attn_qkv"
        out[f"{fused}.lora_down.weight"] = torch.cat(downs)
        out[f"{fused}.lora_up.weight"] = torch.block_diag(*ups)
        out[f"{fused}.alpha"] = torch.tensor(float(sum(len(d) for d in downs)))
        down, up = pair(f"{attention}.to_out.0")
        out[f"lora_unet_double_blocks_{i}_img_attn_proj.lora_down.weight"] = down
        out[f"lora_unet_double_blocks_{i}_img_attn_proj.lora_up.weight"] = up
        out[f"lora_unet_double_blocks_{i}_img_attn_proj.alpha"] = torch.tensor(float(len(down)))
    return {key: value.contiguous() for key, value in out.items()}


def test_a_kohya_flux_lora_gives_the_images_of_the_same_lora_in_diffusers_layout(tmp_path):
    """Issue 22: Flux LoRAs are mostly shared in kohya's layout. (Its single blocks' fused
    projection is split by diffusers at the released width, 3072, so this LoRA keeps to the double
    blocks, as many do.)"""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    model = ModelSpec.of(FAMILY_MODELS["flux"], device="cpu").load()
    denoiser = model.denoiser
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=r"^transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0)$"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in denoiser.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    state = get_peft_model_state_dict(denoiser)
    type(model.pipeline).save_lora_weights(tmp_path, weight_name="diffusers.safetensors", transformer_lora_layers=state)
    save_file(kohya_flux_double_blocks(state), str(tmp_path / "kohya.safetensors"))
    images = {name: ModelSpec.of(FAMILY_MODELS["flux"], device="cpu", loras=loras).load()
              .generate(PROMPTS[:1], [2], num_inference_steps=4)
              for name, loras in (("base", []), ("diffusers", [str(tmp_path / "diffusers.safetensors")]),
                                  ("kohya", [str(tmp_path / "kohya.safetensors")]))}
    assert np.abs(images["diffusers"] - images["base"]).max() > 0.05
    np.testing.assert_allclose(images["kohya"], images["diffusers"], atol=1e-5)


def test_a_lora_on_a_family_diffusers_has_no_lora_support_for_is_one_line():
    with pytest.raises(MemscanError, match="--lora: diffusers has no LoRA support for a PixArtAlphaPipeline"):
        ModelSpec.of(FAMILY_MODELS["pixart"], device="cpu", loras=[str(FINETUNE_LORA)]).load()
