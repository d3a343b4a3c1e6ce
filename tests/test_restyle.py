"""Restyling a photo (InstantStyle-Plus): the authors' pixels and inverted latents on the fixtures, the recipe's
defaults, one inversion per photo, and the request's rules.

The reference data in ``tests/data/restyle`` were made by ``references/instantstyle_plus/make_reference.py``: the
authors' ``infer_style.py`` (commit 2beaef4) with its ReNoise inversion and ControlNet img2img pipeline, run on these
fixtures on the CPU in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.core.embeddings import image_hash
from instantstyle.core.request import read_png_request, write_png
from instantstyle.families import family_named
from instantstyle.modes import restyle
from instantstyle.testing.restyle import RestyleModels, tiny_restyle_models

from .conftest import complete_for

DATA = Path(__file__).parent / "data" / "restyle"
CASES = json.loads((DATA / "cases.json").read_text())


@pytest.fixture(scope="session")
def rs(tiny, tmp_path_factory) -> RestyleModels:
    return tiny_restyle_models(tmp_path_factory.mktemp("restyle"), tiny)


def case_request(rs: RestyleModels, case: dict) -> Request:
    """The reference case as our request: the recipe's defaults, the case's values."""
    photo = str(rs.photo if case["photo"] == "photo" else rs.photo_wide)
    width, height = Image.open(photo).size
    guided = case["style_guidance"] or case["content_guidance"]
    return Request(prompt=case["prompt"], style=str(rs.style), restyle=photo, steps=case["steps"],
                   seed=case["seed"], inversion_steps=case["inversion_steps"], renoise_steps=case["renoise_steps"],
                   restyle_content_scale=case["restyle_content_scale"], control_scale=case["control_scale"],
                   style_guidance=case["style_guidance"], content_guidance=case["content_guidance"],
                   csd=str(rs.csd) if guided else None, controlnet=str(rs.controlnet), width=width, height=height)


@pytest.mark.parametrize("name", sorted(CASES))
def test_restyle_gives_the_authors_pixels_and_inverted_latent(sdxl, rs, name):
    expected = np.load(DATA / f"{name}.npz")
    result = sdxl(case_request(rs, CASES[name]))
    got = np.asarray(result.images[0], dtype=np.float64)
    diff = np.abs(got - expected["image"])
    assert diff.mean() <= 0.5 and diff.max() <= 2.5, (diff.mean(), diff.max())
    res = sdxl.resources
    key = restyle.inversion_key(result.request, image_hash(result.request.restyle), res.model_id, res.dtype)
    np.testing.assert_allclose(sdxl.resources.inversions.latents[key].numpy(), expected["latent"], atol=1e-4, rtol=0)


def test_restyle_fills_the_recipe_for_what_the_request_leaves_unset(sdxl, rs):
    done = complete_for(sdxl, Request("a photo of a house", style=str(rs.style), restyle=str(rs.photo), steps=7))
    assert (done.scheduler, done.control, done.control_scale) == ("ddim", "canny", 0.6)
    assert done.negative_prompt == restyle.RECIPE_NEGATIVE
    assert (done.inversion_steps, done.renoise_steps, done.restyle_content_scale, done.guidance) == (7, 1, 0.3, 5.0)
    assert done.controlnet == family_named("sdxl").default_controlnets["canny"]
    assert (done.width, done.height) == (64, 64)  # the photo's aspect at the model's size


def test_restyle_keeps_what_the_user_gave_over_the_recipe(sdxl, rs):
    done = complete_for(sdxl, Request("a house", style=str(rs.style), restyle=str(rs.photo), negative_prompt="",
                                 scheduler="euler", control="tile", control_scale=0.4, inversion_steps=9))
    assert (done.negative_prompt, done.scheduler, done.control, done.control_scale) == ("", "euler", "tile", 0.4)
    assert done.inversion_steps == 9
    assert done.controlnet == family_named("sdxl").default_controlnets["tile"]


def test_other_modes_keep_their_defaults(sdxl, tiny):
    done = complete_for(sdxl, Request("a cat", style=str(tiny.style_image)))
    assert (done.negative_prompt, done.control_scale, done.scheduler, done.inversion_steps) == ("", 1.0, None, None)


def test_a_sweep_over_the_scales_inverts_the_photo_once(sdxl, rs):
    base = case_request(rs, {**CASES["default"], "seed": 31})
    before = sdxl.resources.inversions.inverted
    first = sdxl(base)
    assert sdxl.resources.inversions.inverted == before + 1 and sdxl.resources.inversions.seconds > 0
    other = sdxl(base.replace(restyle_content_scale=0.0, scale=0.5))
    assert sdxl.resources.inversions.inverted == before + 1 and sdxl.resources.inversions.seconds == 0
    assert np.abs(np.asarray(other.images[0], float) - np.asarray(first.images[0], float)).mean() > 1


def test_a_restyled_png_reproduces_from_its_request(sdxl, rs, tmp_path):
    result = sdxl(case_request(rs, {**CASES["default"], "seed": 5}))
    path = write_png(result.images[0], tmp_path / "restyled.png", result.request)
    again = sdxl(read_png_request(path))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(Image.open(path).convert("RGB")))


def test_restyle_on_sd15_runs_the_same_recipe(sd15, rs, modes):
    request = Request("a house", style=str(rs.style), restyle=str(rs.photo), steps=2, seed=3,
                      controlnet=str(modes.sd15_controlnet))
    result = sd15(request)
    assert result.images[0].size == (64, 64) and result.request.scheduler == "ddim"
    photo = np.asarray(Image.open(rs.photo).convert("RGB"), float)
    assert np.abs(np.asarray(result.images[0], float) - photo).mean() > 1  # restyled, not copied


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_restyle_is_refused_on_flow_matching_transformers_in_one_line(name):
    with pytest.raises(UserError, match="InstantStyle-Plus, made for UNet models") as err:
        restyle.check_family(family_named(name))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fields, message", [
    ({"init_image": "i.png"}, "takes no --init-image"),
    ({"mask": "m.png", "init_image": "i.png"}, "takes no --init-image"),
    ({"composition": "c.png"}, "takes no --composition"),
    ({"style_guidance": 1.0}, r"need a CSD checkpoint \(--csd FILE\)"),
    ({"content_guidance": 1.0}, r"need a CSD checkpoint \(--csd FILE\)"),
    ({"inversion_steps": 0}, "inversion steps must be between 1 and 1000"),
    ({"inversion_steps": 1001}, "inversion steps must be between 1 and 1000"),
    ({"renoise_steps": 0}, "renoise steps must be between 1 and 10"),
    ({"restyle_content_scale": -1.0}, "restyle content scale must be between 0"),
    ({"num_images": 2}, "one image per photo"),
])
def test_bad_restyle_requests_are_one_line_errors(fields, message):
    with pytest.raises(UserError, match=message) as err:
        Request(**{"prompt": "a house", "style": "s.png", "restyle": "p.png", **fields})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fields", [{"style_guidance": 1.0, "csd": "c.pth"}, {"renoise_steps": 2},
                                    {"inversion_steps": 5}])
def test_restyle_options_without_a_photo_are_refused(fields):
    with pytest.raises(UserError, match=r"is for restyling a photo \(--restyle PHOTO\)"):
        Request("a house", style="s.png", **fields)


def test_a_caption_without_a_photo_or_content_image_is_refused():
    with pytest.raises(UserError, match=r"--caption makes the prompt from a photo: the photo to restyle"):
        Request("", style="s.png", caption_model="m")


def test_a_restyle_without_prompt_or_caption_is_refused_before_denoising(sdxl, rs):
    with pytest.raises(UserError, match=r"needs --prompt \(what the photo shows\) or --caption"):
        sdxl(Request(" ", style=str(rs.style), restyle=str(rs.photo)))


def test_a_captioned_request_needs_no_prompt_in_json():
    request = Request.from_dict({"style": "s.png", "restyle": "p.png", "caption_model": "m"})
    assert request.prompt == "" and request.caption_model == "m"


def test_guided_restyle_under_a_memory_budget_gives_the_same_pixels(tiny, rs):
    """Under a budget CSD guidance recomputes activations in its backward (gradient checkpointing): same numbers."""
    from instantstyle import StylePipeline

    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", memory_budget=4.0)
    expected = np.load(DATA / "style-guidance.npz")
    got = np.asarray(pipe(case_request(rs, CASES["style-guidance"])).images[0], dtype=np.float64)
    diff = np.abs(got - expected["image"])
    assert diff.mean() <= 0.5 and diff.max() <= 2.5, (diff.mean(), diff.max())
    assert not pipe.pipe.unet.is_gradient_checkpointing and not pipe.pipe.vae.is_gradient_checkpointing


def test_csd_guidance_takes_a_half_precision_csd_as_a_gpu_loads_it(rs):
    """On a GPU CSD is loaded in float16 while its targets are float32 embeddings: the loss is taken in float32 and
    its gradient reaches the image (the benchmark's float16 smoke run found the two dtypes mixed)."""
    import torch

    from instantstyle.scores.csd import load_csd

    csd = load_csd(rs.csd, "cpu", torch.float16)
    request = Request(prompt="a photo", style=str(rs.style), restyle=str(rs.photo), csd=str(rs.csd),
                      style_guidance=1.0, content_guidance=1.0)
    guidance = restyle.csd_guidance_for(csd, request)
    image = torch.rand(1, 3, 64, 64, requires_grad=True)
    loss = guidance.loss(image)
    (grad,) = torch.autograd.grad(loss, image)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0
