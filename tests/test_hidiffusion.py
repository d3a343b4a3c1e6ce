"""HiDiffusion (RAU-Net + MSW-MSA): the authors' pixels, composition with InstantStyle, a UNet left as found.

The equivalence tests compare with the authors' package (hidiffusion 0.1.10, its one broken import fixed
in a private copy fetched from PyPI) on narrow random-weight models with SDXL base's / SD1.5's exact
module names, which the package needs to recognise them. Sizes and steps are the smallest at which
every code path engages: 7 steps make SDXL's aggressive RAU-Net run RAD at step 0 and the pooled phase
at step 1; 128 px make the windows of MSW-MSA 4 latent pixels wide, so their shifts are not all zero.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from instantstyle import Request
from instantstyle.errors import UserError
from instantstyle.families import family_named
from instantstyle.modes.hidiffusion import (
    denoising_calls,
    hidiffusion,
    hooks_on,
    window_merge,
    window_partition,
    window_shift,
)
from instantstyle.modes.hidiffusion_settings import settings_of, switching_schedule
from instantstyle.modes.image import default_strength
from instantstyle.testing.hires import HiresModels, hires_models
from instantstyle.testing.lora import write_tiny_lora
from instantstyle.testing.original_hidiffusion import (
    LARGE_SIZES,
    PackageUnavailable,
    compare_with_package,
    original_hidiffusion,
)

from .conftest import FAST, pixels

SDXL, SD15 = settings_of("sdxl"), settings_of("sd15")
STEPS = 7  # SDXL: int(8/50 * 7) = 1 step of RAD, then the pooled phase until int(0.4 * 7) = 2


@pytest.fixture(scope="session")
def hires(tiny, tmp_path_factory) -> HiresModels:
    """Beside the shared tiny tree when $INSTANTSTYLE_FIXTURES keeps it between runs, else for this session."""
    shared = os.environ.get("INSTANTSTYLE_FIXTURES")
    return hires_models(None if shared else tmp_path_factory.mktemp("hires"), tiny)


@pytest.fixture(scope="module")
def package():
    try:
        return original_hidiffusion()
    except PackageUnavailable as err:
        pytest.skip(f"the original hidiffusion package is unavailable: {err}")


@pytest.mark.parametrize("family, width, height, steps", [
    ("sdxl", 128, 128, STEPS),
    ("sdxl", 64, 200, STEPS),  # non-square, odd window maps (13 x 4 latent pixels: resized, as the authors do)
    ("sd15", 136, 200, 5),  # SD1.5: RAD at the first level for int(0.4 * 6) = 2 of PNDM's 6 UNet calls
], ids=["sdxl-square", "sdxl-non-square", "sd15-non-square"])
def test_style_preset_matches_the_hidiffusion_package(hires, package, family, width, height, steps):
    made = compare_with_package(hires, package, family, width, height, steps, plain=True)
    assert "dilate" in made.phases and made.windowed > 0
    assert family == "sd15" or "pool" in made.phases
    assert made.max_difference <= 1e-5
    assert made.plain is not None and np.abs(made.ours - made.plain).mean() > 1e-3  # and it did change the image


def test_sd15_changes_the_image_and_leaves_the_unet_exactly_as_before(sd15, tiny):
    request = Request(prompt="a cat", style=str(tiny.style_image), **FAST)
    unet = sd15.pipe.unet
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    before = pixels(sd15(request).images[0])
    with hidiffusion(unet, "sd15", steps=denoising_calls(sd15.pipe.scheduler, FAST["steps"]), seed=7) as run:
        during = pixels(sd15(request).images[0])
    after = pixels(sd15(request).images[0])
    assert run.phases[0] == "dilate" and run.windowed > 0
    assert np.abs(during - before).mean() > 1
    assert (after == before).all()
    assert all(torch.equal(v, weights[k]) for k, v in unet.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules()) and hooks_on(unet) == 0
    conv = unet.get_submodule(SD15.dilated_conv)
    assert (conv.stride, conv.padding, conv.dilation) == ((2, 2), (1, 1), (1, 1))


def test_an_error_inside_the_block_still_removes_it(sdxl):
    unet = sdxl.pipe.unet
    upsamplers = unet.num_upsamplers
    with pytest.raises(RuntimeError, match="boom"), hidiffusion(unet, "sdxl", steps=3, seed=0):
        assert hooks_on(unet) > 0
        raise RuntimeError("boom")
    assert hooks_on(unet) == 0 and not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
    assert unet.num_upsamplers == upsamplers


#: What takes a feature out of a request (the request without it, for comparison).
WITHOUT = {"content_prompt": None, "init_image": None, "strength": None, "control": None, "control_image": None,
           "controlnet": None, "mask": None, "regions": (), "lora": ()}


@pytest.mark.parametrize("changes, feature", [
    ({"content_prompt": "a cat"}, ("content_prompt",)),
    ({"init_image": "init", "strength": 0.8}, ("init_image", "strength")),
    ({"control": "canny", "control_image": "init"}, ("control", "control_image", "controlnet")),
    ({"control": "canny", "init_image": "init"}, ("control", "controlnet")),
    ({"init_image": "init", "mask": "left"}, ("mask",)),
    ({"style": ("style", "style2"), "regions": ("left", "right")}, ("regions",)),
    ({"lora": "lora"}, ("lora",)),
], ids=["content-subtraction", "img2img", "controlnet", "controlnet-img2img", "inpaint", "regions", "lora"])
def test_composes_with_instantstyle(sdxl, tiny, modes, tmp_path, changes, feature):
    """HiDiffusion acts on a request with each InstantStyle feature (its phases run and the image changes), and the
    feature still acts under HiDiffusion: the request without it, with HiDiffusion too, is another image."""
    files = {"init": modes.init_image, "left": modes.left_mask, "right": modes.right_mask,
             "style": tiny.style_image, "style2": modes.second_style}
    if "lora" in changes:
        files["lora"] = write_tiny_lora(tiny.sdxl, tmp_path / "lora.safetensors")

    def path(value):
        return tuple(str(files[v]) for v in value) if isinstance(value, tuple) else str(files.get(value, value))

    fields = {k: path(v) if k not in ("content_prompt", "strength") else v for k, v in changes.items()}
    if "control" in fields:
        fields["controlnet"] = str(modes.sdxl_controlnet)
    request = Request(**{"prompt": "a cat", "style": str(tiny.style_image), **FAST, "steps": STEPS, **fields})

    def with_hidiffusion(asked: Request) -> np.ndarray:
        calls = denoising_calls(sdxl.pipe.scheduler, STEPS, default_strength(asked))
        with hidiffusion(sdxl.pipe.unet, "sdxl", steps=calls, seed=3, inpaint=asked.mode == "inpaint",
                         text_controlnet=asked.mode == "text" and asked.control is not None) as run:
            image = pixels(sdxl(asked).images[0])
        assert len(run.phases) == calls and set(run.phases) - {"plain"}
        return image

    image = with_hidiffusion(request)
    assert np.abs(image - pixels(sdxl(request).images[0])).mean() > 0.5
    without = request.replace(**{name: WITHOUT[name] for name in feature})
    # A feature that did nothing would give the same pixels, bit for bit; regions (two styles on two halves against
    # the same two blended everywhere) move this tiny model's image least: 0.05 levels on average.
    assert np.abs(image - with_hidiffusion(without)).mean() > 0.02


def test_refuses_what_it_cannot_act_on(sdxl):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    without = replace(family_named("sdxl"), name="dit", features={})  # a family that gives no HiDiffusion settings
    refused = r"^--hidiffusion works on the UNet models it has settings for \(sd15, sdxl\), not on dit: "
    with pytest.raises(UserError, match=refused):
        with hidiffusion(sdxl.pipe.unet, without, steps=3, seed=0):
            pass
    with pytest.raises(UserError, match="this UNet has no Transformer2DModel"):
        with hidiffusion(sdxl.pipe.unet, "sd15", steps=3, seed=0):
            pass
    compiled = UNet2DConditionModel.from_config(sdxl.pipe.unet.config)
    compiled.compile()
    with pytest.raises(UserError, match="compiled UNet"), hidiffusion(compiled, "sdxl", steps=3, seed=0):
        pass
    conv_lora = UNet2DConditionModel.from_config(sdxl.pipe.unet.config)
    conv_lora.add_adapter(LoraConfig(r=2, target_modules=[SDXL.dilated_conv]))
    with pytest.raises(UserError, match="peft.*not a plain Conv2d"), hidiffusion(conv_lora, "sdxl", steps=3, seed=0):
        pass


def test_switching_steps_are_the_authors():
    latent_2048, latent_4096 = (256, 256), (512, 512)
    assert switching_schedule(SDXL, latent_2048, 50) == switching_schedule(SDXL, (256, 600), 50)
    aggressive = switching_schedule(SDXL, latent_2048, 50)
    assert (aggressive.dilate, aggressive.pool) == (range(8), range(8, 20))
    assert switching_schedule(SDXL, latent_2048, 50, text_controlnet=True).pool == range(8, 25)
    assert switching_schedule(SDXL, latent_2048, 50, inpaint=True) == switching_schedule(SDXL, (1, 1), 50, inpaint=True)
    assert (switching_schedule(SDXL, latent_2048, 50, inpaint=True).pool, ) == (range(20),)
    extreme = switching_schedule(SDXL, latent_4096, 50)
    assert (extreme.dilate, extreme.pool) == (range(15), range(35))
    assert switching_schedule(SD15, (128, 128), 50) == switching_schedule(SD15, (255, 900), 50)
    sd15 = switching_schedule(SD15, (128, 128), 50)
    assert (sd15.dilate, sd15.pool) == (range(20), range(0))
    sd15_large = switching_schedule(SD15, (256, 256), 50)
    assert (sd15_large.dilate, sd15_large.pool) == (range(35), range(15))


def test_windows_partition_and_merge_back_exactly():
    tokens = torch.randn(2, 12 * 16, 5)
    for draw in (0.1, 0.3, 0.6, 0.9):
        shift = window_shift((6, 8), draw)
        windows = window_partition(tokens, (12, 16), (6, 8), shift)
        assert windows.shape == (8, 48, 5)
        assert torch.equal(window_merge(windows, (12, 16), (6, 8), shift), tokens)
    assert [window_shift((6, 8), d) for d in (0.25, 0.5, 0.75, 0.99)] == [(0, 0), (1, 2), (2, 4), (3, 6)]


def test_windows_with_one_shift_per_map_are_each_maps_own_windows():
    tokens = torch.randn(3, 12 * 16, 5)
    shifts = [(0, 0), (3, 4), (1, 2)]
    windows = window_partition(tokens, (12, 16), (6, 8), shifts)
    for i, shift in enumerate(shifts):
        assert torch.equal(windows[4 * i : 4 * i + 4], window_partition(tokens[i : i + 1], (12, 16), (6, 8), shift))
    assert torch.equal(window_merge(windows, (12, 16), (6, 8), shifts), tokens)


def test_denoising_calls_count_the_unet_calls(sdxl, sd15):
    assert denoising_calls(sdxl.pipe.scheduler, 30) == 30
    assert denoising_calls(sdxl.pipe.scheduler, 30, 0.5) == 15
    assert denoising_calls(sd15.pipe.scheduler, 30) == 31  # PNDM's PLMS runs one extra warm-up call


def test_fixture_has_sdxl_base_and_sd15_module_names(hires, package):
    from diffusers import UNet2DConditionModel

    keys = Path(package.__file__).parent / "sd_module_key"
    for model, listing in ((hires.sdxl, "sdxl_module_key.txt"), (hires.sd15, "sd15_module_key.txt")):
        names = {name for name, _ in UNet2DConditionModel.from_pretrained(str(model / "unet")).named_modules()}
        assert set((keys / listing).read_text().split()) < names


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the large-size switching steps start at 4096 px (SDXL) "
                    "and 2048 px (SD1.5): too big for the CPU; run on a CUDA GPU (or the benchmark's gpu mode)")
@pytest.mark.parametrize("family, size, steps", LARGE_SIZES)
def test_large_sizes_match_the_hidiffusion_package_on_gpu(hires, package, family, size, steps):
    made = compare_with_package(hires, package, family, size, size, steps, device="cuda", output_type="latent")
    assert "dilate+pool" in made.phases  # the large-size schedule: RAD and the pooled phase together
    assert made.relative_difference <= 1e-4
