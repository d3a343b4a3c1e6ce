"""Single-file checkpoints: the tiny pipelines written in the original (LDM/SGM) layout load back exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file
from transformers import CLIPTextModel

from instantstyle.testing.single_file import export_single_file


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
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize(
    ("arch", "pipeline_class", "components"),
    [
        ("sdxl", StableDiffusionXLPipeline, ("unet", "vae", "text_encoder", "text_encoder_2")),
        ("sd15", StableDiffusionPipeline, ("unet", "vae", "text_encoder")),
    ],
)
def test_single_file_round_trip(tiny, tmp_path: Path, arch: str, pipeline_class: type, components) -> None:
    pipeline_dir = getattr(tiny, arch)
    out_file = export_single_file(pipeline_dir, tmp_path / "model.safetensors")
    assert not any(k.startswith(("unet.", "vae.", "text_encoder")) for k in load_file(str(out_file)))

    original = pipeline_class.from_pretrained(pipeline_dir, local_files_only=True)
    config_dir = config_only_copy(pipeline_dir, tmp_path / "config")
    loaded = pipeline_class.from_single_file(str(out_file), config=str(config_dir), local_files_only=True)
    for name in components:
        assert_same_weights(getattr(loaded, name), getattr(original, name))
    assert loaded.tokenizer("the cat").input_ids == original.tokenizer("the cat").input_ids


def test_sdxl_text_encoders_need_distinct_widths(tiny, tmp_path: Path) -> None:
    """diffusers would load CLIP-L weights into text_encoder_2 if both widths matched, so export refuses."""
    pipeline_dir = shutil.copytree(tiny.sdxl, tmp_path / "pipeline")
    pipe = StableDiffusionXLPipeline.from_pretrained(pipeline_dir, local_files_only=True)
    pipe.text_encoder = CLIPTextModel(pipe.text_encoder_2.config)
    pipe.save_pretrained(pipeline_dir)
    with pytest.raises(ValueError, match="hidden sizes"):
        export_single_file(pipeline_dir, tmp_path / "model.safetensors")
