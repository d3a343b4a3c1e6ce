"""Tiny stand-ins for video: an I2VGen-XL pipeline in the real topology and short clips written with PyAV.

The pipeline has ``ali-vilab/i2vgen-xl``'s structure (an ``I2VGenXLUNet`` with four levels, two layers per down
block and three per up block, spatial and temporal attention in the upper three up blocks; a four-level VAE; a CLIP
text encoder and tokenizer; a CLIP vision encoder with projection and its image processor; the DDIM scheduler with
the real ``scheduler_config.json``), only narrow, and is saved with ``save_pretrained`` so the code under test loads
it through ``from_pretrained`` as it loads the real one. The clips are lossless H.264 MP4 files written by the
product's own writer (colour converted in numpy, one encoder thread), so they decode to the same pixels on every
machine and in every run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .fixtures import _make_tokenizer, _save_pipeline, _text_config, _tiny_vae, make_style_image
from .trees import build_once

VIDEO_VERSION = "3"  # 3: lossless clips, colour converted in numpy

#: ``ali-vilab/i2vgen-xl/scheduler/scheduler_config.json`` as published (zero-SNR v-prediction DDIM, leading steps).
I2VGEN_SCHEDULER_CONFIG = {
    "beta_end": 0.02,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.0001,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

#: The published ``ali-vilab/i2vgen-xl`` configs (unet, vae, text_encoder, image_encoder), for sizing the real model
#: without its weights (``meta_i2vgen``: memory plans, FLOPs).
I2VGEN_UNET: dict[str, Any] = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
    up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3, norm_num_groups=32, cross_attention_dim=1024,
    attention_head_dim=64,
)
I2VGEN_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=768, scaling_factor=0.18125, force_upcast=True,
)
I2VGEN_TEXT_ENCODER: dict[str, Any] = dict(  # OpenCLIP ViT-H/14 text
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    max_position_embeddings=77, vocab_size=49408, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5,
)
I2VGEN_IMAGE_ENCODER: dict[str, Any] = dict(  # OpenCLIP ViT-H/14 vision
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
    image_size=224, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5,
)


def meta_i2vgen(dtype: torch.dtype = torch.float16) -> dict[str, torch.nn.Module]:
    """The real-size I2VGen-XL models on the meta device (shapes and dtypes, no weights, no memory)."""
    from diffusers import AutoencoderKL, I2VGenXLUNet
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        models: dict[str, Any] = {
            "unet": I2VGenXLUNet(**I2VGEN_UNET),
            "vae": AutoencoderKL(**I2VGEN_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**I2VGEN_TEXT_ENCODER)),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**I2VGEN_IMAGE_ENCODER)),
        }
    return {name: model.to(dtype) for name, model in models.items()}


# Tiny sizes; real values in comments.
_CHANNELS = (16, 16, 32, 32)  # (320, 640, 1280, 1280)
_HEADS = 2  # 64 (I2VGenXLUNet reads its attention_head_dim as the head count)
_CROSS_DIM = 32  # 1024: the text encoder's width and the image encoder's projection
_GROUPS = 8  # 32
CLIP_SIZE = (64, 64)  # (width, height) of the main test clip; the real model works at 512 x 512 (or 1280 x 704)
CLIP_FRAMES = 12
CLIP_FPS = 8


@dataclass(frozen=True)
class VideoModels:
    """Paths of the video fixtures (see ``tiny_video_models``)."""

    root: Path
    i2vgen: Path  # an I2VGenXLPipeline folder
    clip: Path  # 64 x 64, 12 frames at 8 fps, lossless H.264 in MP4
    wide_clip: Path  # 96 x 64, 10 frames at 10 fps: frames are centre-cropped to the size asked for
    edited_frame: Path  # 64 x 64 PNG, a stand-in for a styled first frame


def _layout(root: Path) -> VideoModels:
    return VideoModels(root, root / "i2vgen-xl", root / "clip.mp4", root / "wide.mp4", root / "edited.png")


def _i2vgen_unet():
    from diffusers import I2VGenXLUNet

    return I2VGenXLUNet(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        block_out_channels=_CHANNELS,
        layers_per_block=2,
        norm_num_groups=_GROUPS,
        cross_attention_dim=_CROSS_DIM,
        attention_head_dim=_HEADS,
    )


def _build_i2vgen(dest: Path, seed: int) -> None:
    """Save a tiny ``I2VGenXLPipeline`` (safetensors) to ``dest``."""
    from diffusers import DDIMScheduler, I2VGenXLPipeline
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    tokenizer = _make_tokenizer(pad_token="!")  # OpenCLIP's tokenizer as diffusers ships it pads with "!"
    torch.manual_seed(seed)
    unet = _i2vgen_unet()
    torch.manual_seed(seed + 1)
    vae = _tiny_vae(scaling_factor=0.18125, force_upcast=True)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(tokenizer, _CROSS_DIM, _CROSS_DIM, hidden_act="gelu"))
    torch.manual_seed(seed + 3)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
        patch_size=32, projection_dim=_CROSS_DIM, hidden_act="gelu",
    ))
    pipe = I2VGenXLPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(), unet=unet,
        scheduler=DDIMScheduler.from_config(I2VGEN_SCHEDULER_CONFIG),
    )
    _save_pipeline(pipe, dest)


def clip_frames(size: tuple[int, int], count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` RGB frames (H x W x 3 uint8) of a disc and a bar moving over a gradient: motion to keep."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.3 * np.sin(x / 5.0)], axis=-1)
    disc_colour, bar_colour = rng.uniform(0.0, 1.0, size=3), rng.uniform(0.0, 1.0, size=3)
    frames = []
    for i in range(count):
        img = base.copy()
        cx, cy = width * (0.25 + 0.5 * i / max(count - 1, 1)), height * 0.5
        img[(x - cx) ** 2 + (y - cy) ** 2 < (0.2 * min(width, height)) ** 2] = disc_colour
        img[(np.abs(x - width * 0.5) < 3) & (y > height * (0.1 + 0.02 * i))] = bar_colour
        frames.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return frames


def write_clip(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    """Write frames as lossless H.264 (yuv420p, BT.601) in MP4 with the product's writer (``files.video.write_video``,
    quality 0): the clip decodes to the same pixels on every machine and in every process."""
    from ..files.video import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, [Image.fromarray(array) for array in frames], fps, quality=0)


def write_raw_clip(path: Path, pix_fmt: str = "yuyv422", size: tuple[int, int] = (16, 16), frames: int = 2) -> Path:
    """A raw-video clip (NUT) of black frames stored in ``pix_fmt``: by default packed yuyv422, as some webcams record,
    a pixel format instantstyle does not convert."""
    import av

    with av.open(str(path), "w", format="nut") as container:
        stream = container.add_stream("rawvideo", rate=8)
        stream.width, stream.height, stream.pix_fmt = *size, pix_fmt
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame(*size, pix_fmt)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _build_into(tmp: Path, seed: int) -> None:
    paths = _layout(tmp)
    _build_i2vgen(paths.i2vgen, seed + 40)
    write_clip(paths.clip, clip_frames(CLIP_SIZE, CLIP_FRAMES, seed), CLIP_FPS)
    write_clip(paths.wide_clip, clip_frames((96, 64), 10, seed + 1), 10)
    edited = make_style_image(paths.edited_frame, CLIP_SIZE, seed=seed + 5)
    Image.open(edited).convert("RGB").save(paths.edited_frame)


def build_tiny_video_models(root: Path, seed: int = 0) -> VideoModels:
    """Build the video fixtures under ``root`` once (``trees.build_once``) and return their paths."""
    root = Path(root).expanduser().absolute()
    build_once(root, VIDEO_VERSION, lambda tmp: _build_into(tmp, seed))
    return _layout(root)


def tiny_video_models(cache_dir: Path | None = None) -> VideoModels:
    """The shared video fixtures: at ``cache_dir``, else ``$INSTANTSTYLE_VIDEO_FIXTURES``, else
    ``~/.cache/instantstyle/video-<VIDEO_VERSION>``."""
    if cache_dir is None:
        env = os.environ.get("INSTANTSTYLE_VIDEO_FIXTURES")
        cache_dir = Path(env) if env else Path.home() / ".cache" / "instantstyle" / f"video-{VIDEO_VERSION}"
    return build_tiny_video_models(Path(cache_dir))
