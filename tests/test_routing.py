"""Where and when the image features act: blends, schedule, style fit, composition and regions."""

import pytest
import torch
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.core.adapter import adapter_parameter_count

from .conftest import FAST, encode, pixels


def make_request(tiny, **changes) -> Request:
    return Request(**{"prompt": "a cat", "style": str(tiny.style_image), **FAST, **changes})


def image(pipe, request):
    return pixels(pipe(request).images[0])


def first_step_attention(pipe, request) -> dict[str, torch.Tensor]:
    """Each UNet cross-attention layer's output in the first UNet call, in the order the layers run."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, a, out, name=name: outputs.setdefault(name, out.detach().clone()))
        for name, module in pipe.pipe.unet.named_modules()
        if name.endswith("attn2")
    ]
    try:
        pipe(request, steps=1)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def test_blend_with_weights_1_and_0_equals_the_single_reference(sdxl, tiny, modes):
    single = image(sdxl, make_request(tiny))
    blended = image(sdxl, make_request(tiny, style=(f"{tiny.style_image}:1", f"{modes.second_style}:0")))
    assert (blended == single).all()


def test_blending_two_styles_differs_from_each(sdxl, tiny, modes):
    first, second = image(sdxl, make_request(tiny)), image(sdxl, make_request(tiny, style=str(modes.second_style)))
    both = image(sdxl, make_request(tiny, style=(str(tiny.style_image), f"{modes.second_style}:0.5")))
    assert abs(both - first).mean() > 0.1 and abs(both - second).mean() > 0.1


def test_style_end_0_equals_no_adapter(arch_pipe, tiny):
    pipe = arch_pipe
    assert (image(pipe, make_request(tiny, style_end=0.0)) == image(pipe, make_request(tiny, scale=0.0))).all()


def test_style_window_acts_only_on_its_part_of_the_run(sdxl, tiny):
    request = make_request(tiny, steps=4)
    full, none = image(sdxl, request), image(sdxl, request.replace(scale=0.0))
    late = image(sdxl, request.replace(style_start=0.5))  # the last two of four steps
    assert abs(late - full).mean() > 0.1 and abs(late - none).mean() > 0.1


def test_crop_loses_the_edges_of_a_wide_reference_and_pad_and_tiles_keep_them(sdxl, modes, tmp_path):
    wide = Image.open(modes.wide_style).convert("RGB")
    edited = wide.copy()
    edited.paste((255, 0, 0), (0, 0, 48, 64))  # repaint the left edge only
    edited.save(tmp_path / "edited.png")
    for fit in ("crop", "pad", "tiles"):
        before, after = encode(sdxl, str(modes.wide_style), fit), encode(sdxl, str(tmp_path / "edited.png"), fit)
        changed = (after - before).abs().max().item()
        assert (changed == 0) if fit == "crop" else (changed > 1e-3), fit


def test_composition_with_the_style_image_equals_style_plus_layout(sdxl, tiny):
    both = image(sdxl, make_request(tiny, blocks="style+layout"))
    routed = image(sdxl, make_request(tiny, blocks="style", composition=str(tiny.style_image)))
    assert (routed == both).all()


def test_composition_image_reaches_only_the_layout_block(sdxl, tiny, modes):
    request = make_request(tiny, composition=str(modes.init_image))
    first = first_step_attention(sdxl, request)
    second = first_step_attention(sdxl, request.replace(composition=str(modes.second_style)))
    changed = [name for name in first if not torch.equal(first[name], second[name])]
    assert changed and changed[0].startswith("down_blocks.2.attentions.1.")
    assert all(torch.equal(first[n], second[n]) for n in list(first)[: list(first).index(changed[0])])


def test_composition_scale_0_equals_no_composition_and_loads_no_weights(sdxl, tiny, modes):
    params = adapter_parameter_count(sdxl.pipe.unet)
    plain = image(sdxl, make_request(tiny))
    off = image(sdxl, make_request(tiny, composition=str(modes.init_image), composition_scale=0.0))
    assert (off == plain).all()
    assert adapter_parameter_count(sdxl.pipe.unet) == params


def test_region_mask_confines_a_style_to_its_region(arch_pipe, tiny, modes):
    pipe = arch_pipe
    request = make_request(tiny, width=128, height=128, style=(str(tiny.style_image),), regions=(str(modes.left_mask),))
    alone = first_step_attention(pipe, request)
    both = first_step_attention(pipe, request.replace(style=request.style + (str(modes.second_style),),
                                                      regions=(str(modes.left_mask), str(modes.right_mask))))
    first_targeted = next(n for n in alone if not torch.equal(alone[n], both[n]))
    diff = (both[first_targeted] - alone[first_targeted]).abs().mean(dim=(0, 2))  # per position
    side = int(diff.numel() ** 0.5)
    grid = diff.reshape(side, side)
    left, right = grid[:, : side // 2].mean().item(), grid[:, side // 2 :].mean().item()
    assert right > 0 and left < 0.05 * right


def test_regions_change_the_image(sdxl, tiny, modes):
    blended = image(sdxl, make_request(tiny, style=(str(tiny.style_image), str(modes.second_style))))
    regional = image(sdxl, make_request(tiny, style=(str(tiny.style_image), str(modes.second_style)),
                                        regions=(str(modes.left_mask), str(modes.right_mask))))
    assert abs(regional - blended).mean() > 0.1


def test_regions_with_composition_and_a_plus_adapter_act_only_in_their_window(tiny, modes):
    """A plus adapter with two regional styles and a composition image: with the window closed from the start
    it is exactly the plain model; open for half the run it changes the image."""
    from instantstyle import StylePipeline

    plus = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_plus_adapter), device="cpu")
    request = make_request(tiny, style=(str(tiny.style_image), str(modes.second_style)),
                           regions=(str(modes.left_mask), str(modes.right_mask)), composition=str(modes.init_image),
                           steps=4)
    closed, plain = image(plus, request.replace(style_end=0.0)), image(plus, request.replace(scale=0.0,
                                                                                            composition_scale=0.0))
    assert (closed == plain).all()
    assert abs(image(plus, request.replace(style_end=0.5)) - plain).mean() > 0.1


def further_adapter(tiny, style, **options) -> str:
    extra = "".join(f";{k}={v}" for k, v in options.items())
    return f"{tiny.sdxl_plus_adapter};style={style}{extra}"


def test_a_further_adapter_of_another_kind_adds_its_style(sdxl, tiny, modes):
    plain = image(sdxl, make_request(tiny))
    both = image(sdxl, make_request(tiny, adapters=[further_adapter(tiny, modes.second_style, blocks="layout")]))
    off = image(sdxl, make_request(tiny, adapters=[further_adapter(tiny, modes.second_style, scale=0)]))
    assert abs(both - plain).mean() > 0.1
    assert (off == plain).all()
    assert (image(sdxl, make_request(tiny)) == plain).all()  # dropping it again restores the single adapter


def test_a_further_adapter_acts_only_on_its_own_blocks(sdxl, tiny, modes):
    request = make_request(tiny, adapters=[further_adapter(tiny, modes.second_style, blocks="layout")])
    first = first_step_attention(sdxl, request)
    second = first_step_attention(sdxl, make_request(
        tiny, adapters=[further_adapter(tiny, modes.init_image, blocks="layout")]))
    changed = [name for name in first if not torch.equal(first[name], second[name])]
    assert changed and changed[0].startswith("down_blocks.2.attentions.1.")


def test_further_adapters_with_regions_on_a_pruned_pipeline_equal_the_unpruned_one(sdxl, tiny, modes):
    """Loading a further adapter into a pipeline pruned to its blocks (and routing its regional styles) makes the
    same image as the session pipeline that keeps every weight."""
    from instantstyle import StylePipeline

    pruned = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu")
    extra = f"{tiny.sdxl_vith_adapter};style={tiny.style_image};style={modes.second_style}" \
            f";region={modes.left_mask};region={modes.right_mask};blocks=style"
    request = make_request(tiny, adapters=[extra], composition=str(modes.init_image))
    assert (image(pruned, request) == image(sdxl, request)).all()
    assert abs(image(pruned, request) - image(pruned, make_request(tiny))).mean() > 0.1


def test_a_further_adapter_for_another_model_is_an_error(sdxl, tiny, modes):
    with pytest.raises(UserError, match="does not fit this sdxl model"):
        sdxl(make_request(tiny, adapters=[f"{tiny.sd15_adapter};style={modes.second_style}"]))


def test_sd15_takes_blends_composition_fit_and_a_further_adapter(sd15, tiny, modes):
    plain = image(sd15, make_request(tiny))
    request = make_request(tiny, style=(str(tiny.style_image), f"{modes.wide_style}:0.5"), style_fit="tiles",
                           composition=str(modes.init_image),
                           adapters=[f"{tiny.sd15_plus_adapter};style={modes.second_style};blocks=layout"])
    assert abs(image(sd15, request) - plain).mean() > 0.1


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mask": "m.png"}, "mask needs an init image"),
        ({"regions": ("a.png", "b.png")}, "2 region mask(s) for 1 style(s)"),
        ({"style": ("a.png:x",)}, "is not a number"),
        ({"strength": 0.5}, "strength needs an init image"),
        ({"init_image": "i.png", "strength": 1.5}, "at most 1"),
        ({"style_start": 0.8, "style_end": 0.2}, "is after style end"),
        ({"style_end": 2}, "fraction of the run"),
        ({"style_fit": "stretch"}, "style fit must be one of"),
        ({"control_image": "c.png"}, "need --control"),
        ({"control": "depth"}, "needs --control-image"),
        ({"control": "pose.png"}, "needs --controlnet"),
        ({"control": "pose.png", "controlnet": "cn", "control_image": "x.png"}, "ready control image"),
        ({"composition_scale": -1}, "composition scale must be between 0 and 10"),
        ({"control": "canny", "control_image": "c.png", "depth_model": "org/depth"}, "needs --control depth"),
        ({"adapters": ["b.safetensors"]}, "give its style image(s)"),
        ({"adapters": ["b.safetensors;style=x.png;scale=big"]}, "is not a number"),
        ({"adapters": ["b.safetensors;style=x.png;weight=2"]}, "use style=, blocks=, scale= or region="),
        ({"adapters": ["b.safetensors;style=x.png;region=a.png;region=b.png"]}, "2 region mask(s) for 1 style(s)"),
    ],
)
def test_bad_combinations_are_one_line_errors(changes, message):
    with pytest.raises(UserError, match=None) as err:
        Request(**{"prompt": "p", "style": "s.png", **changes})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_mode_fields_survive_json():
    request = Request(prompt="p", style=("a.png", "b.png:0.5"), init_image="i.png", mask="m.png", strength=0.6,
                      control="canny", controlnet="org/cn", control_scale=0.7, composition="c.png",
                      composition_scale=0.4, regions=["l.png", "r.png"], style_start=0.1, style_end=0.9,
                      style_fit="tiles", adapters=["p.bin;style=x.png:0.5;blocks=layout;scale=0.3;region=m.png"])
    again = Request.from_json(request.to_json())
    assert again == request and again.regions == ("l.png", "r.png")
    assert again.adapters[0].style[0].weight == 0.5 and again.adapters[0].blocks == "layout"
