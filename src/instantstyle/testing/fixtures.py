"""Tiny random-weight stand-ins for SDXL, SD1.5, the h94 IP-Adapter repo and a CLIP text tower.

Nothing can be downloaded from a model hub where the tests run, so this module builds models with
the real topology (block types, attention-layer counts, two SDXL text encoders, CLIP image
encoders) and the real on-disk formats (``save_pretrained`` folders, h94 adapter key layout), only
with tiny dimensions. Everything is written to disk and meant to be loaded back through the public
loaders (``from_pretrained``, ``load_ip_adapter``), so the code under test takes the same paths it
takes with the real checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .trees import build_once

FIXTURE_VERSION = "1"
"""Bumped whenever the fixture contents change, so stale cached builds are rebuilt."""


# Dimensions. Real values in comments; everything tiny but pairwise distinct where a mix-up matters.
_SDXL_TE1_HIDDEN = 32  # 768 (CLIP ViT-L text)
_SDXL_TE2_HIDDEN = 64  # 1280 (OpenCLIP bigG text)
_SDXL_TE2_PROJ = 32  # 1280
_SDXL_CROSS_DIM = _SDXL_TE1_HIDDEN + _SDXL_TE2_HIDDEN  # 2048
_SDXL_TIME_EMBED_DIM = 8  # 256
_SDXL_CHANNELS = (32, 64, 128)  # (320, 640, 1280)
_SDXL_HEADS = (2, 4, 8)  # (5, 10, 20): diffusers calls the head count "attention_head_dim"
_SDXL_TRANSFORMER_LAYERS = (1, 2, 2)  # (1, 2, 10)

_SD15_TE_HIDDEN = 32  # 768
_SD15_CHANNELS = (32, 64, 64, 64)  # (320, 640, 1280, 1280)

_BIGG_HIDDEN = 48  # 1664, sdxl_models/image_encoder
_BIGG_PROJ = _SDXL_TE2_PROJ  # 1280: content subtraction for SDXL uses text_encoder_2
_VITH_HIDDEN = 40  # 1280, models/image_encoder
_VITH_PROJ = 24  # 1024
_VITH_TEXT_HIDDEN = 32  # 1024, the ViT-H text tower used for content subtraction

_UNET_SAMPLE_SIZE = 8  # latent size, so the pipelines default to 64 px (real: 128 / 64)
_PLUS_QUERIES = 16  # 16 in the real plus adapters
_PLUS_DEPTH = 4  # diffusers builds the Resampler with depth 4 regardless of the file
_PLUS_HEAD_DIM = 64  # diffusers infers heads as to_q rows // 64


@dataclass(frozen=True)
class TinyModels:
    """Paths of one built fixture tree (see ``build_tiny_models``)."""

    root: Path
    sdxl: Path
    sd15: Path
    adapters: Path
    sdxl_adapter: Path
    sdxl_adapter_bin: Path
    sdxl_vith_adapter: Path
    sdxl_plus_adapter: Path
    sd15_adapter: Path
    sd15_plus_adapter: Path
    content_text_encoder: Path
    style_image: Path
    content_image: Path


def _layout(root: Path) -> TinyModels:
    """Where each artefact lives under ``root``; the adapter folder mirrors hub repo h94/IP-Adapter."""
    adapters = root / "IP-Adapter"
    return TinyModels(
        root=root,
        sdxl=root / "sdxl",
        sd15=root / "sd15",
        adapters=adapters,
        sdxl_adapter=adapters / "sdxl_models" / "ip-adapter_sdxl.safetensors",
        sdxl_adapter_bin=adapters / "sdxl_models" / "ip-adapter_sdxl.bin",
        sdxl_vith_adapter=adapters / "sdxl_models" / "ip-adapter_sdxl_vit-h.safetensors",
        sdxl_plus_adapter=adapters / "sdxl_models" / "ip-adapter-plus_sdxl_vit-h.safetensors",
        sd15_adapter=adapters / "models" / "ip-adapter_sd15.safetensors",
        sd15_plus_adapter=adapters / "models" / "ip-adapter-plus_sd15.safetensors",
        content_text_encoder=root / "clip-vit-h-text",
        style_image=root / "style.png",
        content_image=root / "content.png",
    )


# --------------------------------------------------------------------------------------------
# Images


def make_style_image(path: Path, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """Write a deterministic RGB pattern (diagonal stripes, gradient, soft blobs) of ``size`` = (w, h).

    Procedural so that no third-party art ships with the tests; strongly textured and coloured so a
    style adapter has something distinctive to pick up.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    period = rng.uniform(6.0, 14.0)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (x + y) / period)
    img = np.stack([0.2 + 0.6 * u, 0.3 + 0.5 * (1 - v), 0.4 + 0.4 * stripes], axis=-1)
    for _ in range(4):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.1, 0.3) * min(width, height)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        img += blob[..., None] * (rng.uniform(-0.6, 0.6, size=3).astype(np.float32))
    return _save_png(img, path)


