"""Image-based modes: img2img, inpainting and ControlNet on SDXL and SD1.5, through one StylePipeline."""

import numpy as np
import pytest
import torch
from PIL import Image

from instantstyle import Request, StylePipeline, UserError
from instantstyle.core.plan import complete
from instantstyle.modes.control import canny, estimate_depth
from instantstyle.modes.image import init_size, mode_kwargs

from .conftest import FAST, pixels, while_decoding


def make_request(tiny, **changes) -> Request:
    return Request(**{"prompt": "a cat", "style": str(tiny.style_image), **FAST, **changes})


def controlnet_of(modes, arch_name):
    return str(modes.sdxl_controlnet if arch_name == "sdxl" else modes.sd15_controlnet)


def test_img2img_follows_the_init_image(arch_pipe, tiny, modes, tmp_path):
    first = pixels(arch_pipe(make_request(tiny, init_image=str(modes.init_image), strength=0.5)).images[0])
    Image.open(modes.init_image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "flipped.png")
    other = pixels(arch_pipe(make_request(tiny, init_image=str(tmp_path / "flipped.png"), strength=0.5)).images[0])
    assert abs(first - other).mean() > 1


def test_img2img_result_moves_gradually_with_strength(sdxl, tiny, modes):
    request = make_request(tiny, init_image=str(modes.init_image), steps=4)
    start = pixels(sdxl(request, strength=0.25).images[0])
    middle = pixels(sdxl(request, strength=0.5).images[0])
    full = pixels(sdxl(request, strength=1.0).images[0])
    assert abs(start - middle).mean() < abs(start - full).mean()


def test_img2img_size_keeps_the_init_images_shape_at_the_models_size(sdxl, tiny, modes, tmp_path):
    Image.open(modes.init_image).resize((4000, 2000)).save(tmp_path / "photo.png")
    assert init_size(make_request(tiny, init_image=str(tmp_path / "photo.png")), 1024) == (1024, 512)
    result = sdxl(make_request(tiny, init_image=str(modes.init_image), width=None, height=None))
    assert result.images[0].size == (64, 64)  # the tiny model's native size
    assert result.request.strength == 0.8


def test_strength_that_runs_no_step_is_an_error(sdxl, tiny, modes):
    with pytest.raises(UserError, match="runs no denoising step"):
        sdxl(make_request(tiny, init_image=str(modes.init_image), strength=0.3))


def test_inpainting_repaints_only_inside_the_mask(arch_pipe, tiny, modes):
    pipe = arch_pipe
    init = pixels(Image.open(modes.init_image).convert("RGB"))
    out = pixels(pipe(make_request(tiny, init_image=str(modes.init_image), mask=str(modes.left_mask))).images[0])
    inside, outside = abs(out - init)[:, :32], abs(out - init)[:, 32:]
    assert outside.max() <= 1
    assert inside.mean() > 10


def test_inpainting_checkpoint_with_a_9_channel_unet(tiny, modes):
    pipe = StylePipeline.from_pretrained(str(modes.sdxl_inpaint), str(tiny.sdxl_adapter), device="cpu")
    assert pipe.pipe.unet.config.in_channels == 9
    init = pixels(Image.open(modes.init_image).convert("RGB"))
    out = pixels(pipe(make_request(tiny, init_image=str(modes.init_image), mask=str(modes.right_mask))).images[0])
    assert abs(out - init)[:, :32].max() <= 1 and abs(out - init)[:, 32:].mean() > 10
    with pytest.raises(UserError, match="inpainting model"):
        pipe(make_request(tiny))


def test_canny_draws_the_outline_of_a_square():
    image = Image.new("RGB", (64, 64), "black")
    image.paste((255, 255, 255), (16, 16, 48, 48))
    edges = np.asarray(canny(image))[..., 0] > 0
    assert edges[16:48, 14:19].any(axis=1).all()  # every row crosses the left side
    assert not edges[24:40, 24:40].any() and not edges[:8].any()  # flat areas have none
    assert set(np.unique(np.asarray(canny(image)))) <= {0, 255}


def test_canny_is_opencvs_on_the_colour_image_in_bgr_order(modes):
    import cv2

    image = Image.open(modes.init_image).convert("RGB")
    expected = cv2.Canny(cv2.imread(str(modes.init_image)), 100, 200)  # the InstantStyle-Plus script's call
    assert np.array_equal(np.asarray(canny(image))[..., 0], expected)
    assert np.array_equal(np.asarray(canny(image))[..., 1], expected)


def test_canny_finds_an_edge_between_colours_of_equal_brightness():
    image = Image.new("RGB", (64, 64), (200, 0, 0))
    image.paste((0, 0, 200), (32, 0, 64, 64))  # blue beside red: one grey level apart at most
    assert np.ptp(np.asarray(image.convert("L"))) <= 40
    assert (np.asarray(canny(image))[:, 30:34, 0] > 0).any(axis=1).all()


