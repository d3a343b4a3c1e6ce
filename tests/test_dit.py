"""InstantStyle on diffusion transformers: the ``sd3`` (InstantX SD3.5 adapter) and ``flux`` (XLabs adapter)
families give image features to the targeted blocks only, cost nothing at scale 0, equal diffusers' own
IP-Adapter recipe for the same seed and per-layer scales, and subtract content by the formula where the
adapter's space allows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instantstyle import Request, StylePipeline, UserError
from instantstyle.core.processors import active_layers, adapter_parameter_count

from .conftest import pixels, style_embeds
from .test_dit_fixtures import load, with_instantx, with_xlabs

SIZE = {"steps": 2, "width": 64, "height": 64, "seed": 7}
#: FLUX runs with true CFG in these tests, so the image negative (a black image's embedding) is exercised.
TRUE_CFG = 4.0


def recipe_call(pipe, family: str, **kwargs):
    """diffusers' own call for ``SIZE`` at guidance 5 (FLUX: distilled guidance 5 plus true CFG with the empty
    negative prompt), PIL output."""
    extra = {"negative_prompt": "", "true_cfg_scale": TRUE_CFG} if family == "flux" else {}
    return pipe(prompt="a cat", num_inference_steps=SIZE["steps"], width=SIZE["width"], height=SIZE["height"],
                guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(SIZE["seed"]),
                **extra, **kwargs).images[0]


def styled(dit, family: str, **fields) -> Request:
    """A fast request with the fixture style (FLUX: with true CFG)."""
    extra = {"true_cfg": TRUE_CFG} if family == "flux" else {}
    return Request(**{"prompt": "a cat", "style": str(dit.style_image), **SIZE, **extra, **fields})


@pytest.fixture(scope="module")
def sd3_recipe(dit):
    return with_instantx(dit)


@pytest.fixture(scope="module")
def flux_recipe(dit):
    return with_xlabs(dit, dit.flux_adapter_repo)


def set_recipe_scales(pipe, family: str, scales: dict[int, float]) -> None:
    """diffusers' per-layer scales: FLUX's ``set_ip_adapter_scale(list)``; SD3's processors' ``scale`` (its
    ``set_ip_adapter_scale`` takes one float for every block)."""
    layers = pipe.transformer.config.num_layers
    if family == "flux":
        pipe.set_ip_adapter_scale([scales.get(i, 0.0) for i in range(layers)])
        return
    for name, proc in pipe.transformer.attn_processors.items():
        if name.startswith("transformer_blocks."):
            proc.scale = scales.get(int(name.split(".")[1]), 0.0)


# --------------------------------------------------------------------------------------------
# Equal to diffusers


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_per_block_scales_equal_diffusers_recipe_for_the_same_seed(family, dit, request):
    ours = request.getfixturevalue(family)
    recipe = request.getfixturevalue(f"{family}_recipe")
    set_recipe_scales(recipe, family, {1: 0.6, 3: 1.0})
    expected = recipe_call(recipe, family, ip_adapter_image=Image.open(dit.style_image))
    got = ours(styled(dit, family, blocks="transformer_blocks.1=0.6,transformer_blocks.3")).images[0]
    assert np.array_equal(pixels(got), pixels(expected))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_scale_zero_equals_the_plain_pipeline_bit_for_bit(family, dit, request):
    ours = request.getfixturevalue(family)
    plain = recipe_call(load(getattr(dit, family)), family)
    got = ours(styled(dit, family, blocks="all", scale=0.0)).images[0]
    assert np.array_equal(pixels(got), pixels(plain))


def test_flux_content_subtraction_is_the_formula_through_the_encoders_own_clip_text_tower(flux, dit, flux_recipe):
    """XLabs' CLIP ViT-L/14 image_embeds minus content_scale times the projected text embedding of the content
    prompt, by openai/clip-vit-large-patch14's own text tower (the image encoder's folder); the image equals
    diffusers' call given those embeddings (and the black image's as negative)."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(dit.clip_l))
    tower = CLIPTextModelWithProjection.from_pretrained(str(dit.clip_l))
    ids = tokenizer(["a dog"], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        content = tower(ids.input_ids).text_embeds
        style = flux_recipe.encode_image(Image.open(dit.style_image), torch.device("cpu"), 1)
        black = flux_recipe.encode_image(np.zeros((64, 64, 3), dtype=np.uint8), torch.device("cpu"), 1)
    wanted = style - 0.3 * content
    req = styled(dit, "flux", content_prompt="a dog", content_scale=0.3)
    embeds, negative = style_embeds(flux, req)
    assert torch.allclose(embeds, wanted, atol=1e-6) and torch.equal(negative, black)
    set_recipe_scales(flux_recipe, "flux", dict.fromkeys(range(4), 1.0))
    expected = recipe_call(flux_recipe, "flux", ip_adapter_image_embeds=[embeds[None]],
                           negative_ip_adapter_image_embeds=[black[None]])
    assert np.array_equal(pixels(flux(req).images[0]), pixels(expected))


def test_sd3_content_subtraction_is_refused_with_what_to_do_instead(sd3, dit):
    with pytest.raises(UserError, match="SD3.5's adapter cannot subtract content.*use --blocks to limit it"):
        sd3(styled(dit, "sd3", content_prompt="a dog"))


# --------------------------------------------------------------------------------------------
# Where the features go


def layers_with_image_attention(pipe: StylePipeline, req: Request) -> set[int]:
    """Indices of the blocks whose layer added image attention during a run, observed on the layers: SD3's image
    keys are computed only where the image attention runs; FLUX's layer returns the image attention it adds."""
    seen: set[int] = set()
    hooks = []
    for i, block in enumerate(pipe.resources.denoiser.transformer_blocks):
        proc = block.attn.processor
        if pipe.resources.family.name == "sd3" and hasattr(proc, "to_k_ip"):
            hooks.append(proc.to_k_ip.register_forward_hook(lambda *_, i=i: seen.add(i)))
        elif pipe.resources.family.name == "flux":
            def added(_module, _inputs, outputs, i=i):
                if isinstance(outputs, tuple) and len(outputs) == 3 and outputs[2].abs().sum() > 0:
                    seen.add(i)
            hooks.append(block.attn.register_forward_hook(added))
    try:
        pipe(req)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_only_the_targeted_blocks_receive_image_features(family, dit, request):
    pipe = request.getfixturevalue(family)
    seen = layers_with_image_attention(pipe, styled(dit, family, blocks="transformer_blocks.1-2"))
    assert seen == {1, 2}


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_untargeted_layers_hold_no_adapter_weights(family, dit):
    folder, adapter = getattr(dit, family), getattr(dit, f"{family}_adapter")
    full = StylePipeline.from_pretrained(str(folder), str(adapter), device="cpu", blocks="all")
    pruned = StylePipeline.from_pretrained(str(folder), str(adapter), device="cpu", blocks="transformer_blocks.2")
    assert active_layers(pruned.resources.denoiser, pruned.resources.family) == [{"transformer_blocks.2.attn"}]
    blocks = pruned.resources.denoiser.transformer_blocks
    assert not any(hasattr(blocks[i].attn.processor, "to_k_ip") for i in (0, 1, 3))
    assert adapter_parameter_count(pruned.resources.denoiser) < adapter_parameter_count(full.resources.denoiser)
    req = styled(dit, family, blocks="transformer_blocks.2")
    assert layers_with_image_attention(pruned, req) == {2}
    assert np.array_equal(pixels(pruned(req).images[0]), pixels(full(req).images[0]))


def test_flux_blocks_listing_names_the_double_stream_blocks_and_the_unreached_single_ones(capsys, dit):
    from .test_cli import run

    code, out, _ = run(capsys, "blocks", "--model", dit.flux)
    assert code == 0
    assert "(flux): 4 attention layers take image features; default blocks: all" in out
    assert [line.split()[0] for line in out.splitlines()[2:6]] == [f"transformer_blocks.{i}" for i in range(4)]
    assert "single_transformer_blocks.0-2 (3 single-stream blocks): not reached" in out


def test_sd3_blocks_listing_names_every_joint_block(capsys, dit):
    from .test_cli import run

    code, out, _ = run(capsys, "blocks", "--model", dit.sd3)
    rows = [line.split() for line in out.splitlines()[2:]]
    assert code == 0 and rows == [[f"transformer_blocks.{i}", "1", "all"] for i in range(6)]


def test_a_request_naming_no_blocks_gets_the_familys_default_and_records_it(flux, sd3, dit):
    assert flux(styled(dit, "flux")).request.blocks == "all"
    assert sd3(styled(dit, "sd3", steps=1)).request.blocks == "all"


def test_no_style_or_layout_preset_is_invented_for_transformers(flux, dit):
    with pytest.raises(UserError, match="no 'style' preset for flux models: .*instantstyle probe-blocks"):
        flux(styled(dit, "flux", blocks="style"))


# --------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_cli_generate_with_a_model_folder_and_its_adapter_file(family, capsys, dit, tmp_path):
    from instantstyle.core.request import read_png_request

    from .test_cli import run

    out = tmp_path / "out.png"
    code, stdout, _ = run(capsys, "generate", "--model", getattr(dit, family), "--adapter",
                            getattr(dit, f"{family}_adapter"), "--style", dit.style_image, "--prompt", "a cat",
                            "--steps", "2", "--width", "64", "--height", "64", "--seed", "7", "--device", "cpu",
                            "-o", out)
    assert (code, stdout.strip()) == (0, str(out))
    saved = read_png_request(out)
    assert saved.blocks == "all" and Image.open(out).size == (64, 64)


# --------------------------------------------------------------------------------------------
# Guidance-distilled FLUX


def test_flux_true_cfg_off_runs_one_forward_per_step_and_on_two(flux, dit):
    calls = []
    hook = flux.resources.denoiser.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        flux(styled(dit, "flux", true_cfg=1.0))
        off = len(calls)
        flux(styled(dit, "flux", true_cfg=3.0))
    finally:
        hook.remove()
    assert (off, len(calls) - off) == (SIZE["steps"], 2 * SIZE["steps"])


def test_flux_negative_prompt_without_true_cfg_is_refused_not_ignored(flux, dit):
    with pytest.raises(UserError, match="negative prompt acts only with true CFG"):
        flux(styled(dit, "flux", true_cfg=1.0, negative_prompt="blurry"))


def test_true_cfg_on_a_model_that_is_not_guidance_distilled_is_refused(sd3, dit):
    with pytest.raises(UserError, match="--true-cfg is for guidance-distilled models"):
        sd3(styled(dit, "sd3", true_cfg=2.0))


# --------------------------------------------------------------------------------------------
# What a family cannot do: one clear line each


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize(("fields", "message"), [
    (lambda dit: {"regions": (str(dit.content_image),)}, "regions .* are not available"),
    (lambda dit: {"composition": str(dit.content_image)}, "--composition is not available"),
    (lambda dit: {"init_image": str(dit.content_image), "control": "canny", "controlnet": "CONTROLNET"},
     "a ControlNet with --init-image is not available"),
    (lambda dit: {"scheduler": "euler"}, "--scheduler is not available"),
    (lambda dit: {"width": 72}, "width must be a multiple of 16"),
], ids=["regions", "composition", "controlnet-img2img", "scheduler", "size"])
def test_what_a_family_cannot_do_is_one_clear_error(family, fields, message, dit, request, tmp_path):
    pipe = request.getfixturevalue(family)
    controlnet = tmp_path / "controlnet"  # a folder that passes for a ControlNet: the family refuses the request
    controlnet.mkdir()
    (controlnet / "config.json").write_text('{"_class_name": "SD3ControlNetModel"}')
    given = {k: str(controlnet) if v == "CONTROLNET" else v for k, v in fields(dit).items()}
    with pytest.raises(UserError, match=message):
        pipe(styled(dit, family, **given))


def test_sd3_takes_one_adapter(sd3, dit):
    with pytest.raises(UserError, match="further adapters are not available for SD3"):
        sd3(styled(dit, "sd3", adapters=(f"{dit.sd3_adapter};style={dit.style_image}",)))


def test_an_adapter_of_the_other_family_does_not_fit(dit):
    with pytest.raises(UserError, match="does not fit this flux model"):
        StylePipeline.from_pretrained(str(dit.flux), str(dit.sd3_adapter), device="cpu",
                                      image_encoder=str(dit.siglip))


# --------------------------------------------------------------------------------------------
# Modes and batches


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_img2img_equals_diffusers_img2img_recipe(family, dit, request):
    from diffusers import AutoPipelineForImage2Image

    ours = request.getfixturevalue(family)
    recipe = AutoPipelineForImage2Image.from_pipe(request.getfixturevalue(f"{family}_recipe"))
    set_recipe_scales(recipe, family, dict.fromkeys(range(6), 1.0))
    init = Image.open(dit.content_image).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS)
    expected = recipe_call(recipe, family, image=init, strength=0.8, ip_adapter_image=Image.open(dit.style_image))
    got = ours(styled(dit, family, blocks="all", init_image=str(dit.content_image))).images[0]
    assert np.array_equal(pixels(got), pixels(expected))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_inpainting_repaints_inside_the_mask_only(family, dit, request, tmp_path):
    mask = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16)).save(mask)
    got = pixels(request.getfixturevalue(family)(
        styled(dit, family, init_image=str(dit.content_image), mask=str(mask))).images[0])
    init = pixels(Image.open(dit.content_image).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS))
    outside = np.pad(np.zeros((32, 32), bool), 16, constant_values=True)
    assert np.array_equal(got[outside], init[outside]) and not np.array_equal(got[~outside], init[~outside])