def _make_content_image(path: Path, size: tuple[int, int] = (64, 64), seed: int = 1) -> Path:
    """Write a flat-coloured 'object' picture: a disc and a bar on a plain background."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.ones((height, width, 3), np.float32) * rng.uniform(0.7, 0.9, size=3).astype(np.float32)
    disc = (x - width * 0.4) ** 2 + (y - height * 0.45) ** 2 < (0.25 * min(width, height)) ** 2
    img[disc] = rng.uniform(0.0, 0.4, size=3)
    bar = (x > width * 0.6) & (x < width * 0.8) & (y > height * 0.2) & (y < height * 0.85)
    img[bar] = rng.uniform(0.3, 0.6, size=3)
    return _save_png(img, path)


def _save_png(img: np.ndarray, path: Path) -> Path:
    """Clip a float HxWx3 array in [0, 1] to 8-bit and save it as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8), mode="RGB").save(path)
    return path


# --------------------------------------------------------------------------------------------
# Text encoders and tokenizers

_TOKENIZER_WORDS = ("the", "cat", "dog", "photo", "of", "in", "style", "painting", "portrait", "house")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Small CLIP-like BPE vocabulary: bytes, bytes + '</w>', a few word merges, specials last.

    End-of-text gets the highest id, as in real CLIP, because CLIP's pooling looks for it.
    """
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in _TOKENIZER_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
                tokens.append(left + right)
            left = left + right
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    return vocab, merges


def _make_tokenizer(pad_token: str = "<|endoftext|>"):
    """Build a working CLIPTokenizer offline (no vocab download); SDXL's second one pads with '!'."""
    from transformers import CLIPTokenizer

    vocab, pairs = _clip_vocab()
    # (left, right) pairs: the tokenizers BPE rejects in-memory "left right" strings, although
    # transformers' type hint asks for them.
    merges: Any = pairs
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def _text_config(tokenizer, hidden: int, projection_dim: int, hidden_act: str = "quick_gelu"):
    """CLIPTextConfig with tiny dims whose special-token ids agree with ``tokenizer``."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# --------------------------------------------------------------------------------------------
# Diffusion pipelines


def _tiny_vae(scaling_factor: float, force_upcast: bool):
    """Four-level AutoencoderKL so the pipelines' vae_scale_factor is 8, as in the real models."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def _sdxl_unet():
    """UNet in SDXL topology: 3 levels, attention in the lower two, text_time added conditioning."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=_UNET_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=_SDXL_CHANNELS,
        layers_per_block=2,
        transformer_layers_per_block=_SDXL_TRANSFORMER_LAYERS,
        attention_head_dim=_SDXL_HEADS,
        cross_attention_dim=_SDXL_CROSS_DIM,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * _SDXL_TIME_EMBED_DIM + _SDXL_TE2_PROJ,
        norm_num_groups=32,
    )


def _sd15_unet():
    """UNet in SD1.5 topology: 4 levels, attention in the top three, 16 cross-attention layers."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=_UNET_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=_SD15_CHANNELS,
        layers_per_block=2,
        attention_head_dim=2,
        cross_attention_dim=_SD15_TE_HIDDEN,
        norm_num_groups=32,
    )


