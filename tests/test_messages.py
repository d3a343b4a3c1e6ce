"""Messages that say what to do: each family trap a newcomer hit, one test per message (issue 24)."""

from __future__ import annotations

import json

import pytest

from instantstyle import Request

from .test_cli import run


def generate(dit, family: str, *flags) -> list[str]:
    """A fast generate on the tiny SD3.5 or FLUX model (no adapter unless ``flags`` name one)."""
    model = dit.sd3 if family == "sd3" else dit.flux
    return ["generate", "--model", model, "--style", dit.style_image, "--prompt", "a cat", "--steps", "1", *flags]


@pytest.mark.parametrize("family, download", [
    ("flux", "`hf download XLabs-AI/flux-ip-adapter ip_adapter.safetensors`"),
    ("sd3", "`hf download InstantX/SD3.5-Large-IP-Adapter ip-adapter.bin`"),
])
def test_a_transformer_model_without_adapter_names_its_own_adapters_download(capsys, dit, tmp_path, family,
                                                                              download):
    code, out, err = run(capsys, *generate(dit, family, "-o", tmp_path / "o.png"))
    assert code == 2 and err.count("\n") == 1 and download in err and "h94" not in err, err


def test_a_known_hub_model_not_downloaded_names_its_own_adapter_in_the_same_line(capsys, tiny, tmp_path):
    code, _, err = run(capsys, "generate", "--model", "black-forest-labs/FLUX.1-dev", "--style", tiny.style_image,
                       "--prompt", "a cat", "-o", tmp_path / "o.png")
    assert code == 2 and err.count("\n") == 1, err
    assert "`hf download black-forest-labs/FLUX.1-dev`" in err and "`hf download XLabs-AI/flux-ip-adapter" in err


def test_flux_default_size_is_the_models_own_not_diffusers_1024(flux, dit):
    result = flux(Request("a cat", style=str(dit.style_image), steps=1, seed=1))
    assert result.images[0].size == (64, 64) and (result.request.width, result.request.height) == (64, 64)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_a_style_preset_on_a_transformer_points_to_probe_blocks(capsys, dit, tmp_path, family):
    adapter = dit.flux_adapter if family == "flux" else dit.sd3_adapter
    code, _, err = run(capsys, *generate(dit, family, "--adapter", adapter, "--blocks", "style", "-o",
                                         tmp_path / "o.png"))
    assert code == 2 and err.count("\n") == 1, err
    assert f"no 'style' preset for {family} models" in err and "instantstyle probe-blocks" in err
    assert "--blocks @presets.json:style" in err and not (tmp_path / "o.png").exists()


def test_content_prompt_on_sd3_says_its_adapter_cannot_subtract_and_what_limits_it(capsys, dit, tmp_path):
    code, _, err = run(capsys, *generate(dit, "sd3", "--adapter", dit.sd3_adapter, "--content-prompt", "a dog",
                                         "-o", tmp_path / "o.png"))
    assert code == 2 and err.count("\n") == 1, err
    assert "SD3.5's adapter cannot subtract content" in err and "use --blocks to limit it" in err


@pytest.mark.parametrize("flag", [["--family", "flux"], ["--family=flux"], ["--arch", "sdxl"]])
def test_a_family_flag_says_the_family_is_detected_from_the_model(capsys, tiny, tmp_path, flag):
    code, _, err = run(capsys, "generate", "--model", tiny.sdxl, *flag, "--prompt", "a cat", "-o", tmp_path / "o.png")
    assert code == 2 and err.count("\n") == 1 and "is detected from the model" in err, err


def test_a_block_typo_gets_did_you_mean(capsys, tiny, tmp_path):
    code, _, err = run(capsys, "generate", "--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--style",
                       tiny.style_image, "--prompt", "a cat", "--blocks", "up_blocks.0.attention.1", "-o",
                       tmp_path / "o.png")
    assert code == 2 and "(did you mean 'up_blocks.0.attentions.1'?)" in err, err


def test_a_preset_typo_gets_did_you_mean(capsys, tiny, tmp_path):
    code, _, err = run(capsys, "generate", "--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--style",
                       tiny.style_image, "--prompt", "a cat", "--blocks", "stlye", "-o", tmp_path / "o.png")
    assert code == 2 and "block 'stlye'" in err and "(did you mean 'style'?)" in err, err


def test_a_presets_file_name_typo_gets_did_you_mean(capsys, tiny, tmp_path):
    (tmp_path / "presets.json").write_text(json.dumps({"style-top2": "up_blocks.0"}))
    code, _, err = run(capsys, "generate", "--model", tiny.sdxl, "--style", tiny.style_image, "--prompt", "a cat",
                       "--blocks", f"@{tmp_path / 'presets.json'}:style-tpo2", "-o", tmp_path / "o.png")
    assert code == 2 and "(did you mean 'style-top2'?)" in err, err


def test_a_flag_typo_gets_did_you_mean(capsys, tiny, tmp_path):
    code, _, err = run(capsys, "generate", "--stlye", tiny.style_image, "--prompt", "a cat", "-o", tmp_path / "o.png")
    assert code == 2 and err.count("\n") == 1 and "--style" in err and "Did you mean" in err, err
