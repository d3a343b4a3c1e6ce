"""Kolors, added as one file in ``families/``: a Kolors UNet is told from SDXL's, its plus adapter on the style block
makes diffusers' own recipe's pixels through the API and the CLI, and what diffusers has no Kolors pipeline for is
one line before loading."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.core.preflight import check, model_info
from instantstyle.families import family_of, family_of_denoiser
from instantstyle.loading.runtime import Runtime

from .conftest import FAST, pixels
from .test_cli import run


def kolors_request(kolors_models, **changes) -> Request:
    return Request(**{"prompt": "a cat", "style": str(kolors_models.style_image), **FAST, **changes})


@pytest.fixture(scope="module")
def recipe(kolors_models):
    """diffusers' own Kolors IP-Adapter recipe: KolorsPipeline with the CLIP-336 image encoder, ``load_ip_adapter``
    of the published file; its plain image is taken before the adapter is loaded."""
    from diffusers import KolorsPipeline
    from transformers import CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(str(kolors_models.image_encoder))
    pipe = KolorsPipeline.from_pretrained(str(kolors_models.kolors), image_encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    call = {"prompt": "a cat", "num_inference_steps": 2, "width": 64, "height": 64}
    plain = pipe(**call, generator=torch.Generator().manual_seed(7)).images[0]
    pipe.load_ip_adapter(str(kolors_models.adapter_repo), subfolder="", weight_name=kolors_models.adapter.name,
                         image_encoder_folder=None)
    pipe.set_ip_adapter_scale({"up": {"block_0": [0.0, 1.0, 0.0]}})  # InstantStyle's style block, as on SDXL
    style = Image.open(kolors_models.style_image).convert("RGB")
    styled = pipe(**call, ip_adapter_image=style, generator=torch.Generator().manual_seed(7)).images[0]
    return {"pipe": pipe, "plain": plain, "style": styled}


def test_a_kolors_unet_is_kolors_not_sdxl_from_its_config_and_with_its_adapter_loaded(kolors, kolors_models):
    assert family_of(kolors.pipe).name == "kolors"  # the adapter is in: diffusers set encoder_hid_dim_type
    assert kolors.resources.denoiser.config.encoder_hid_dim_type == "ip_image_proj"
    info = model_info(str(kolors_models.kolors))
    assert info.family is kolors.resources.family and info.layers == kolors.resources.layers
    sdxl_like = {**kolors.resources.denoiser.config, "encoder_hid_dim": None, "encoder_hid_dim_type": None}
    assert family_of_denoiser("UNet2DConditionModel", sdxl_like).name == "sdxl"


def test_kolors_with_its_plus_adapter_on_the_style_block_makes_diffusers_recipes_pixels(kolors, kolors_models, recipe):
    ours = kolors(kolors_request(kolors_models))
    assert ours.request.blocks == "style" and kolors.resources.adapter.kind == "plus"
    assert (pixels(ours.images[0]) == pixels(recipe["style"])).all()


def test_kolors_at_scale_zero_makes_the_plain_pipelines_pixels(kolors, kolors_models, recipe):
    ours = kolors(kolors_request(kolors_models, scale=0.0)).images[0]
    assert (pixels(ours) == pixels(recipe["plain"])).all()
    assert abs(pixels(ours) - pixels(recipe["style"])).mean() > 0.5  # the adapter acts at scale 1


def test_the_cli_makes_the_apis_kolors_image(capsys, kolors, kolors_models, recipe, tmp_path):
    code, out, err = run(capsys, "generate", "--model", kolors_models.kolors, "--adapter", kolors_models.adapter,
                         "--style", kolors_models.style_image, "--prompt", "a cat", "--steps", "2", "--width", "64",
                         "--height", "64", "--seed", "7", "--device", "cpu", "-o", tmp_path / "cat.png")
    assert code == 0, err
    assert (pixels(Image.open(tmp_path / "cat.png").convert("RGB")) == pixels(recipe["style"])).all()


def test_a_kolors_request_without_an_adapter_gets_kolors_own(kolors_models):
    from instantstyle.core.preflight import default_adapter

    expected = "Kwai-Kolors/Kolors-IP-Adapter-Plus/ip_adapter_plus_general.bin"
    assert default_adapter(str(kolors_models.kolors)) == default_adapter("Kwai-Kolors/Kolors-diffusers") == expected


def test_the_blocks_command_lists_kolors_blocks_and_sdxls_presets(capsys, kolors_models):
    code, out, err = run(capsys, "blocks", "--model", kolors_models.kolors)
    assert code == 0, err
    assert "(kolors): 22 attention layers take image features; default blocks: style" in out
    assert any(line.split()[0] == "up_blocks.0.attentions.1" and "style" in line for line in out.splitlines())


def test_adapters_reloaded_on_a_kolors_pipeline_keep_its_text_projection(kolors, kolors_models):
    """A pipeline that kept the style block's weights only reloads them for ``all``: diffusers' unload_ip_adapter
    leaves Kolors' UNet so that the next load_ip_adapter would drop ChatGLM's projection (the call would fail)."""
    from instantstyle import StylePipeline

    pruned = StylePipeline.from_pretrained(str(kolors_models.kolors), str(kolors_models.adapter), device="cpu")
    request = kolors_request(kolors_models, blocks="all")
    assert (pixels(pruned(request).images[0]) == pixels(kolors(request).images[0])).all()


def test_kolors_img2img_makes_diffusers_kolors_img2img_recipes_pixels(kolors, kolors_models, recipe):
    from diffusers import KolorsImg2ImgPipeline

    img2img = KolorsImg2ImgPipeline.from_pipe(recipe["pipe"])
    init = Image.open(kolors_models.content_image).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS)
    style = Image.open(kolors_models.style_image).convert("RGB")
    reference = img2img(prompt="a cat", image=init, strength=0.6, num_inference_steps=2, ip_adapter_image=style,
                        generator=torch.Generator().manual_seed(7)).images[0]
    ours = kolors(kolors_request(kolors_models, init_image=str(kolors_models.content_image), strength=0.6)).images[0]
    assert (pixels(ours) == pixels(reference)).all()
    assert abs(pixels(ours) - pixels(recipe["style"])).mean() > 0.5  # not the text-to-image one


def test_a_content_prompt_with_kolors_plus_adapter_is_one_line_exit_2(capsys, kolors_models, tmp_path):
    code, out, err = run(capsys, "generate", "--model", kolors_models.kolors, "--adapter", kolors_models.adapter,
                         "--style", kolors_models.style_image, "--prompt", "a cat", "--content-prompt", "a wave",
                         "--steps", "2", "--device", "cpu", "-o", tmp_path / "cat.png")
    assert code == 2
    assert err.strip() == "error: content subtraction needs a global adapter; this is a plus (patch-feature) adapter"
    assert not (tmp_path / "cat.png").exists()


NO_HIDIFFUSION = r"^--hidiffusion works on the UNet models it has settings for \(sd15, sdxl\), not on kolors: "


@pytest.mark.parametrize(("changes", "message"), [
    ({"mask": "MASK"}, r"^inpainting \(--mask\) is not available for Kolors models: diffusers has no Kolors "),
    ({"control": "canny", "control_image": "IMAGE"}, r"^--control is not available for Kolors models"),
    ({"hidiffusion": True}, NO_HIDIFFUSION),
    ({"restyle": "IMAGE"}, r"^--restyle is InstantStyle-Plus, made for UNet models \(SDXL, SD1.5\); kolors is a UNet "),
])
def test_what_diffusers_has_no_kolors_pipeline_for_is_refused_from_the_config(kolors_models, changes, message):
    paths = {"MASK": str(kolors_models.content_image), "IMAGE": str(kolors_models.content_image)}
    changes = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in changes.items()}
    if "mask" in changes:
        changes["init_image"] = str(kolors_models.content_image)
    with pytest.raises(UserError, match=message):
        check(kolors_request(kolors_models, **changes), Runtime(), model_info(str(kolors_models.kolors)))