# Scheduler settings shared by the real SD1.5 and SDXL scheduler_config.json files; ``from_config``
# drops the keys a scheduler class does not take, as it does for the real files.
_SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
}


def _save_pipeline(pipe: Any, dest: Path) -> None:
    """``save_pretrained`` as safetensors (``Any``: diffusers' lazy exports hide the method from mypy)."""
    pipe.save_pretrained(dest, safe_serialization=True)


def _build_sdxl(dest: Path, seed: int):
    """Save a tiny StableDiffusionXLPipeline to ``dest``; returns its UNet for adapter building."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = _make_tokenizer()
    tokenizer_2 = _make_tokenizer(pad_token="!")
    torch.manual_seed(seed)
    unet = _sdxl_unet()
    torch.manual_seed(seed + 1)
    vae = _tiny_vae(scaling_factor=0.13025, force_upcast=True)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(tokenizer, _SDXL_TE1_HIDDEN, _SDXL_TE1_HIDDEN))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(tokenizer_2, _SDXL_TE2_HIDDEN, _SDXL_TE2_PROJ, hidden_act="gelu")
    )
    scheduler = EulerDiscreteScheduler.from_config(
        {
            **_SD_SCHEDULER_CONFIG,
            "interpolation_type": "linear",
            "prediction_type": "epsilon",
            "timestep_spacing": "leading",
            "use_karras_sigmas": False,
            "sample_max_value": 1.0,
        }
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    _save_pipeline(pipe, dest)
    return unet


def _build_sd15(dest: Path, seed: int):
    """Save a tiny StableDiffusionPipeline (no safety checker) to ``dest``; returns its UNet."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer = _make_tokenizer()
    torch.manual_seed(seed + 10)
    unet = _sd15_unet()
    torch.manual_seed(seed + 11)
    vae = _tiny_vae(scaling_factor=0.18215, force_upcast=True)
    torch.manual_seed(seed + 12)
    text_encoder = CLIPTextModel(_text_config(tokenizer, _SD15_TE_HIDDEN, _SD15_TE_HIDDEN))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(_SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    _save_pipeline(pipe, dest)
    return unet


# --------------------------------------------------------------------------------------------
# CLIP towers


def _build_image_encoder(dest: Path, hidden: int, projection_dim: int, seed: int) -> None:
    """Save a CLIPVisionModelWithProjection like h94's image_encoder folders (no preprocessor config).

    image_size stays 224 so diffusers' default CLIPImageProcessor (224 resize + crop) matches; the
    32 px patch keeps the sequence at 50 tokens.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=224,
        patch_size=32,
        projection_dim=projection_dim,
        hidden_act="gelu",
    )
    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(config).save_pretrained(dest, safe_serialization=True)


def _build_content_text_encoder(dest: Path, seed: int) -> None:
    """Save the text tower paired with models/image_encoder (same projection_dim) and its tokenizer."""
    from transformers import CLIPTextModelWithProjection

    tokenizer = _make_tokenizer()
    torch.manual_seed(seed)
    config = _text_config(tokenizer, _VITH_TEXT_HIDDEN, _VITH_PROJ, hidden_act="gelu")
    model = CLIPTextModelWithProjection(config)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


# --------------------------------------------------------------------------------------------
# IP-Adapter files in the h94 key format


def _cross_attention_hidden_sizes(unet) -> Iterator[tuple[int, int]]:
    """Yield (h94 layer id, hidden size) for every cross-attention layer, exactly as diffusers reads them.

    h94 numbers attention layers in ``unet.attn_processors`` order with self-attention even and
    cross-attention odd, so the cross-attention ids are 1, 3, 5, ...; the hidden size is the channel
    count of the block the layer sits in.
    """
    channels = list(unet.config.block_out_channels)
    layer_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = channels[::-1][int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        yield layer_id, hidden
        layer_id += 2


def _randn(gen: torch.Generator, *shape: int, std: float) -> torch.Tensor:
    """Gaussian tensor from ``gen`` (keeps adapter weights independent of the global RNG)."""
    return torch.randn(*shape, generator=gen) * std


def _layer_norm(gen: torch.Generator, prefix: str, dim: int) -> dict[str, torch.Tensor]:
    """LayerNorm weights near identity, slightly perturbed so they are not trivially default."""
    return {
        f"{prefix}.weight": 1.0 + _randn(gen, dim, std=0.05),
        f"{prefix}.bias": _randn(gen, dim, std=0.05),
    }


def _ip_layers(unet, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """to_k_ip / to_v_ip for every cross-attention layer.

    Scaled like the UNet's own key/value projections (std 1/sqrt(in)) so the image tokens carry as
    much weight as the text tokens and the adapter visibly changes the output.
    """
    cross = unet.config.cross_attention_dim
    state: dict[str, torch.Tensor] = {}
    for layer_id, hidden in _cross_attention_hidden_sizes(unet):
        for name in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{layer_id}.{name}.weight"] = _randn(gen, hidden, cross, std=cross**-0.5)
    return state


def _global_adapter(unet, embed_dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Plain IP-Adapter: one linear map from the CLIP image embedding to 4 tokens, then LayerNorm."""
    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    state = {
        "image_proj.proj.weight": _randn(gen, 4 * cross, embed_dim, std=embed_dim**-0.5),
        "image_proj.proj.bias": _randn(gen, 4 * cross, std=0.02),
        **_layer_norm(gen, "image_proj.norm", cross),
    }
    return {**state, **_ip_layers(unet, gen)}


def _plus_adapter(unet, vision_hidden: int, seed: int) -> dict[str, torch.Tensor]:
    """IP-Adapter Plus: h94's Resampler (perceiver over penultimate CLIP hidden states).

    Keys follow the original ``Resampler`` module: ``layers.{i}.0`` is PerceiverAttention (norm1,
    norm2, to_q, to_kv, to_out, no biases) and ``layers.{i}.1`` the feed-forward Sequential
    (0 LayerNorm, 1 Linear, 3 Linear). diffusers always builds depth 4 with 64-wide heads.
    """
    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    dim = cross  # the Resampler width; h94 uses 768 (sd15) / 1280 (sdxl)
    inner = _PLUS_HEAD_DIM  # one head
    ff = 4 * dim
    state = {
        "image_proj.latents": _randn(gen, 1, _PLUS_QUERIES, dim, std=dim**-0.5),
        "image_proj.proj_in.weight": _randn(gen, dim, vision_hidden, std=vision_hidden**-0.5),
        "image_proj.proj_in.bias": _randn(gen, dim, std=0.02),
        "image_proj.proj_out.weight": _randn(gen, cross, dim, std=dim**-0.5),
        "image_proj.proj_out.bias": _randn(gen, cross, std=0.02),
        **_layer_norm(gen, "image_proj.norm_out", cross),
    }
    for i in range(_PLUS_DEPTH):
        attn, mlp = f"image_proj.layers.{i}.0", f"image_proj.layers.{i}.1"
        state.update(_layer_norm(gen, f"{attn}.norm1", dim))
        state.update(_layer_norm(gen, f"{attn}.norm2", dim))
        state[f"{attn}.to_q.weight"] = _randn(gen, inner, dim, std=dim**-0.5)
        state[f"{attn}.to_kv.weight"] = _randn(gen, 2 * inner, dim, std=dim**-0.5)
        state[f"{attn}.to_out.weight"] = _randn(gen, dim, inner, std=inner**-0.5)
        state.update(_layer_norm(gen, f"{mlp}.0", dim))
        state[f"{mlp}.1.weight"] = _randn(gen, ff, dim, std=dim**-0.5)
        state[f"{mlp}.3.weight"] = _randn(gen, dim, ff, std=ff**-0.5)
    return {**state, **_ip_layers(unet, gen)}


def _save_adapter(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write flat h94-style safetensors (``image_proj.*``, ``ip_adapter.*``)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def _save_adapter_bin(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write the legacy torch.save format: ``{"image_proj": {...}, "ip_adapter": {...}}``."""
    nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        group, _, rest = key.partition(".")
        nested[group][rest] = value.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(nested, path)


# --------------------------------------------------------------------------------------------
# Build


def _build_into(tmp: Path, seed: int) -> None:
    """Write every artefact of the fixture tree into ``tmp``."""
    paths = _layout(tmp)
    sdxl_unet = _build_sdxl(paths.sdxl, seed)
    sd15_unet = _build_sd15(paths.sd15, seed)
    encoders = paths.adapters
    _build_image_encoder(encoders / "sdxl_models" / "image_encoder", _BIGG_HIDDEN, _BIGG_PROJ, seed + 20)
    _build_image_encoder(encoders / "models" / "image_encoder", _VITH_HIDDEN, _VITH_PROJ, seed + 21)
    _build_content_text_encoder(paths.content_text_encoder, seed + 22)

    sdxl_global = _global_adapter(sdxl_unet, _BIGG_PROJ, seed + 30)
    _save_adapter(sdxl_global, paths.sdxl_adapter)
    _save_adapter_bin(sdxl_global, paths.sdxl_adapter_bin)
    _save_adapter(_global_adapter(sdxl_unet, _VITH_PROJ, seed + 31), paths.sdxl_vith_adapter)
    _save_adapter(_plus_adapter(sdxl_unet, _VITH_HIDDEN, seed + 32), paths.sdxl_plus_adapter)
    _save_adapter(_global_adapter(sd15_unet, _VITH_PROJ, seed + 33), paths.sd15_adapter)
    _save_adapter(_plus_adapter(sd15_unet, _VITH_HIDDEN, seed + 34), paths.sd15_plus_adapter)

    make_style_image(paths.style_image, (96, 64), seed=seed)
    _make_content_image(paths.content_image, (64, 64), seed=seed + 1)


def build_tiny_models(root: Path, seed: int = 0) -> TinyModels:
    """Build the whole fixture tree under ``root`` and return its paths; a no-op when already built.

    The tree is written to a temporary sibling and renamed into place, so an interrupted build never
    leaves a half fixture, and concurrent builders simply let the first finished one win. A tree of
    another FIXTURE_VERSION is replaced; a non-empty ``root`` that is not a fixture is refused. The
    marker records only FIXTURE_VERSION, so a finished tree is reused whatever ``seed`` is passed.
    """
    root = Path(root).expanduser().absolute()
    build_once(root, FIXTURE_VERSION, lambda tmp: _build_into(tmp, seed))
    return _layout(root)


def tiny_models(cache_dir: Path | None = None) -> TinyModels:
    """Build (once) and return the shared fixture tree.

    The tree lives at ``cache_dir`` if given, else at ``$INSTANTSTYLE_FIXTURES``, else at
    ``~/.cache/instantstyle/tiny-<FIXTURE_VERSION>``.
    """
    if cache_dir is None:
        env = os.environ.get("INSTANTSTYLE_FIXTURES")
        cache_dir = Path(env) if env else Path.home() / ".cache" / "instantstyle" / f"tiny-{FIXTURE_VERSION}"
    return build_tiny_models(Path(cache_dir))