@pytest.mark.parametrize("name, control", [("sdxl", "canny"), ("sdxl", "depth"), ("sd15", "canny")])
def test_control_image_steers_the_result(request, tiny, modes, name, control):
    pipe = request.getfixturevalue(name)
    source = str(modes.init_image if control == "canny" else modes.depth_map)
    plain = pixels(pipe(make_request(tiny)).images[0])
    controlled = make_request(tiny, control=control, control_image=source, controlnet=controlnet_of(modes, name))
    assert abs(pixels(pipe(controlled).images[0]) - plain).mean() > 1


def test_depth_model_turns_a_photo_into_the_depth_map(sdxl, tiny, modes):
    request = make_request(tiny, control="depth", control_image=str(modes.init_image),
                           controlnet=str(modes.sdxl_controlnet))
    with_model = complete(request.replace(depth_model=str(modes.depth_model)), sdxl.resources)
    estimator = sdxl.resources.depth_model(str(modes.depth_model))
    depth = estimate_depth(Image.open(modes.init_image).convert("RGB"), estimator, (64, 64))
    grey = np.asarray(depth)
    assert (grey[..., 0] == grey[..., 2]).all() and grey.min() == 0 and grey.max() == 255
    assert (pixels(mode_kwargs(with_model, estimator)["image"]) == pixels(depth)).all()  # the map, not the photo
    assert sdxl(with_model).images[0].size == (64, 64)


def test_control_scale_0_adds_nothing(sdxl, tiny, modes):
    plain = pixels(sdxl(make_request(tiny)).images[0])
    off = make_request(tiny, control="canny", control_image=str(modes.init_image),
                       controlnet=str(modes.sdxl_controlnet), control_scale=0.0)
    assert abs(pixels(sdxl(off).images[0]) - plain).max() <= 1


@pytest.mark.parametrize("mask", [False, True], ids=["img2img", "inpaint"])
def test_a_controlnet_steers_img2img_and_inpainting_too(sdxl, tiny, modes, mask):
    """The same img2img / inpainting request with and without the ControlNet: another image where it repaints
    (the left half under the mask), and inpainting keeps the init image outside the mask either way."""
    request = make_request(tiny, init_image=str(modes.init_image), mask=str(modes.left_mask) if mask else None)
    without = pixels(sdxl(request).images[0])
    steered = pixels(sdxl(request.replace(control="canny", controlnet=str(modes.sdxl_controlnet))).images[0])
    repainted = slice(0, 32) if mask else slice(0, 64)
    assert abs(steered - without)[:, repainted].mean() > 1
    if mask:
        init = pixels(Image.open(modes.init_image).convert("RGB"))
        assert abs(steered - init)[:, 32:].max() <= 1


def test_controlnet_attention_never_sees_image_tokens(sdxl, tiny, modes):
    request = make_request(tiny, control="canny", control_image=str(modes.init_image),
                           controlnet=str(modes.sdxl_controlnet))
    seen: dict[str, list] = {"controlnet": [], "unet": []}

    def record(where):
        def hook(module, args, kwargs):
            seen[where].append(kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None))
        return hook

    handles = [
        module.register_forward_pre_hook(record(where), with_kwargs=True)
        for where, model in (("controlnet", sdxl.resources.controlnet(str(modes.sdxl_controlnet))),
                             ("unet", sdxl.pipe.unet))
        for name, module in model.named_modules()
        if name.endswith("attn2")
    ]
    try:
        sdxl(request)
    finally:
        for handle in handles:
            handle.remove()
    assert seen["controlnet"] and seen["unet"]
    assert all(isinstance(e, torch.Tensor) and e.shape[1] == 77 for e in seen["controlnet"])
    assert all(isinstance(e, tuple) for e in seen["unet"])  # the UNet does get (text, image tokens)


def test_controlnet_for_the_other_architecture_is_an_error(sdxl, tiny, modes):
    with pytest.raises(UserError, match="another kind of model"):
        sdxl(make_request(tiny, control="canny", control_image=str(modes.init_image),
                          controlnet=str(modes.sd15_controlnet)))


def test_default_controlnet_is_recorded_and_missing_offline_is_an_error(sdxl, tiny, modes):
    request = make_request(tiny, control="canny", control_image=str(modes.init_image))
    assert complete(request, sdxl.resources).controlnet == "diffusers/controlnet-canny-sdxl-1.0"
    with pytest.raises(UserError, match="controlnet 'diffusers/controlnet-canny-sdxl-1.0'"):
        sdxl(request)


def test_vae_tiling_turns_on_above_1024_px_for_that_call_only(sdxl, tiny):
    wide, during = while_decoding(sdxl, make_request(tiny, width=1088, height=64, steps=1))
    assert wide.images[0].size == (1088, 64) and during["tiling"] and not sdxl.pipe.vae.use_tiling
    _, during = while_decoding(sdxl, make_request(tiny, steps=1))
    assert not during["tiling"]