@pytest.fixture(scope="module")
def controlnets(dit, tmp_path_factory) -> dict[str, Path]:
    """Tiny ControlNets made from each fixture transformer, saved as diffusers folders."""
    from diffusers import FluxControlNetModel, FluxTransformer2DModel, SD3ControlNetModel, SD3Transformer2DModel

    root = tmp_path_factory.mktemp("dit-controlnets")
    torch.manual_seed(0)
    sd3 = SD3ControlNetModel.from_transformer(SD3Transformer2DModel.from_pretrained(str(dit.sd3 / "transformer")),
                                              num_layers=2, num_extra_conditioning_channels=0)
    sd3.save_pretrained(root / "sd3")
    transformer = FluxTransformer2DModel.from_pretrained(str(dit.flux / "transformer"))
    config = transformer.config
    flux = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1,
                                                attention_head_dim=config.attention_head_dim,
                                                num_attention_heads=config.num_attention_heads)
    flux.save_pretrained(root / "flux")
    return {"sd3": root / "sd3", "flux": root / "flux"}


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_controlnet_equals_diffusers_controlnet_recipe(family, dit, request, controlnets):
    import diffusers

    from instantstyle.modes.control import canny

    ours = request.getfixturevalue(family)
    cls = "StableDiffusion3ControlNetPipeline" if family == "sd3" else "FluxControlNetPipeline"
    model = "SD3ControlNetModel" if family == "sd3" else "FluxControlNetModel"
    controlnet = getattr(diffusers, model).from_pretrained(str(controlnets[family]))
    recipe = getattr(diffusers, cls).from_pipe(request.getfixturevalue(f"{family}_recipe"), controlnet=controlnet)
    set_recipe_scales(recipe, family, dict.fromkeys(range(6), 1.0))
    edges = canny(Image.open(dit.content_image).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS))
    expected = recipe_call(recipe, family, control_image=edges, ip_adapter_image=Image.open(dit.style_image))
    got = ours(styled(dit, family, blocks="all", control="canny", control_image=str(dit.content_image),
                           controlnet=str(controlnets[family]))).images[0]
    assert np.array_equal(pixels(got), pixels(expected))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_requests_sharing_a_call_give_the_images_of_single_runs(family, dit, request):
    pipe = request.getfixturevalue(family)
    requests = [styled(dit, family, prompt=f"a house {i}", seed=20 + i) for i in range(2)]
    calls = []
    hook = pipe.resources.denoiser.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        shared = pipe.generate_many(requests)
    finally:
        hook.remove()
    per_step = 2 if family == "flux" else 1  # FLUX's true CFG runs the negative as a second forward
    assert len(calls) == per_step * SIZE["steps"]
    for req, result in zip(requests, shared, strict=True):
        alone = pipe(req).images[0]
        assert np.abs(pixels(result.images[0]) - pixels(alone)).max() <= 2


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_schedule_ending_at_zero_is_the_plain_pipeline(family, dit, request):
    plain = recipe_call(load(getattr(dit, family)), family)
    got = request.getfixturevalue(family)(styled(dit, family, style_end=0.0)).images[0]
    assert np.array_equal(pixels(got), pixels(plain))


