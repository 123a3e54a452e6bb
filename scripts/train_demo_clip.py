"""Train the demo CLIP: a tiny open_clip model (custom config) trained contrastively.

Training data: the demo world's CLIP training rows (``clip_train``): the distinct member
object items and the images of the member identities, captioned with their names. The
non-member identities never appear, so identity inference has a ground truth.

    python scripts/train_demo_clip.py      # about 10 minutes on 2 cores

Writes ``scanner/demo/clip-tiny/`` in open_clip's local-dir layout: ``open_clip_config.json``
(``model_cfg`` + ``preprocess_cfg``) and ``open_clip_model.safetensors`` (float16).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "scanner" / "demo" / "world.parquet"
OUT = ROOT / "scanner" / "demo" / "clip-tiny"
SEED = 4321
MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalization, recorded in preprocess_cfg
STD = (0.26862954, 0.26130258, 0.27577711)
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
PREPROCESS_CFG = {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic", "resize_mode": "shortest", "size": 32}
IDENTITY_TEMPLATES = ["a photo of {}", "{}", "a picture of {}", "a portrait of {}", "{} in a photo"]


def log(message: str, log_file: Path) -> None:
    line = f"{time.strftime('%H:%M:%S')} {message}"
    print(line, flush=True)
    with log_file.open("a") as handle:
        handle.write(line + "\n")


def main() -> None:
    import open_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--log", type=Path, default=ROOT / "scanner" / "demo" / "logs" / "train_clip.log")
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    log(f"start torch {torch.__version__} open_clip {open_clip.__version__} args {vars(args)}", args.log)

    rows = [r for r in pq.read_table(WORLD).to_pylist() if r["clip_train"]]
    images = np.stack([np.asarray(Image.open(io.BytesIO(r["image_png"])).convert("RGB")) for r in rows])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    pixels = (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    tokenizer = open_clip.tokenize  # the BPE tokenizer open_clip ships
    identities = [r["identity"] for r in rows]
    captions_per_template = [
        tokenizer([template.format(name) if name else row["caption"] for name, row in zip(identities, rows)],
                  context_length=MODEL_CFG["text_cfg"]["context_length"])
        for template in IDENTITY_TEMPLATES
    ]
    # distinct texts get distinct targets: a batch holding two images of one person treats both as positives
    group_of = {}
    groups = torch.tensor([group_of.setdefault(name or row["caption"], len(group_of)) for name, row in zip(identities, rows)])
    log(f"{len(rows)} training images ({sum(1 for n in identities if n)} of {len(set(n for n in identities if n))} identities)", args.log)

    torch.manual_seed(SEED)
    model = open_clip.model.CLIP(**MODEL_CFG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    warmup = 200
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    generator = torch.Generator().manual_seed(SEED)
    start, running = time.time(), 0.0
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(rows), (args.batch_size,), generator=generator)
        template = int(torch.randint(0, len(IDENTITY_TEMPLATES), (1,), generator=generator))
        shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
        batch = torch.roll(pixels[index], shifts=shift, dims=(2, 3))
        image_features = F.normalize(model.encode_image(batch), dim=-1)
        text_features = F.normalize(model.encode_text(captions_per_template[template][index]), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        same = (groups[index][:, None] == groups[index][None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
        loss = 0.5 * (torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
                      + torch.sum(-targets * F.log_softmax(logits.T, dim=1), dim=1).mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running += loss.item()
        if step % 100 == 0 or step == args.steps:
            log(f"clip step {step}/{args.steps} loss {running / 100:.4f} ({time.time() - start:.0f}s)", args.log)
            running = 0.0

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, indent=2))
    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, OUT / "open_clip_model.safetensors")
    size = sum(f.stat().st_size for f in OUT.iterdir())
    log(f"model written to {OUT} ({size / 1e6:.1f} MB)", args.log)


if __name__ == "__main__":
    main()
