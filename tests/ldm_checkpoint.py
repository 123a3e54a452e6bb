"""Write a diffusers StableDiffusionPipeline, StableDiffusionXLPipeline or StableDiffusion3Pipeline
as one original-layout (LDM / SGM / MMDiT) ``.safetensors`` file, the way single-file checkpoints
are shared, so the tests can load the demo models through ``from_single_file`` for real. The
inverse of diffusers' own converters: SD 1 keeps its text encoder under
``cond_stage_model.transformer``, SDXL its first (transformers layout) under
``conditioner.embedders.0.transformer`` and its second (open_clip layout: fused attention
projections) under ``conditioner.embedders.1.model``; SD3's file is its MMDiT and autoencoder
alone, as ``sd3_medium.safetensors`` is shared (the text encoders come from the config folder)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(state: dict, old: str, new: str, out: dict, renames: dict | None = None) -> None:
    for key, value in state.items():
        if key.startswith(old + "."):
            rest = key[len(old) + 1:]
            for a, b in (renames or {}).items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
            out[f"{new}.{rest}"] = value


def unet_to_ldm(state: dict, config: dict) -> dict:
    out: dict = {}
    lpb = config["layers_per_block"]
    blocks = len(config["block_out_channels"])
    for diffusers, ldm in (("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
                           ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2")):
        _rename(state, diffusers, ldm, out)
    for i in range(blocks):
        for j in range(lpb):
            _rename(state, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{1 + i * (lpb + 1) + j}.0", out, RESNET)
            _rename(state, f"down_blocks.{i}.attentions.{j}", f"input_blocks.{1 + i * (lpb + 1) + j}.1", out)
        _rename(state, f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op", out)
        has_attention = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
        for j in range(lpb + 1):
            _rename(state, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{i * (lpb + 1) + j}.0", out, RESNET)
            _rename(state, f"up_blocks.{i}.attentions.{j}", f"output_blocks.{i * (lpb + 1) + j}.1", out)
        _rename(state, f"up_blocks.{i}.upsamplers.0.conv",
                f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attention else 1}.conv", out)
    _rename(state, "mid_block.resnets.0", "middle_block.0", out, RESNET)
    _rename(state, "mid_block.attentions.0", "middle_block.1", out)
    _rename(state, "mid_block.resnets.1", "middle_block.2", out, RESNET)
    _rename(state, "add_embedding.linear_1", "label_emb.0.0", out)  # SDXL's pooled text + size ids
    _rename(state, "add_embedding.linear_2", "label_emb.0.2", out)
    return {f"model.diffusion_model.{k}": v for k, v in out.items()}


def vae_to_ldm(state: dict, config: dict) -> dict:
    out: dict = {}
    blocks = len(config["block_out_channels"])
    for part in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            _rename(state, f"{part}.{name}", f"{part}.{name}", out)
        _rename(state, f"{part}.conv_norm_out", f"{part}.norm_out", out)
        _rename(state, f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", out, {"conv_shortcut": "nin_shortcut"})
        _rename(state, f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", out, {"conv_shortcut": "nin_shortcut"})
        _rename(state, f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", out, VAE_ATTENTION)
    for i in range(blocks):
        _rename(state, f"encoder.down_blocks.{i}.resnets", f"encoder.down.{i}.block", out, {})
        _rename(state, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", out)
        _rename(state, f"decoder.up_blocks.{i}.resnets", f"decoder.up.{blocks - 1 - i}.block", out, {})
        _rename(state, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{blocks - 1 - i}.upsample.conv", out)
    for name in ("quant_conv", "post_quant_conv"):
        _rename(state, name, name, out)
    fixed = {}
    for key, value in out.items():
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        fixed[f"first_stage_model.{key}"] = value
    return fixed


OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}


def clip_to_transformers_layout(state: dict, prefix: str) -> dict:
    # original checkpoints hold the text encoder under text_model.*, as transformers < 5.6 named it
    return {f"{prefix}{k if k.startswith('text_model.') else 'text_model.' + k}": v for k, v in state.items()}


def clip_to_open_clip_layout(state: dict, prefix: str) -> dict:
    """A CLIPTextModelWithProjection in open_clip's layout (SDXL's second text encoder)."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {"token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": state.pop("final_layer_norm.weight"), "ln_final.bias": state.pop("final_layer_norm.bias"),
           "text_projection": state.pop("text_projection.weight").T.contiguous()}
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        layer = f"encoder.layers.{i}."
        for part in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{part}"] = torch.cat(
                [state.pop(f"{layer}self_attn.{name}_proj.{part}") for name in ("q", "k", "v")])
        for key in [k for k in state if k.startswith(layer)]:
            rest = key[len(layer):]
            for a, b in OPEN_CLIP_LAYER.items():
                rest = rest.replace(a, b)
            out[f"transformer.resblocks.{i}.{rest}"] = state.pop(key)
    return {prefix + k: v for k, v in out.items()}