def test_two_xlabs_adapters_with_their_own_blocks_equal_diffusers_two_adapter_recipe(dit):
    """v1 on block 1, v2 on block 3: the pruned slots are skipped (diffusers' processor would run them at 0)."""
    ours = StylePipeline.from_pretrained(str(dit.flux), str(dit.flux_adapter), device="cpu",
                                         blocks="transformer_blocks.1")
    extra = f"{dit.flux_adapter_v2};style={dit.content_image};blocks=transformer_blocks.3"
    got = ours(styled(dit, "flux", blocks="transformer_blocks.1", adapters=(extra,))).images[0]
    recipe = load(dit.flux)
    recipe.load_ip_adapter([str(dit.flux_adapter_repo), str(dit.flux_adapter_v2_repo)],
                           weight_name=["ip_adapter.safetensors"] * 2,
                           image_encoder_pretrained_model_name_or_path=str(dit.clip_l),
                           image_encoder_dtype=torch.float32)
    recipe.set_ip_adapter_scale([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    expected = recipe_call(recipe, "flux",
                           ip_adapter_image=[Image.open(dit.style_image), Image.open(dit.content_image)])
    assert np.array_equal(pixels(got), pixels(expected))


# --------------------------------------------------------------------------------------------
# Single files


def test_sd3_and_flux_single_files_are_recognised_by_their_tensor_names():
    from instantstyle.families import family_of_checkpoint

    sd3_keys = ["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "first_stage_model.decoder.x"]
    assert family_of_checkpoint(sd3_keys, "m").name == "sd3"
    assert family_of_checkpoint(["double_blocks.0.img_attn.norm.key_norm.scale"], "m").name == "flux"


def test_a_transformer_only_single_file_without_configs_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    from instantstyle.loading.loader import load_base_pipeline

    path = tmp_path / "flux1-dev.safetensors"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(2)}, str(path))
    with pytest.raises(UserError, match="holds only the flux transformer; give --single-file-config"):
        load_base_pipeline(str(path), torch.float32)


def test_auto_dtype_on_a_gpu_is_bfloat16_for_the_transformer_families(sd3, flux, sdxl):
    from instantstyle.loading.runtime import Runtime

    gpu = torch.device("cuda")  # resolved without touching a GPU
    assert [Runtime().torch_dtype(gpu, p.resources.family.gpu_dtype) for p in (sd3, flux, sdxl)] == [
        torch.bfloat16, torch.bfloat16, torch.float16]


def test_what_a_family_cannot_do_fails_before_the_model_loads(capsys, dit, tmp_path, monkeypatch):
    from instantstyle.loading import loader

    from .test_cli import run

    loads = []
    monkeypatch.setattr(loader, "load", lambda *args, **kwargs: loads.append(args))
    code, _, err = run(capsys, "generate", "--model", dit.flux, "--adapter", dit.flux_adapter, "--style",
                       dit.style_image, "--prompt", "a cat", "--negative-prompt", "blurry", "-o", tmp_path / "x.png")
    assert (code, loads) == (2, []) and err.startswith("error: FLUX.1 is guidance-distilled: a negative prompt")
