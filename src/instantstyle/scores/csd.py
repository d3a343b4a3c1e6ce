"""CSD, the style descriptor of Somepalli et al. 2024 ("Measuring Style Similarity in Diffusion Models").

CSD is OpenAI CLIP's ViT-L/14 image tower (the ``visual`` module of the ``clip`` package, its own
projection removed) fine-tuned with a style projection head: the style embedding of an image is
``normalize(ln_post(cls token) @ last_layer_style)``; its content head ``last_layer_content`` gives the content
embedding the same way (InstantStyle-Plus's content score and content guidance). The authors' checkpoint keeps
that module's keys (``backbone.conv1.weight``, ``backbone.transformer.resblocks.N.attn.in_proj_weight``...,
``last_layer_style``, ``last_layer_content``), inside a training checkpoint
(``{"model_state_dict": ..., "args": Namespace, ...}``, DDP's ``module.`` prefix optional) or as a
plain state dict / ``.safetensors`` file. Here the backbone runs as transformers' ``CLIPVisionModel``
(the same network; the keys are renamed), and a checkpoint is read without running any pickled
code: ``.safetensors``, or ``torch.load(weights_only=True)`` allowing only the plain data types the
authors' file holds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from ..errors import UserError

#: CLIP's normalisation, which CSD's preprocessing (``transforms_branch0``) uses.
CSD_MEAN = (0.48145466, 0.4578275, 0.40821073)
CSD_STD = (0.26862954, 0.26130258, 0.27577711)
#: File names tried, in order, when ``--csd`` names a folder (a hub download of the model).
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "checkpoint.pth")
#: The networks CSD is: OpenAI CLIP's ViT-L/14 (the released checkpoint) or ViT-B/16 (the authors' ``vit_base``),
#: both at 224 px. Anything else is refused before it runs (a crafted 90,001-row positional embedding made a
#: 4,200 px input that held a core for minutes per image).
CSD_PATCHES, CSD_IMAGE_SIZE, MAX_CSD_WIDTH, MAX_CSD_LAYERS = (14, 16), 224, 1024, 24
CSD_SHAPES = "CSD is a CLIP ViT-B/16 or ViT-L/14 at 224 px (at most 1024 wide, 24 layers)"
#: The style head's name in a CSD checkpoint (what the models folders recognise one by, too).
STYLE_HEAD = "last_layer_style"
_BLOCK_KEY = re.compile(r"backbone\.transformer\.resblocks\.(\d+)\.(.+)")
#: OpenAI CLIP's residual-block names -> transformers' (the attention's packed in_proj is split below).
_BLOCK_NAMES = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_TOP_NAMES = {
    "backbone.class_embedding": "embeddings.class_embedding",
    "backbone.positional_embedding": "embeddings.position_embedding.weight",
    "backbone.conv1.weight": "embeddings.patch_embedding.weight",
    "backbone.ln_pre.weight": "pre_layrnorm.weight", "backbone.ln_pre.bias": "pre_layrnorm.bias",
    "backbone.ln_post.weight": "post_layernorm.weight", "backbone.ln_post.bias": "post_layernorm.bias",
}


@dataclass
class CsdModel:
    """CSD's backbone (a transformers ``CLIPVisionModel``), its style head (width, dim) and its content head (the
    same shape; ``None`` in a file without one)."""

    backbone: CLIPVisionModel
    style_head: torch.Tensor
    identity: str
    content_head: torch.Tensor | None = None

    @property
    def image_size(self) -> int:
        size = self.backbone.config.image_size
        assert isinstance(size, int)  # set from the checkpoint's shapes in convert_state
        return size

    @property
    def embed_dim(self) -> int:
        return int(self.style_head.shape[1])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> CsdModel:
        """Move (and cast) in place; returns itself."""
        self.backbone.to(device=device, dtype=dtype)  # type: ignore[call-arg]  # transformers types .to loosely
        self.style_head = self.style_head.to(device=device, dtype=dtype or self.style_head.dtype)
        if self.content_head is not None:
            self.content_head = self.content_head.to(device=device, dtype=dtype or self.content_head.dtype)
        return self


def _allowed_globals() -> list[Any]:
    """The non-tensor types inside the authors' training checkpoint: its argparse ``args`` and the numpy
    scalars in it. Plain data, constructed without running code from the file."""
    import argparse

    allowed: list[Any] = [argparse.Namespace, np.dtype]
    allowed += [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar  # type: ignore[attr-defined]
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    return allowed


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The CSD state dict in a file (or a folder holding one), prefixes stripped; never unpickles code."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = next((path / name for name in FOLDER_FILES if (path / name).is_file()), None)
        if found is None:
            raise UserError(f"CSD checkpoint {path}: a folder without {', '.join(FOLDER_FILES)}")
        path = found
    if not path.is_file():
        raise UserError(f"CSD checkpoint {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path))
        except Exception as err:  # safetensors raises several types for a bad file
            raise UserError(f"CSD checkpoint {path}: not a readable safetensors file ({type(err).__name__})") from None
    else:
        raw = _load_pickle(path)
    if isinstance(raw, dict) and isinstance(raw.get("model_state_dict"), dict):
        raw = raw["model_state_dict"]  # the authors' training checkpoint
    elif isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise UserError(f"CSD checkpoint {path}: holds no state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in raw.items()}


def _load_pickle(path: Path) -> Any:
    """``torch.load(weights_only=True)``: a file whose pickle would call anything but the allowed data
    types (``os.system``, ``exec``...) is refused before it runs."""
    import pickle

    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise UserError(
                f"CSD checkpoint {path}: refused, its pickle calls {found.group(1)} (only tensors and plain data "
                "are loaded; use a .safetensors file)"
            ) from None
        raise UserError(f"CSD checkpoint {path}: not a torch checkpoint of tensors and plain data") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"CSD checkpoint {path}: not a readable torch checkpoint ({type(err).__name__})") from None


def convert_state(state: dict[str, torch.Tensor], where: str = "CSD checkpoint") -> tuple[
    CLIPVisionConfig, dict[str, torch.Tensor], torch.Tensor
]:
    """(backbone config, backbone state in transformers' names, style head) from CSD's keys.
    Widths, depth, patch and input size come from the tensors; heads are width // 64, as in CLIP."""
    missing = [k for k in (*_TOP_NAMES, STYLE_HEAD) if k not in state]
    if missing:
        raise UserError(f"{where}: not a CSD (CLIP ViT) checkpoint, missing {', '.join(missing[:4])}")
    converted = {new: state[old] for old, new in _TOP_NAMES.items()}
    layers: set[int] = set()
    for key, value in state.items():
        if key in _TOP_NAMES or key in (STYLE_HEAD, "backbone.proj") or key.startswith("last_layer_content"):
            continue
        match = _BLOCK_KEY.fullmatch(key)
        rest = match.group(2).replace("attn.in_proj_", "attn.in_proj.") if match else ""
        name, _, kind = rest.rpartition(".")
        prefix = f"encoder.layers.{match.group(1)}." if match else ""
        if match and name == "attn.in_proj" and kind in ("weight", "bias"):
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                converted[f"{prefix}self_attn.{proj}.{kind}"] = part
        elif match and name in _BLOCK_NAMES and kind in ("weight", "bias"):
            converted[f"{prefix}{_BLOCK_NAMES[name]}.{kind}"] = value
        else:
            raise UserError(f"{where}: unexpected key {key!r} (not CSD's CLIP ViT layout)")
        layers.add(int(match.group(1)))
    if state["backbone.conv1.weight"].ndim != 4 or state["backbone.positional_embedding"].ndim != 2:
        raise UserError(f"{where}: inconsistent CSD tensor shapes")
    width, _, patch, _ = state["backbone.conv1.weight"].shape
    positions = state["backbone.positional_embedding"].shape[0]
    grid = round((positions - 1) ** 0.5)
    head = state[STYLE_HEAD]
    fc = state.get("backbone.transformer.resblocks.0.mlp.c_fc.weight")
    if (grid * grid + 1 != positions or head.ndim != 2 or head.shape[0] != width or fc is None
            or layers != set(range(len(layers))) or not 0 < fc.shape[0] <= 4 * width):
        raise UserError(f"{where}: inconsistent CSD tensor shapes")
    if patch not in CSD_PATCHES or grid * patch != CSD_IMAGE_SIZE:
        raise UserError(f"{where}: a ViT of patch {patch} at {grid * patch} px ({positions:,} positions); {CSD_SHAPES}")
    if width > MAX_CSD_WIDTH or head.shape[1] > MAX_CSD_WIDTH:
        raise UserError(f"{where}: a ViT {max(width, head.shape[1])} wide; {CSD_SHAPES}")
    if len(layers) > MAX_CSD_LAYERS:
        raise UserError(f"{where}: a ViT of {len(layers)} layers; {CSD_SHAPES}")
    config = CLIPVisionConfig(
        hidden_size=width, intermediate_size=fc.shape[0],
        num_hidden_layers=len(layers), num_attention_heads=max(1, width // 64), image_size=grid * patch,
        patch_size=patch, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=head.shape[1],
    )
    return config, converted, head


def load_csd(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> CsdModel:
    """Build CSD from a checkpoint file (or folder): the authors' ``checkpoint.pth``, a plain state dict,
    or ``.safetensors``. Bad or unsafe files are a one-line ``UserError``."""
    from accelerate import init_empty_weights

    state = read_checkpoint(path)
    config, backbone_state, head = convert_state(state, f"CSD checkpoint {path}")
    poisoned = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if poisoned is not None:  # it would score every image "-" without a word
        raise UserError(f"CSD checkpoint {path}: holds values that are not finite numbers (NaN or inf) in {poisoned}")
    with init_empty_weights():  # parameters come from the file; buffers (position ids) stay real
        backbone = CLIPVisionModel(config)
    target = getattr(backbone, "vision_model", backbone)  # transformers 4 nests the tower one level down
    try:
        target.load_state_dict({k: v.float() for k, v in backbone_state.items()}, strict=True, assign=True)
    except RuntimeError:  # a block's tensors of other sizes than the first block's
        raise UserError(f"CSD checkpoint {path}: inconsistent CSD tensor shapes") from None
    content = state.get("last_layer_content")
    content = content.float() if isinstance(content, torch.Tensor) and content.shape == head.shape else None
    model = CsdModel(backbone.eval(), head.float(), str(path), content)
    return model.to(device, dtype)


def preprocess(images: Sequence[Image.Image], size: int = 224) -> torch.Tensor:
    """CSD's evaluation transform (torchvision ``Resize(size, BICUBIC)``, ``CenterCrop(size)``,
    ``ToTensor``, CLIP ``Normalize``) with PIL: the short side to ``size`` (the long one truncated),
    the centre crop offset rounded as torchvision rounds it."""
    mean = torch.tensor(CSD_MEAN)[:, None, None]
    std = torch.tensor(CSD_STD)[:, None, None]
    batch = []
    for image in images:
        image = image.convert("RGB")
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_long = int(size * long / short)
        resized = image.resize((size, new_long) if width <= height else (new_long, size), Image.Resampling.BICUBIC)
        left, top = round((resized.width - size) / 2.0), round((resized.height - size) / 2.0)
        crop = resized.crop((left, top, left + size, top + size))
        pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)
        batch.append((pixels - mean) / std)
    return torch.stack(batch)


def embed_pixels(pixels: torch.Tensor, model: CsdModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(style, content) CSD embeddings (n, dim), unit length, of preprocessed pixels: ``normalize(pooled @ head)``
    for each head (content ``None`` without a content head); differentiable (CSD guidance)."""
    pooled = model.backbone(pixel_values=pixels).pooler_output  # ln_post of the class token
    style = torch.nn.functional.normalize(pooled @ model.style_head, dim=-1)
    content = None if model.content_head is None else torch.nn.functional.normalize(pooled @ model.content_head,
                                                                                     dim=-1)
    return style, content


@torch.no_grad()
def embed_images(images: Sequence[Image.Image], model: CsdModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(style, content) CSD embeddings of images through CSD's evaluation transform (``preprocess``), float32."""
    pixels = preprocess(images, model.image_size).to(model.style_head.device, model.style_head.dtype)
    style, content = embed_pixels(pixels, model)
    return style.float(), None if content is None else content.float()


def style_embeds(images: Sequence[Image.Image], model: CsdModel) -> torch.Tensor:
    """CSD style embeddings (n, dim), unit length: ``normalize(pooled @ last_layer_style)``."""
    return embed_images(images, model)[0]


def content_embeds(images: Sequence[Image.Image], model: CsdModel) -> torch.Tensor | None:
    """CSD content embeddings (n, dim), unit length (``None`` without a content head)."""
    return embed_images(images, model)[1]
