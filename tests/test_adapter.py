"""Adapter: reading h94 files, refusing misfits, pruning, and where image features actually go."""

import pytest
import torch

from instantstyle import StylePipeline, UserError
from instantstyle.core.adapter import adapter_parameter_count, file_parameter_count, read_adapter
from instantstyle.core.blocks import resolve_blocks
from instantstyle.core.processors import TextOnlyAttnProcessor

from .conftest import FAST, pixels


def layers_receiving_image_features(pipe: StylePipeline, **request) -> set[str]:
    """Run a request and record which attention layers computed image attention (their to_k_ip ran)."""
    seen: set[str] = set()
    hooks = []
    for name, module in pipe.pipe.unet.named_modules():
        if name.endswith("attn2"):
            for linear in getattr(module.processor, "to_k_ip", []):
                hooks.append(linear.register_forward_hook(lambda *_, n=name: seen.add(n)))
    try:
        pipe(**{**FAST, **request})
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_global_and_plus_files_are_classified(tiny):
    assert read_adapter(tiny.sdxl_adapter).kind == "global"
    assert read_adapter(tiny.sdxl_plus_adapter).kind == "plus"


def test_legacy_bin_reads_like_safetensors(tiny):
    a, b = read_adapter(tiny.sdxl_adapter), read_adapter(tiny.sdxl_adapter_bin)
    assert a.state_dict["image_proj"].keys() == b.state_dict["image_proj"].keys()
    assert all(
        torch.equal(a.state_dict["ip_adapter"][k], b.state_dict["ip_adapter"][k]) for k in a.state_dict["ip_adapter"]
    )


def test_a_file_that_is_not_an_adapter_is_an_error(tmp_path, tiny):
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    with pytest.raises(UserError, match="not a readable weights file"):
        read_adapter(tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match="not an IP-Adapter file"):
        read_adapter(tiny.sdxl / "unet" / "diffusion_pytorch_model.safetensors")


def test_an_sd15_adapter_does_not_fit_sdxl(tiny):
    with pytest.raises(UserError, match="does not fit this sdxl model"):
        StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sd15_adapter), device="cpu")


def test_only_the_style_block_receives_image_features(sdxl, tiny):
    seen = layers_receiving_image_features(sdxl, prompt="a cat", style=str(tiny.style_image), blocks="style")
    assert seen and all(name.startswith("up_blocks.0.attentions.1.") for name in seen)
    assert seen == set(resolve_blocks("style", sdxl.resources.layers, "sdxl"))


def test_all_blocks_receive_image_features_with_all(sdxl, tiny):
    seen = layers_receiving_image_features(sdxl, prompt="a cat", style=str(tiny.style_image), blocks="all")
    assert seen == set(sdxl.resources.layers)


def test_pruned_pipeline_holds_only_the_projection_and_targeted_layers(tiny):
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", blocks="style")
    weights = read_adapter(tiny.sdxl_adapter)
    targeted = resolve_blocks("style", pipe.resources.layers, "sdxl")
    layers = pipe.resources.layers
    index = {layer: 2 * i + 1 for i, layer in enumerate(layers)}  # h94 numbering: odd processor positions
    expected = sum(t.numel() for t in weights.state_dict["image_proj"].values()) + sum(
        weights.state_dict["ip_adapter"][f"{index[layer]}.{kv}.weight"].numel()
        for layer in targeted
        for kv in ("to_k_ip", "to_v_ip")
    )
    assert adapter_parameter_count(pipe.pipe.unet) == expected < file_parameter_count(weights)
    untargeted = [
        p
        for n, p in pipe.pipe.unet.attn_processors.items()
        if n.removesuffix(".processor") not in targeted and n.endswith("attn2.processor")
    ]
    assert all(isinstance(p, TextOnlyAttnProcessor) for p in untargeted)


def test_pruned_and_unpruned_adapters_give_the_same_image(sdxl, tiny):
    pruned = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", blocks="style")
    request = dict(prompt="a cat", style=str(tiny.style_image), blocks="style", **FAST)
    assert (pixels(pruned(**request).images[0]) == pixels(sdxl(**request).images[0])).all()


def test_retargeting_a_pruned_pipeline_reloads_the_needed_layers(tiny, sdxl):
    pruned = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", blocks="style")
    request = dict(prompt="a cat", style=str(tiny.style_image), blocks="all", **FAST)
    assert (pixels(pruned(**request).images[0]) == pixels(sdxl(**request).images[0])).all()


def test_a_diffusers_processor_laid_out_otherwise_is_refused_by_what_it_holds_not_by_version():
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    from instantstyle.core.processors import check_layout

    check_layout(IPAdapterAttnProcessor2_0(8, 8, num_tokens=(4,)))  # per-adapter lists: known
    changed = IPAdapterAttnProcessor2_0(8, 8, num_tokens=(4,))
    changed.scale = {"adapter": 1.0}  # a release that keeps its scales otherwise
    with pytest.raises(RuntimeError, match="IPAdapterAttnProcessor2_0 keeps its adapters' weights and scales in a "
                                           "layout instantstyle does not know"):
        check_layout(changed)
