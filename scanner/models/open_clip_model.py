"""Adapter for open_clip models: any architecture, local weights only.

Two ways in, both offline:
- a folder with ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and weights,
  loaded through open_clip's ``local-dir:`` schema, so the preprocessing is the folder's own;
- an architecture name (built in, or registered from a JSON config) plus a local weights file.
The preprocessing config in use is kept on the adapter and recorded with every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from scanner.errors import input_error
from scanner.models import force_offline, load_failure, refuse_pickles
from scanner.models.diffusers_t2i import hash_files, pick_device


class OpenClip:
    """An open_clip model behind memscan's ``ImageTextEmbedder`` interface."""

    def __init__(self, model, preprocess, tokenizer, model_ref: str, model_hash: str, device: str):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_ref = model_ref
        self.model_hash = model_hash
        self.device = device
        self.preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}))
        self.dim = int(model.text_projection.shape[1] if hasattr(model, "text_projection") and model.text_projection is not None
                       else model.visual.output_dim)

    @classmethod
    def load(cls, model: str | Path, pretrained: str | Path | None = None, device: str | None = None,
             allow_pickle: bool = False) -> "OpenClip":
        """A folder, or an architecture name and a weights file; pickled weights (a ``.bin`` or
        ``.pt`` in the folder, or as the file) are refused unless ``allow_pickle``."""
        force_offline()
        import open_clip

        device = pick_device(device)
        model_path = Path(model)
        if model_path.is_dir():
            if not (model_path / "open_clip_config.json").is_file():
                raise input_error(model_path, "not an open_clip model folder: open_clip_config.json is missing")
            name, weights, files = f"local-dir:{model_path}", None, list(model_path.iterdir())
            refuse_pickles((f for f in files if f.is_file()), allow_pickle)
            root = model_path
        else:
            if pretrained is None:
                raise input_error(model, "not a folder; give an open_clip architecture name with --clip-pretrained FILE, "
                                         "or a folder holding open_clip_config.json and weights")
            weights = Path(pretrained)
            if not weights.is_file():
                raise input_error(weights, "no such weights file")
            refuse_pickles([weights], allow_pickle)
            if weights.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
                raise input_error(weights, "unknown weights format; expected .safetensors (or a torch file)")
            name, files, root = str(model), [weights], weights.parent
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=str(weights) if weights else None, device=device, load_weights=True)
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as error:  # open_clip raises RuntimeError, ValueError, KeyError...
            raise input_error(model, f"cannot load as an open_clip model: {load_failure(error)}") from None
        return cls(clip, preprocess, tokenizer, model_ref=str(Path(model).resolve()) if model_path.exists() else str(model),
                   model_hash=hash_files([f for f in files if f.is_file()], root), device=device)

    def embed_images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        import torch
        from PIL import Image

        chunks = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(Image.fromarray(image)) for image in images[start:start + batch_size]])
            with torch.inference_mode():
                features = self.model.encode_image(batch.to(self.device), normalize=True)
            chunks.append(features.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        import torch

        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
            with torch.inference_mode():
                features = self.model.encode_text(tokens, normalize=True)
            chunks.append(features.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
