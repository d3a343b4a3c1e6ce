"""Single-file SD3.5 and FLUX transformers: the tiny fixtures' transformers written in the original layouts
(Stability's MMDiT, Black Forest Labs') load back exactly, and through ``--single-file-config`` give the folder's
pixels; diffusers reads BFL's layout only at FLUX's real width, which a tiny file is told in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
from PIL import Image

from instantstyle.loading.hub import checkpoint_family, checkpoint_keys, holds_denoiser_only
from instantstyle.testing.single_file import export_transformer_single_file, flux_transformer_to_bfl

from .conftest import pixels
from .test_cli import run


@pytest.fixture(scope="module")
def files(dit, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The SD3.5 and FLUX fixtures' transformers, each as one original-format ``.safetensors`` file."""
    folder = tmp_path_factory.mktemp("dit-single-file")
    return {family: export_transformer_single_file(getattr(dit, family), folder / f"{family}.safetensors")
            for family in ("sd3", "flux")}


def generate(capsys, out: Path, dit, *model: object) -> tuple[int, str]:
    """``instantstyle generate`` on the SD3.5 fixture's adapter and style with ``model`` flags; (exit code, stderr)."""
    code, _, err = run(capsys, "generate", *model, "--adapter", dit.sd3_adapter, "--style", dit.style_image,
                       "--prompt", "a cat", "--steps", "2", "--width", "64", "--height", "64", "--seed", "7",
                       "--device", "cpu", "-o", out)
    return code, err


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_transformer_file_is_recognised_as_its_family_holding_only_the_denoiser(family, files):
    assert checkpoint_family(files[family]).name == family
    assert holds_denoiser_only(checkpoint_keys(files[family]))


def test_diffusers_reads_the_sd3_file_back_as_the_folders_transformer(dit, files):
    want = SD3Transformer2DModel.from_pretrained(dit.sd3, subfolder="transformer").state_dict()
    got = SD3Transformer2DModel.from_single_file(str(files["sd3"]), config=str(dit.sd3),
                                                 subfolder="transformer").state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_cli_sd3_file_with_its_single_file_config_gives_the_folders_pixels(capsys, dit, files, tmp_path):
    from_file, from_folder = tmp_path / "file.png", tmp_path / "folder.png"
    assert generate(capsys, from_file, dit, "--model", files["sd3"], "--single-file-config", dit.sd3)[0] == 0
    assert generate(capsys, from_folder, dit, "--model", dit.sd3)[0] == 0
    assert (pixels(Image.open(from_file)) == pixels(Image.open(from_folder))).all()


def test_cli_sd3_file_without_a_single_file_config_is_one_line_exit_2(capsys, dit, files, tmp_path):
    code, err = generate(capsys, tmp_path / "out.png", dit, "--model", files["sd3"])
    assert code == 2 and "--single-file-config" in err and len(err.strip().splitlines()) == 1


def test_diffusers_converts_the_bfl_layout_back_to_a_full_width_flux_transformer():
    """diffusers splits BFL's single-block ``linear1`` at FLUX.1's width (3072, MLP 12288) whatever the file holds,
    so the inverse is checked at that width: one double and one single block, random bf16 values (1 GB)."""
    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, joint_attention_dim=64,
                                       pooled_projection_dim=32, guidance_embeds=True)
    gen = torch.Generator().manual_seed(0)
    want = {k: torch.randn(v.shape, generator=gen, dtype=torch.bfloat16) for k, v in model.state_dict().items()}
    got = convert_flux_transformer_checkpoint_to_diffusers(flux_transformer_to_bfl(want))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_cli_tiny_flux_file_is_one_line_exit_2_as_diffusers_reads_only_full_width_flux(capsys, dit, files, tmp_path):
    code, _, err = run(capsys, "generate", "--model", files["flux"], "--single-file-config", dit.flux, "--adapter",
                       dit.flux_adapter, "--style", dit.style_image, "--prompt", "a cat", "--steps", "2", "--width",
                       "64", "--height", "64", "--device", "cpu", "-o", tmp_path / "out.png")
    assert code == 2 and "cannot load this flux single file" in err and len(err.strip().splitlines()) == 1
