"""The memory budget and the text phase: prompts encoded first by the pipeline's own ``encode_prompt`` give the
image the call would make, a budget changes where models live and not the image, and decodes in tiles only
where a whole image would not fit."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from diffusers import AutoencoderKL

from instantstyle import Request, StylePipeline, UserError
from instantstyle.app.cli import main
from instantstyle.core.adapter import adapter_parameter_count
from instantstyle.core.plan import PHASES, complete, plan
from instantstyle.loading.memory import Decode, GiB, decode_bytes, decode_plan, is_released, module_bytes
from instantstyle.loading.runtime import Runtime
from instantstyle.scores.scorers import Scorers

from .conftest import FAST, pixels, while_decoding

#: SDXL base 1.0's VAE (the benchmark's copy of the public config), built on the meta device: sizes, no weights.
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)
TEXT_KEYS = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")


@pytest.fixture(scope="module")
def budgeted(tiny) -> StylePipeline:
    """The tiny SDXL under an 8 GiB budget, asked to keep every adapter weight (the budget keeps only targets)."""
    return StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", memory_budget=8,
                                         keep_all_weights=True)


def request_for(tiny, **changes) -> Request:
    return Request(**{"prompt": "a cat", "style": str(tiny.style_image), "negative_prompt": "blurry",
                      "num_images": 2, **FAST, **changes})


def test_prompts_encoded_before_the_call_give_the_image_the_call_makes_from_the_prompts(arch_pipe, tiny):
    """The text phase passes the embeddings of the family's ``encode_prompt``; the same call given the prompt
    strings instead (diffusers encodes them inside) makes the same pixels, on both families."""
    res = arch_pipe.resources
    request = complete(request_for(tiny), res)
    with plan(request, res).applied(res) as call:
        assert "prompt_embeds" in call.kwargs and "prompt" not in call.kwargs
        ours = call()
    with plan(request, res).applied(res) as call:
        inside = call(prompt=request.prompt, negative_prompt=request.negative_prompt,
                      **{key: None for key in TEXT_KEYS if key in call.kwargs})
    assert all((pixels(a) == pixels(b)).all() for a, b in zip(ours, inside, strict=True))


def test_a_memory_budget_makes_the_same_pixels_as_no_budget(budgeted, sdxl, tiny):
    """Same request (style, negative prompt, content subtraction through SDXL's text tower, two images) with and
    without the budget: pixel-equal, not just close."""
    request = request_for(tiny, content_prompt="a striped pattern", content_scale=0.5)
    with_budget, without = budgeted(request).images, sdxl(request).images
    assert all((pixels(a) == pixels(b)).all() for a, b in zip(with_budget, without, strict=True))


def test_a_budget_keeps_only_the_targeted_adapter_layers_even_if_all_are_asked_for(budgeted, tiny):
    pruned = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu")
    assert not budgeted.resources.runtime.keeps_all_weights
    assert adapter_parameter_count(budgeted.resources.denoiser) == adapter_parameter_count(pruned.resources.denoiser)


def test_a_budget_frees_the_image_encoder_after_it_encodes(budgeted, tiny):
    budgeted(request_for(tiny, num_images=1, steps=1))
    assert budgeted.resources.low_memory and is_released(budgeted.resources.image_encoder)


def test_each_phase_is_told_in_order_once_per_image_call(sdxl, tiny):
    told: list[str] = []
    sdxl.on_phase = told.append
    try:
        sdxl(request_for(tiny, num_images=1, steps=1))
    finally:
        sdxl.on_phase = None
    assert told == [*PHASES, "end"]


def test_requests_sharing_one_call_get_their_prompts_encoded_together(sdxl, tiny):
    """generate_many encodes every prompt of the shared call in one text phase; each image equals its own run."""
    requests = [request_for(tiny, prompt=p, num_images=1, seed=s) for p, s in (("a cat", 1), ("a dog", 2))]
    together = sdxl.generate_many(requests)
    for request, result in zip(requests, together, strict=True):
        alone = sdxl(request).images[0]
        assert abs(pixels(result.images[0]) - pixels(alone)).max() <= 1


def test_sdxl_at_1024_px_in_8_gib_decodes_in_tiles_and_in_24_gib_whole():
    """SDXL's VAE upcasts to float32 to decode: about 4 GiB of working memory at 1024 px by the estimate; beside
    the float16 UNet (4.8 GiB) an 8 GiB budget leaves room only for tiles, 24 GiB for the whole image."""
    with torch.device("meta"):
        vae = AutoencoderKL(**SDXL_VAE).to(torch.float16)
    whole = decode_bytes(vae, 1024, 1024, torch.float16)
    assert 3 * GiB <= whole <= 4 * GiB
    unet = int(2.57e9 * 2)
    room = 8 * GiB - unet - module_bytes(vae, torch.float32) - GiB // 2
    tiled = decode_plan(vae, 1024, 1024, torch.float16, room)
    assert tiled.tile is not None and 512 <= tiled.tile < 1024 and tiled.slicing
    assert decode_bytes(vae, tiled.tile, tiled.tile, torch.float16) <= room
    assert decode_plan(vae, 1024, 1024, torch.float16, 24 * GiB - unet) == Decode(None)  # as without a budget
    assert decode_plan(vae, 1024, 1024, torch.float16, 24 * GiB - unet, images=8) == Decode(None, slicing=True)


def test_a_budget_too_small_to_decode_even_small_tiles_is_one_line(tiny):
    with torch.device("meta"):
        vae = AutoencoderKL(**SDXL_VAE)
    with pytest.raises(UserError, match="too little even for 128 px tiles"):
        decode_plan(vae, 1024, 1024, torch.float32, 10 * 2**20)


def test_a_budget_tiles_the_decode_of_an_image_too_large_for_its_room(tiny):
    """Room for a 128 px decode, a 256 px image: decoded in 128 px tiles (the image differs slightly; the
    budget only does this where the whole image would not fit)."""
    base = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu")
    vae, request = base.pipe.vae, request_for(tiny, num_images=1, steps=1, width=256, height=256)
    resident = module_bytes(base.resources.denoiser) + module_bytes(vae)
    room = decode_bytes(vae, 160, 160, torch.float32)
    budget = (resident + GiB // 2 + room) / GiB
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", memory_budget=budget)
    result, during = while_decoding(pipe, request)
    assert result.images[0].size == (256, 256)
    assert during["tiling"] and during["tile"] == 128


def test_vae_tiling_decodes_in_tiles_of_half_the_native_size_and_one_image_at_a_time(tiny):
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", vae_tiling=True)
    native = pipe.resources.family.native_size(pipe.pipe)
    _, during = while_decoding(pipe, request_for(tiny, num_images=2, steps=1, width=native, height=native))
    assert during == {"tiling": True, "slicing": True, "tile": native // 2}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"memory_budget": 0}, "positive number of GiB"),
        ({"memory_budget": float("nan")}, "positive number of GiB"),
        ({"memory_budget": float("inf")}, "positive number of GiB"),
        ({"memory_budget": 8, "offload": "model"}, "--memory-budget and --offload"),
        ({"memory_budget": 8, "device_map": "balanced"}, "--memory-budget and --device-map"),
        ({"memory_budget": 8, "low_memory": False}, "drop --no-low-memory"),
    ],
)
def test_a_memory_budget_that_makes_no_sense_is_refused_before_loading(fields, message):
    with pytest.raises(UserError, match=message):
        Runtime(**fields)


def test_a_budget_smaller_than_the_resident_models_is_one_line_at_load(tiny):
    with pytest.raises(UserError, match="the denoiser and the VAE alone need"):
        StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", memory_budget=0.01)


@pytest.mark.parametrize("value", ["0", "-8", "nan", "eight"])
def test_the_memory_budget_flag_rejects_bad_values_in_one_line(tiny, tmp_path, value):
    result = CliRunner().invoke(main, ["generate", "--prompt", "a cat", "--style", str(tiny.style_image),
                                       "-o", str(tmp_path / "x.png"), "--memory-budget", value])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "memory budget" in result.output.strip().splitlines()[-1].replace("-", " ")
    assert not (tmp_path / "x.png").exists()


def test_generate_with_a_memory_budget_writes_the_image(tiny, tmp_path):
    out = tmp_path / "cat.png"
    result = CliRunner().invoke(main, [
        "generate", "--prompt", "a cat", "--style", str(tiny.style_image), "-o", str(out), "--device", "cpu",
        "--model", str(tiny.sdxl), "--adapter", str(tiny.sdxl_adapter), "--memory-budget", "8", "--steps", "1",
        "--width", "64", "--height", "64"])
    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_a_module_is_on_the_device_whatever_its_index_is_spelled():
    """Parameters on ``cuda:0`` are on ``cuda`` (the device a Runtime resolves to); checked with CPU devices,
    whose index torch also leaves out."""
    from instantstyle.loading.memory import on_device, same_device

    layer = torch.nn.Linear(2, 2)
    assert on_device(layer, torch.device("cpu")) and on_device(layer, torch.device("cpu", 0))
    assert not on_device(layer, torch.device("meta"))
    assert same_device(torch.device("cpu", 0), torch.device("cpu")) and not same_device(
        torch.device("cpu"), torch.device("meta"))


# --- with the features that hook the call or come after it ------------------------------------------------------


def test_a_budget_with_hidiffusion_makes_the_pixels_of_hidiffusion_without_one(budgeted, sdxl, tiny):
    """HiDiffusion's hooks go on the denoiser the budget brought back; 128 px and 3 steps, where it acts."""
    request = request_for(tiny, num_images=1, steps=3, width=128, height=128, hidiffusion=True)
    with_budget, without = budgeted(request).images[0], sdxl(request).images[0]
    assert (pixels(with_budget) == pixels(without)).all()


def test_a_budget_scores_as_no_budget_does(budgeted, sdxl, tiny, tmp_path):
    """CLIP text, style, content leak and CSD of the same images, with the scoring models under the budget."""
    from instantstyle.testing.csd import build_csd_checkpoint

    checkpoint = build_csd_checkpoint(tmp_path / "csd.pth")
    result = sdxl(request_for(tiny, num_images=1, content_prompt="stripes"))
    ours, theirs = Scorers(budgeted).score(result, csd=checkpoint)[0], Scorers(sdxl).score(result, csd=checkpoint)[0]
    assert all(ours.get(key) is not None for key in ("clip_text", "clip_style", "content_leak", "csd_style"))
    assert ours == theirs


def test_generate_with_a_budget_hidiffusion_and_score_writes_the_scored_image(tiny, tmp_path):
    from instantstyle.scores.scorer import read_png_scores

    out = tmp_path / "cat.png"
    result = CliRunner().invoke(main, [
        "generate", "--prompt", "a cat", "--style", str(tiny.style_image), "-o", str(out), "--device", "cpu",
        "--model", str(tiny.sdxl), "--adapter", str(tiny.sdxl_adapter), "--memory-budget", "8", "--steps", "3",
        "--width", "128", "--height", "128", "--hidiffusion", "--score"])
    assert result.exit_code == 0, result.output
    stored = read_png_scores(out)
    assert stored is not None and stored.get("clip_style") is not None
