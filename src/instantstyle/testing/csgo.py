"""Tiny stand-ins for CSGO (instantX-research/CSGO): its checkpoints, the tile ControlNet and the image encoder.

CSGO's checkpoints (``InstantX/CSGO``: ``csgo.bin``, 4 content and 16 style tokens, float32; ``csgo_4_32.bin``,
4 and 32, float16) are ``torch.save`` dicts of state dicts, read by the authors' ``IPAdapter_CS.load_ip_adapter``:

- ``content_image_proj`` / ``style_image_proj``: two IP-Adapter-Plus resamplers (``latents``, ``proj_in``,
  ``layers.{0-3}.{0,1}``, ``proj_out``, ``norm_out``) with 12 heads of 64 and the UNet's text width, over the
  penultimate hidden states of h94's SDXL image encoder (ViT-bigG); the token counts are the ``latents`` rows;
- ``ip_adapter``: ``{i}.to_k_ip.weight`` / ``{i}.to_v_ip.weight``, ``i`` the position of the layer's processor in
  ``unet.attn_processors`` (self- and cross-attention alike), for the cross-attention layers of the down blocks
  (content) and the up blocks (style);
- ``controlnet_adapter_modules``: loaded into the ControlNet by name (``load_state_dict(strict=False)``): the
  ``...attn2.processor.to_k_ip.weight`` / ``to_v_ip`` of its down blocks' cross-attention layers and, in
  ``csgo_4_32.bin`` here, the whole ControlNet's own weights (CSGO trains its ControlNet; the real files' sizes,
  7.96 GB float32 and 3.98 GB float16, hold about 2.0 B values, which only fits with a full SDXL ControlNet,
  1.25 B, beside the adapter's 0.7-0.8 B). ``csgo.bin`` here holds only the processor weights: a reader must take both.

The real files were not inspected (no model hub here): the layout above is the one the authors' loader reads.
``csgo_4_32.safetensors`` holds the same tensors as ``csgo_4_32.bin`` flat (``group.key``), a format the authors'
loader does not take with its ControlNet part but instantstyle does.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .fixtures import TinyModels, _layer_norm, _make_content_image, _randn, make_style_image
from .modes import _build_controlnet
from .trees import build_once

CSGO_FIXTURE_VERSION = "1"

#: CSGO's resampler (``CSGO.init_proj``): depth 4, 12 heads of 64, feed-forward 4x, the UNet's text width.
RESAMPLER_DEPTH, RESAMPLER_HEADS, RESAMPLER_HEAD_DIM, RESAMPLER_FF = 4, 12, 64, 4


@dataclass(frozen=True)
class CsgoModels:
    """Paths of the CSGO fixture tree (see ``build_csgo_models``); the folders mirror the hub repositories."""

    root: Path
    checkpoint: Path  # InstantX/CSGO/csgo_4_32.bin: 4 + 32 tokens, float16, with the ControlNet's own weights
    checkpoint_4_16: Path  # InstantX/CSGO/csgo.bin: 4 + 16 tokens, float32, ControlNet processor weights only
    checkpoint_safetensors: Path  # csgo_4_32.bin's tensors as flat safetensors
    image_encoder: Path  # h94/IP-Adapter/sdxl_models/image_encoder (the tiny ViT-bigG-like encoder)
    tile_controlnet: Path  # TTPlanet/TTPLanet_SDXL_Controlnet_Tile_Realistic, as the folder the authors load
    content_image: Path  # 96x64 picture
    style_image: Path  # 80x80 pattern


def _layout(root: Path) -> CsgoModels:
    csgo = root / "InstantX" / "CSGO"
    return CsgoModels(
        root, csgo / "csgo_4_32.bin", csgo / "csgo.bin", csgo / "csgo_4_32.safetensors",
        root / "h94" / "IP-Adapter" / "sdxl_models" / "image_encoder",
        root / "TTPlanet" / "TTPLanet_SDXL_Controlnet_Tile_Realistic", root / "content.png", root / "style.png",
    )


def _resampler(gen: torch.Generator, tokens: int, embed_dim: int, dim: int) -> dict[str, torch.Tensor]:
    """CSGO's resampler in the original ``Resampler`` key layout (no biases inside its layers)."""
    inner, ff = RESAMPLER_HEADS * RESAMPLER_HEAD_DIM, RESAMPLER_FF * dim
    state = {
        "latents": _randn(gen, 1, tokens, dim, std=dim**-0.5),
        "proj_in.weight": _randn(gen, dim, embed_dim, std=embed_dim**-0.5),
        "proj_in.bias": _randn(gen, dim, std=0.02),
        "proj_out.weight": _randn(gen, dim, dim, std=dim**-0.5),
        "proj_out.bias": _randn(gen, dim, std=0.02),
        **_layer_norm(gen, "norm_out", dim),
    }
    for i in range(RESAMPLER_DEPTH):
        attn, mlp = f"layers.{i}.0", f"layers.{i}.1"
        state.update(_layer_norm(gen, f"{attn}.norm1", dim))
        state.update(_layer_norm(gen, f"{attn}.norm2", dim))
        state[f"{attn}.to_q.weight"] = _randn(gen, inner, dim, std=dim**-0.5)
        state[f"{attn}.to_kv.weight"] = _randn(gen, 2 * inner, dim, std=dim**-0.5)
        state[f"{attn}.to_out.weight"] = _randn(gen, dim, inner, std=inner**-0.5)
        state.update(_layer_norm(gen, f"{mlp}.0", dim))
        state[f"{mlp}.1.weight"] = _randn(gen, ff, dim, std=dim**-0.5)
        state[f"{mlp}.3.weight"] = _randn(gen, dim, ff, std=ff**-0.5)
    return state


