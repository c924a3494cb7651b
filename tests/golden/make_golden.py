"""Regenerates the golden files of tests/test_golden.py (run from the repository root):

    PYTHONPATH=src python tests/golden/make_golden.py

``model.safetensors``: a nano GARE model (embed dim 8, one-layer towers, seqTransf temporal module, psi), seeded
initialization, saved with ``GareModel.save`` (the project checkpoint format). ``expected.safetensors``: fixed
inputs (frames with a padded slot) and the outputs of that model: text embeddings, video embeddings (temporal
outputs), vbar and the similarity matrix, with the texts in its metadata. Run it again only when a change of the
format or of the numerics is intended, and say so in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from gare.config import load_config
from gare.model import GareModel

HERE = Path(__file__).resolve().parent
TEXTS = ["a red circle moves left", "a blue square grows", "two green triangles"]
# the text tower is 4 wide so that the 49408-token embedding table keeps the checkpoint under 1 MB
NANO_ARCH = ("model.backbone.arch_cfg={embed_dim: 8, vision_cfg: {image_size: 32, layers: 1, width: 8, patch_size: 16, "
             "head_width: 8}, text_cfg: {context_length: 77, vocab_size: 49408, width: 4, heads: 1, layers: 1}}")
OVERRIDES = [NANO_ARCH, "model.backbone.max_words=16", "model.temporal.layers=1", "model.temporal.init_from_text=false",
             "model.scorer.psi.dropout=0.0"]


def make_model() -> GareModel:
    torch.manual_seed(0)
    model = GareModel(load_config(None, OVERRIDES).model).eval()
    with torch.no_grad():  # a psi whose increments matter: scale its output head up from the small initial values
        for name, p in model.scorer.psi.named_parameters():
            if "mean_proj" in name:
                p.mul_(20.0)
    return model


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(2, 4, 3, 32, 32, generator=g)  # [N_v, F, 3, H, W]
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])  # the second video has 3 frames
    return frames, mask


@torch.no_grad()
def outputs(model: GareModel, frames: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    t = model.encode_text(TEXTS)  # [3, D]
    v = model.encode_video(frames, mask)  # [2, F, D]
    return {"text": t, "video": v, "vbar": model.mean_video(v, mask), "similarity": model.similarity(t, v, mask)}


def main() -> None:
    model = make_model()
    model.save(HERE / "model.safetensors")
    frames, mask = inputs()
    out = outputs(model, frames, mask)
    save_file({"frames": frames, "mask": mask.to(torch.uint8), **{k: v.contiguous() for k, v in out.items()}},
              str(HERE / "expected.safetensors"), metadata={"texts": json.dumps(TEXTS)})
    for name in ("model.safetensors", "expected.safetensors"):
        print(f"{name}: {(HERE / name).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
