"""The memory diet: only targeted adapter weights resident, the image encoder off the device between
encodes, and model offload working with the adapter."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from instantstyle import StylePipeline
from instantstyle.core.adapter import adapter_parameter_count, file_parameter_count, read_adapter
from instantstyle.core.blocks import resolve_blocks
from instantstyle.errors import UserError
from instantstyle.loading.memory import is_released

from .conftest import FAST, encode, pixels

STYLE_LAYER = "up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"


def expected_resident(adapter_file, unet, blocks: str) -> tuple[int, int]:
    """(projection + targeted layers' to_k_ip/to_v_ip, whole file), counted from the file's keys:
    h94 numbers layer ``k`` by its position in ``unet.attn_processors``."""
    position = {name.removesuffix(".processor"): k for k, name in enumerate(unet.attn_processors)}
    layers = [n for n in position if n.endswith("attn2")]
    targeted = {position[layer] for layer in resolve_blocks(blocks, layers, "sdxl")}
    kept = total = 0
    with safe_open(str(adapter_file), framework="pt") as f:
        for key in f.keys():
            numel = f.get_slice(key).get_shape()
            count = 1
            for d in numel:
                count *= d
            total += count
            group, index = key.split(".")[:2]
            if group == "image_proj" or int(index) in targeted:
                kept += count
    return kept, total


def test_style_and_layout_keep_the_projection_and_both_blocks_layers_exactly(tiny) -> None:
    # (main's test_adapter checks "style"; the benchmark prints the same fraction for the real sizes)
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", blocks="style+layout")
    kept, total = expected_resident(tiny.sdxl_adapter, pipe.pipe.unet, "style+layout")
    assert adapter_parameter_count(pipe.pipe.unet) == kept
    assert file_parameter_count(read_adapter(tiny.sdxl_adapter)) == total
    assert kept < total


@pytest.fixture(scope="module")
def low_memory(tiny) -> StylePipeline:
    return StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", low_memory=True)


def test_low_memory_does_not_load_the_encoder_until_a_style_needs_it(low_memory) -> None:
    assert is_released(low_memory.resources.image_encoder)


def test_low_memory_releases_the_encoder_after_encoding(low_memory, tiny) -> None:
    low_memory(prompt="a boat", style=str(tiny.style_image), **FAST)
    assert is_released(low_memory.resources.image_encoder)


def test_low_memory_images_match_the_resident_encoder(low_memory, sdxl, tiny) -> None:
    request = {"prompt": "a boat", "style": str(tiny.content_image), **FAST}
    assert (pixels(low_memory(**request).images[0]) == pixels(sdxl(**request).images[0])).all()


def test_encoder_stays_resident_without_low_memory(sdxl, tiny) -> None:
    encode(sdxl, str(tiny.style_image))
    assert not sdxl.resources.low_memory
    assert not is_released(sdxl.resources.image_encoder)


def test_plus_adapter_negative_is_computed_once_and_encoder_released(tiny) -> None:
    pipe = StylePipeline.from_pretrained(
        str(tiny.sdxl), str(tiny.sdxl_plus_adapter), device="cpu", low_memory=True
    )
    calls = []
    pipe.resources.image_encoder.model.register_forward_hook(lambda *_: calls.append(1))
    for prompt in ("a cup", "a bowl"):
        pipe(prompt=prompt, style=str(tiny.style_image), **FAST)
    assert len(calls) == 2  # the style image and the black negative, each once
    assert is_released(pipe.resources.image_encoder)


def test_model_offload_runs_the_adapter_and_gives_the_same_image(sdxl, tiny) -> None:
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", offload="model")
    assert pipe.resources.low_memory  # offload implies keeping the encoder off the device
    request = {"prompt": "a tree", "style": str(tiny.style_image), **FAST}
    assert pixels(pipe(**request).images[0]) == pytest.approx(pixels(sdxl(**request).images[0]), abs=1)


def test_sequential_offload_puts_the_unet_and_its_adapter_under_accelerate_hooks(tiny) -> None:
    # Generating is not checked here: accelerate's sequential offload fails with a CPU execution
    # device even without an adapter; it needs a GPU.
    pipe = StylePipeline.from_pretrained(
        str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", offload="sequential"
    )
    unet = pipe.pipe.unet
    assert hasattr(unet, "_hf_hook")
    adapter_weights = [*unet.encoder_hid_proj.parameters(), *unet.attn_processors[STYLE_LAYER].parameters()]
    assert adapter_weights and {p.device.type for p in adapter_weights} == {"meta"}  # held off the device


def test_unknown_offload_mode_is_a_user_error(tiny) -> None:
    with pytest.raises(UserError, match="offload mode"):
        StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", offload="disk")