def cross_attention_layers(model: Any, blocks: tuple[str, ...]) -> Iterator[tuple[int, str, int]]:
    """(position in ``model.attn_processors``, layer name, hidden size) of the cross-attention layers under
    ``blocks``: the numbering of CSGO's ``ip_adapter`` keys (a ``ModuleList`` of every processor)."""
    channels = list(model.config.block_out_channels)
    for index, name in enumerate(model.attn_processors):
        layer = name.removesuffix(".processor")
        if not layer.endswith("attn2") or not layer.startswith(blocks):
            continue
        level = int(layer.split(".")[1]) if not layer.startswith("mid_block") else -1
        hidden = channels[-1] if level < 0 else (channels[::-1] if layer.startswith("up_blocks") else channels)[level]
        yield index, layer, hidden


def _projections(gen: torch.Generator, layers: Iterator[tuple[int, str, int]], cross: int, key: str
                 ) -> dict[str, torch.Tensor]:
    """to_k_ip / to_v_ip per layer, scaled like the model's own key/value projections so they visibly act."""
    state = {}
    for index, layer, hidden in layers:
        prefix = str(index) if key == "index" else f"{layer}.processor"
        for name in ("to_k_ip", "to_v_ip"):
            state[f"{prefix}.{name}.weight"] = _randn(gen, hidden, cross, std=cross**-0.5)
    return state


def _trained_controlnet(tile: Path, seed: int) -> dict[str, torch.Tensor]:
    """The tile ControlNet's weights moved a little (CSGO's trained ControlNet), for ``controlnet_adapter_modules``."""
    from diffusers import ControlNetModel

    gen = torch.Generator().manual_seed(seed)
    state = ControlNetModel.from_pretrained(str(tile)).state_dict()
    return {k: v + _randn(gen, *v.shape, std=0.05) * v.abs().mean() if v.is_floating_point() else v
            for k, v in state.items()}


def csgo_state(unet: Any, controlnet: Any, embed_dim: int, style_tokens: int, seed: int,
               controlnet_weights: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """A CSGO checkpoint for this UNet and ControlNet (see the module docstring), with random weights."""
    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    return {
        "content_image_proj": _resampler(gen, 4, embed_dim, cross),
        "style_image_proj": _resampler(gen, style_tokens, embed_dim, cross),
        "ip_adapter": _projections(gen, cross_attention_layers(unet, ("down_blocks", "up_blocks")), cross, "index"),
        "controlnet_adapter_modules": {
            **(controlnet_weights or {}),
            **_projections(gen, cross_attention_layers(controlnet, ("down_blocks",)), cross, "name"),
        },
    }


def save_flat(state: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    """A CSGO checkpoint as flat safetensors (``group.key``)."""
    from safetensors.torch import save_file

    flat = {f"{group}.{key}": value.contiguous() for group, values in state.items() for key, value in values.items()}
    save_file(flat, str(path), metadata={"format": "pt"})


def _build_into(tmp: Path, tiny: TinyModels, seed: int) -> None:
    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPVisionConfig

    paths = _layout(tmp)
    shutil.copytree(tiny.adapters / "sdxl_models" / "image_encoder", paths.image_encoder)
    torch.manual_seed(seed + 40)  # from_unet draws the conditioning embedding from the global RNG: the reference
    _build_controlnet(tiny.sdxl / "unet", paths.tile_controlnet, seed + 40)  # images need the same weights each build
    unet = UNet2DConditionModel.from_pretrained(str(tiny.sdxl / "unet"))
    controlnet = ControlNetModel.from_pretrained(str(paths.tile_controlnet))
    embed_dim = CLIPVisionConfig.from_pretrained(paths.image_encoder).hidden_size
    paths.checkpoint.parent.mkdir(parents=True)
    trained = _trained_controlnet(paths.tile_controlnet, seed + 41)
    state = csgo_state(unet, controlnet, embed_dim, 32, seed + 42, trained)
    state = {group: {k: v.half() if v.is_floating_point() else v for k, v in values.items()}
             for group, values in state.items()}  # csgo_4_32.bin is float16 (HalfStorage)
    torch.save(state, paths.checkpoint)
    save_flat(state, paths.checkpoint_safetensors)
    torch.save(csgo_state(unet, controlnet, embed_dim, 16, seed + 43), paths.checkpoint_4_16)
    _make_content_image(paths.content_image, (96, 64), seed=seed + 44)
    make_style_image(paths.style_image, (80, 80), seed=seed + 45)


def build_csgo_models(root: Path, tiny: TinyModels, seed: int = 0) -> CsgoModels:
    """Build (once, atomically) and return the CSGO fixtures under ``root``, from the tiny SDXL and its encoder."""
    root = Path(root).expanduser().absolute()
    build_once(root, CSGO_FIXTURE_VERSION, lambda tmp: _build_into(tmp, tiny, seed))
    return _layout(root)
