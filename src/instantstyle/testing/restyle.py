"""Tiny stand-ins for restyling a photo (InstantStyle-Plus): photos, a square style image, a CSD checkpoint with its
content head, and a tiny BLIP captioner.

The photos are written at the sizes the cases make, so the authors' script (which resizes the photo to the output
size) and ours see the same pixels; the style image is 512 x 512 because the authors' script squashes the style
reference to 512 x 512 before CLIP sees it. The CSD file is a ``{"model_state_dict": ...}`` checkpoint with DDP's
``module.`` prefix, which the authors' ``torch.load`` reads as it is. The captioner is a transformers
``BlipForConditionalGeneration`` with its processor (a BERT word-piece tokenizer written offline), saved as the hub's
``Salesforce/blip-image-captioning-*`` folders are, so ``--caption-model`` loads it through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .csd import csd_state_dict
from .fixtures import TinyModels, make_style_image
from .modes import _build_controlnet
from .trees import build_once

RESTYLE_VERSION = "1"
#: The photos' sizes (width, height): the default case's and another size's.
PHOTO_SIZES = {"photo": (64, 64), "photo-wide": (80, 64)}
_CAPTION_WORDS = ("a", "photo", "of", "cat", "dog", "house", "red", "blue", "on", "the", "with", "tree")


@dataclass(frozen=True)
class RestyleModels:
    """Paths of the restyle fixtures (see ``tiny_restyle_models``)."""

    root: Path
    photo: Path  # 64 x 64: a disc and a bar on a gradient, edges of equal brightness included
    photo_wide: Path  # 80 x 64
    style: Path  # 512 x 512
    csd: Path  # {"model_state_dict": {"module.backbone...", "module.last_layer_style", ...}}
    captioner: Path  # a BLIP image-captioning folder
    controlnet: Path  # an SDXL ControlNet from the tiny SDXL's UNet, every weight seeded (reference data depend on it)


def _layout(root: Path) -> RestyleModels:
    return RestyleModels(root, root / "photo.png", root / "photo-wide.png", root / "style.png", root / "csd.pth",
                         root / "blip", root / "sdxl-controlnet")


def make_photo(path: Path, size: tuple[int, int]) -> Path:
    """A 'photo': a colour gradient with a yellow disc and a bar whose colour has the background's brightness."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x * 255 / width, y * 255 / height, 255 - (x + y) * 128 / (width + height)], axis=-1)
    img[(x - 0.6 * width) ** 2 + (y - 0.4 * height) ** 2 < (0.2 * min(width, height)) ** 2] = (250, 230, 40)
    img[(x > 0.15 * width) & (x < 0.3 * width) & (y > 0.5 * height)] = (40, 160, 120)
    Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8)).save(path)
    return path


def _build_captioner(dest: Path, seed: int) -> None:
    """A BLIP captioner (ViT + BERT text decoder) at tiny widths, its processor with a word-piece vocabulary."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    dest.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_CAPTION_WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    (dest / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(dest / "vocab.txt"), bos_token="[DEC]", model_max_length=32)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    config = BlipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16},
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "encoder_hidden_size": 32,
                     "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id,
                     "sep_token_id": tokenizer.sep_token_id, "eos_token_id": tokenizer.sep_token_id,
                     "max_position_embeddings": 64},
        projection_dim=32,
    )
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).save_pretrained(str(dest))
    processor.save_pretrained(str(dest))


def tiny_restyle_models(root: Path, tiny: TinyModels, seed: int = 0) -> RestyleModels:
    """Build (once, atomically) and return the restyle fixtures under ``root`` (the ControlNet from ``tiny``'s SDXL).
    Every weight comes from a seeded generator, so two builds are byte-identical: the reference data in
    ``tests/data/restyle`` were made with them."""
    root = Path(root).expanduser().absolute()

    def build(tmp: Path) -> None:
        _build_controlnet(tiny.sdxl / "unet", tmp / "sdxl-controlnet", seed + 9)
        for name, size in PHOTO_SIZES.items():
            make_photo(tmp / f"{name}.png", size)
        make_style_image(tmp / "style.png", (512, 512), seed=5)
        torch.save({"model_state_dict": {f"module.{k}": v for k, v in csd_state_dict(seed=seed + 7).items()}},
                   tmp / "csd.pth")
        _build_captioner(tmp / "blip", seed + 8)

    build_once(root, RESTYLE_VERSION, build)
    return _layout(root)