def _swap_halves(weight):
    """The original AdaLayerNormContinuous stores (shift, scale), diffusers (scale, shift)."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def mmdit_to_sd3(state: dict, config: dict) -> dict:
    """An SD3Transformer2DModel's weights in the original MMDiT names (fused q, k, v)."""
    out: dict = {"pos_embed": state["pos_embed.pos_embed"]}
    for diffusers, original in (("pos_embed.proj", "x_embedder.proj"), ("context_embedder", "context_embedder"),
                                ("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
                                ("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
                                ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
                                ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
                                ("proj_out", "final_layer.linear")):
        _rename(state, diffusers, original, out)
    last = config["num_layers"] - 1
    for part in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{part}"] = _swap_halves(state[f"norm_out.linear.{part}"])
        for i in range(config["num_layers"]):
            block, x, context = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
            out[f"{x}attn.qkv.{part}"] = torch.cat([state[f"{block}attn.to_{n}.{part}"] for n in "qkv"])
            out[f"{context}attn.qkv.{part}"] = torch.cat([state[f"{block}attn.add_{n}_proj.{part}"] for n in "qkv"])
            out[f"{x}attn.proj.{part}"] = state[f"{block}attn.to_out.0.{part}"]
            out[f"{x}adaLN_modulation.1.{part}"] = state[f"{block}norm1.linear.{part}"]
            out[f"{x}mlp.fc1.{part}"] = state[f"{block}ff.net.0.proj.{part}"]
            out[f"{x}mlp.fc2.{part}"] = state[f"{block}ff.net.2.{part}"]
            modulation = state[f"{block}norm1_context.linear.{part}"]
            out[f"{context}adaLN_modulation.1.{part}"] = _swap_halves(modulation) if i == last else modulation
            if i != last:  # the last block's context stream is pre-only: no output projection, no MLP
                out[f"{context}attn.proj.{part}"] = state[f"{block}attn.to_add_out.{part}"]
                out[f"{context}mlp.fc1.{part}"] = state[f"{block}ff_context.net.0.proj.{part}"]
                out[f"{context}mlp.fc2.{part}"] = state[f"{block}ff_context.net.2.{part}"]
    return {f"model.diffusion_model.{k}": v for k, v in out.items()}


def write_single_file(pipeline, path: Path) -> Path:
    state = {}
    if getattr(pipeline, "transformer", None) is not None:  # SD3: the MMDiT and autoencoder
        state.update(mmdit_to_sd3(pipeline.transformer.state_dict(), dict(pipeline.transformer.config)))
        state.update(vae_to_ldm(pipeline.vae.state_dict(), dict(pipeline.vae.config)))
        return _save(state, path)
    state.update(unet_to_ldm(pipeline.unet.state_dict(), dict(pipeline.unet.config)))
    state.update(vae_to_ldm(pipeline.vae.state_dict(), dict(pipeline.vae.config)))
    if getattr(pipeline, "text_encoder_2", None) is not None:
        state.update(clip_to_transformers_layout(pipeline.text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        state.update(clip_to_open_clip_layout(pipeline.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    else:
        state.update(clip_to_transformers_layout(pipeline.text_encoder.state_dict(), "cond_stage_model.transformer."))
    return _save(state, path)


def _save(state: dict, path: Path) -> Path:
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}, str(path))
    return path
