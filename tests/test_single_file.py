"""Round-trip tiny SD1.5 / SDXL pipelines through an original-format single file and diffusers' loader."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import infer_diffusers_model_type  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from instantstyle.testing.single_file import export_single_file  # noqa: E402

SDXL_MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for bytes, in byte order."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_tokenizer(pad_token: str) -> CLIPTokenizer:
    """Build a byte-level CLIP BPE tokenizer offline (end-of-text gets the highest id, as in real CLIP)."""
    symbols = byte_symbols()
    merges = [("t", "h"), ("th", "e</w>")]
    tokens = symbols + [s + "</w>" for s in symbols] + ["th", "the</w>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def text_config(
    tokenizer: CLIPTokenizer, hidden: int, layers: int, projection_dim: int = 8
) -> CLIPTextConfig:
    """A tiny CLIP text config whose special-token ids match the tokenizer."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        projection_dim=projection_dim,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_vae() -> AutoencoderKL:
    """Three-level VAE with distinct widths so a wrong level order cannot load."""
    return AutoencoderKL(
        block_out_channels=(32, 64, 96),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=16,
    )


def build_tiny_sdxl(root: Path) -> Path:
    """Save a tiny SDXL pipeline in the real block topology; returns its folder."""
    torch.manual_seed(0)
    tokenizer, tokenizer_2 = tiny_tokenizer("<|endoftext|>"), tiny_tokenizer("!")
    # 10 layers in the second encoder: diffusers recognises SDXL by `...resblocks.9...`.
    text_encoder = CLIPTextModel(text_config(tokenizer, hidden=32, layers=2))
    config_2 = text_config(tokenizer_2, hidden=48, layers=10, projection_dim=24)
    text_encoder_2 = CLIPTextModelWithProjection(config_2)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 2),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=32 + 48,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + 24,
        norm_num_groups=16,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(),
    )
    pipe.save_pretrained(root)
    return root


def build_tiny_sd15(root: Path) -> Path:
    """Save a tiny SD1.5 pipeline (four UNet levels, one text encoder); returns its folder."""
    torch.manual_seed(1)
    tokenizer = tiny_tokenizer("<|endoftext|>")
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        attention_head_dim=4,
        cross_attention_dim=32,
        norm_num_groups=16,
    )
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(text_config(tokenizer, hidden=32, layers=2)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root)
    return root


def config_only_copy(pipeline_dir: Path, dest: Path) -> Path:
    """Copy a pipeline folder without weight files, so loaded weights can only come from the single file."""
    shutil.copytree(pipeline_dir, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return dest


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    """Every parameter and persistent buffer is present and bit-identical."""
    got, want = loaded.state_dict(), original.state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key].device.type != "meta", f"{key} was not loaded"
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize(
    ("builder", "pipeline_class", "model_type", "components"),
    [
        (build_tiny_sdxl, StableDiffusionXLPipeline, "xl_base", SDXL_MODELS),
        (build_tiny_sd15, StableDiffusionPipeline, "v1", ("unet", "vae", "text_encoder")),
    ],
    ids=["sdxl", "sd15"],
)
def test_single_file_round_trip(
    tmp_path: Path,
    builder: Callable[[Path], Path],
    pipeline_class: type,
    model_type: str,
    components: tuple[str, ...],
) -> None:
    pipeline_dir = builder(tmp_path / "pipeline")
    out_file = export_single_file(pipeline_dir, tmp_path / "model.safetensors")

    checkpoint = load_file(str(out_file))
    assert infer_diffusers_model_type(checkpoint) == model_type
    assert not any(k.startswith(("unet.", "vae.", "text_encoder")) for k in checkpoint)

    original = pipeline_class.from_pretrained(pipeline_dir, local_files_only=True)
    config_dir = config_only_copy(pipeline_dir, tmp_path / "config")
    loaded = pipeline_class.from_single_file(str(out_file), config=str(config_dir), local_files_only=True)
    for name in components:
        assert_same_weights(getattr(loaded, name), getattr(original, name))
    assert type(loaded.scheduler) is type(original.scheduler)
    assert loaded.tokenizer("the cat").input_ids == original.tokenizer("the cat").input_ids


def test_sdxl_text_encoders_need_distinct_widths(tmp_path: Path) -> None:
    """diffusers would load CLIP-L weights into text_encoder_2 if both widths matched, so export refuses."""
    pipeline_dir = build_tiny_sdxl(tmp_path / "pipeline")
    pipe = StableDiffusionXLPipeline.from_pretrained(pipeline_dir, local_files_only=True)
    tokenizer = pipe.tokenizer
    pipe.text_encoder = CLIPTextModel(text_config(tokenizer, hidden=48, layers=2))
    pipe.save_pretrained(pipeline_dir)
    with pytest.raises(ValueError, match="hidden sizes"):
        export_single_file(pipeline_dir, tmp_path / "model.safetensors")
