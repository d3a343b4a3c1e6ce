"""StylePipeline: loading every kind of model reference, seeds, and agreement with plain diffusers."""

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from instantstyle import Request, StylePipeline, UserError
from instantstyle.core.embeddings import load_image
from instantstyle.testing.single_file import export_single_file

from .conftest import FAST, pixels


def make_request(tiny, **changes) -> Request:
    return Request(**{"prompt": "a cat", "style": str(tiny.style_image), **FAST, **changes})


def plain_diffusers(cls, folder, **call):
    pipe = cls.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    call = {"prompt": "a cat", "num_inference_steps": 2, "width": 64, "height": 64, **call}
    return pipe, call


def test_scale_zero_equals_no_adapter(sdxl, tiny):
    pipe, call = plain_diffusers(StableDiffusionXLPipeline, tiny.sdxl, generator=torch.Generator().manual_seed(7))
    reference = pipe(**call).images[0]
    ours = sdxl(make_request(tiny, scale=0.0)).images[0]
    assert (pixels(ours) == pixels(reference)).all()


def test_style_changes_the_image_and_all_differs_from_style(sdxl, tiny):
    none = pixels(sdxl(make_request(tiny, scale=0.0)).images[0])
    style = pixels(sdxl(make_request(tiny, blocks="style")).images[0])
    every = pixels(sdxl(make_request(tiny, blocks="all")).images[0])
    assert abs(style - none).mean() > 0.5
    assert abs(every - style).mean() > 0.5


def test_same_seed_as_diffusers_native_instantstyle_recipe(sdxl, tiny):
    """diffusers' own load_ip_adapter + set_ip_adapter_scale(style dict) + ip_adapter_image, same seed."""
    pipe, call = plain_diffusers(StableDiffusionXLPipeline, tiny.sdxl, generator=torch.Generator().manual_seed(7))
    pipe.load_ip_adapter(str(tiny.adapters), subfolder="sdxl_models", weight_name="ip-adapter_sdxl.safetensors")
    pipe.set_ip_adapter_scale({"up": {"block_0": [0.0, 1.0, 0.0]}})
    reference = pipe(**call, ip_adapter_image=load_image(tiny.style_image)).images[0]
    ours = sdxl(make_request(tiny, blocks="style")).images[0]
    assert abs(pixels(ours) - pixels(reference)).max() <= 1


def test_same_seed_same_image(sdxl, tiny):
    a, b = sdxl(make_request(tiny)).images[0], sdxl(make_request(tiny)).images[0]
    assert (pixels(a) == pixels(b)).all()


def test_result_records_the_seed_size_model_and_adapter(sdxl, tiny):
    result = sdxl(make_request(tiny, seed=None, width=None, height=None, steps=1))
    assert result.request.seed is not None
    assert (result.request.width, result.request.height) == result.images[0].size
    assert result.request.model == str(tiny.sdxl) and result.request.adapter == str(tiny.sdxl_adapter)
    again = sdxl(result.request).images[0]
    assert (pixels(again) == pixels(result.images[0])).all()


def test_sd15_model_and_adapter(sd15, tiny):
    assert sd15.resources.family.name == "sd15"
    with_style = pixels(sd15(make_request(tiny)).images[0])
    without = pixels(sd15(make_request(tiny, scale=0.0)).images[0])
    assert abs(with_style - without).mean() > 0.5


def test_sd15_scale_zero_equals_no_adapter(sd15, tiny):
    pipe, call = plain_diffusers(StableDiffusionPipeline, tiny.sd15, generator=torch.Generator().manual_seed(7))
    reference = pipe(**call, guidance_scale=5.0).images[0]
    assert (pixels(sd15(make_request(tiny, scale=0.0)).images[0]) == pixels(reference)).all()


def test_legacy_bin_adapter_gives_the_same_image(sdxl, tiny):
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter_bin), device="cpu")
    assert (pixels(pipe(make_request(tiny)).images[0]) == pixels(sdxl(make_request(tiny)).images[0])).all()


def test_single_file_checkpoint_loads_and_matches_the_folder(sdxl, tiny, tmp_path):
    single = export_single_file(tiny.sdxl, tmp_path / "tiny-sdxl.safetensors")
    pipe = StylePipeline.from_pretrained(
        str(single), str(tiny.sdxl_adapter), device="cpu", single_file_config=str(tiny.sdxl)
    )
    assert pipe.resources.family.name == "sdxl"
    request = make_request(tiny)
    assert abs(pixels(pipe(request).images[0]) - pixels(sdxl(request).images[0])).max() <= 1


def test_image_encoder_is_found_beside_the_adapter_by_its_width(tiny):
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_vith_adapter), device="cpu")
    assert pipe.resources.image_encoder.identity.endswith("models/image_encoder")


def test_explicit_image_encoder_of_the_wrong_width_is_an_error(tiny):
    with pytest.raises(UserError, match="adapter needs"):
        StylePipeline.from_pretrained(
            str(tiny.sdxl),
            str(tiny.sdxl_adapter),
            device="cpu",
            image_encoder=str(tiny.adapters / "models" / "image_encoder"),
        )


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("./no/such/folder", "no such file or folder"),
        ("nobody/not-cached-model", "not in the Hugging Face cache"),
    ],
)
def test_bad_model_references_are_errors(tiny, model, message):
    with pytest.raises(UserError, match=message):
        StylePipeline.from_pretrained(model, str(tiny.sdxl_adapter), device="cpu")


def test_adapter_hub_reference_not_cached_is_an_error(tiny):
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        StylePipeline.from_pretrained(str(tiny.sdxl), "h94/IP-Adapter/sdxl_models/nope.safetensors", device="cpu")


def test_a_prompt_past_clips_77_tokens_is_warned_about_once(sdxl, tiny, caplog):
    long = "a cat " + "sitting on a very long sentence " * 4  # ~150 byte-level tokens of the tiny CLIP
    request = Request(long, style=str(tiny.style_image), **FAST)
    with caplog.at_level("WARNING", logger="instantstyle"):
        sdxl(request)
        sdxl(request.replace(seed=8))
    [warning] = [r.getMessage() for r in caplog.records if "CLIP reads 75" in r.getMessage()]
    assert warning.startswith("warning: the prompt is ") and "long sentence" in warning


def test_a_content_prompt_past_77_tokens_is_warned_about(sdxl, tiny, caplog):
    content = "a dog " + "with a very long description " * 4
    with caplog.at_level("WARNING", logger="instantstyle"):
        sdxl(Request("a cat", style=str(tiny.style_image), content_prompt=content, **FAST))
    assert any(r.getMessage().startswith("warning: the content prompt is ") for r in caplog.records)


def test_a_feature_holds_for_exactly_one_call_through_the_plan(sdxl, tiny):
    """A context a feature puts in ``Plan.during`` (HiDiffusion's hooks, say) is entered around the denoising call
    and left after it."""
    import dataclasses
    from contextlib import contextmanager

    from instantstyle.core.plan import complete, plan

    calls = []

    @contextmanager
    def count_denoiser_calls(plan, resources, pipe):
        handle = resources.denoiser.register_forward_pre_hook(lambda *_: calls.append(1))
        try:
            yield
        finally:
            handle.remove()

    res = sdxl.resources
    planned = plan(complete(make_request(tiny), res), res)
    planned = dataclasses.replace(planned, during=(*planned.during, count_denoiser_calls))
    with planned.applied(res) as call:
        image = call()[0]
    assert len(calls) == FAST["steps"] and not sdxl.resources.denoiser._forward_pre_hooks
    assert (pixels(image) == pixels(sdxl(make_request(tiny)).images[0])).all()
