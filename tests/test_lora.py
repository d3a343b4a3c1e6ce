"""LoRAs (real key formats) are part of the request, change the image and leave the adapter working."""

from __future__ import annotations

from pathlib import Path

import pytest

from instantstyle.core.request import LoraRef, Request
from instantstyle.errors import UserError
from instantstyle.testing.lora import write_tiny_lora

from .conftest import FAST, pixels


@pytest.fixture(scope="module")
def loras(tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    return {fmt: write_tiny_lora(tiny.sdxl, root / f"{fmt}.safetensors", fmt) for fmt in ("peft", "kohya")}


@pytest.fixture(scope="module")
def images(sdxl, tiny, loras) -> dict[str, object]:
    """One generation per setting, shared by the tests below (each LoRA load costs seconds)."""
    request = {"prompt": "a mill", "style": str(tiny.style_image), **FAST}
    out = {"base": sdxl(**request).images[0]}
    out["peft"] = sdxl(**request, lora=str(loras["peft"])).images[0]
    out["peft_unstyled"] = sdxl(**request, lora=str(loras["peft"]), scale=0.0).images[0]
    out["kohya"] = sdxl(**request, lora=str(loras["kohya"])).images[0]
    out["again"] = sdxl(**request).images[0]
    return {k: pixels(v) for k, v in out.items()}


def test_lora_changes_the_image(images) -> None:
    assert abs(images["peft"] - images["base"]).mean() > 1


def test_adapter_still_applies_with_a_lora(images) -> None:
    assert abs(images["peft"] - images["peft_unstyled"]).mean() > 1


def test_kohya_and_peft_keys_of_the_same_weights_give_the_same_image(images) -> None:
    assert images["kohya"] == pytest.approx(images["peft"], abs=1)


def test_after_a_lora_the_plain_image_is_the_same_to_the_bit(images, sdxl) -> None:
    """peft's wrappers are gone and every weight requires grad again (torch picks its matmul kernel by it)."""
    assert (images["again"] == images["base"]).all()
    assert not any(sdxl.pipe.get_list_adapters().values())
    assert all(p.requires_grad for p in sdxl.pipe.unet.parameters())


def test_lora_scale_is_read_from_path_colon_scale_and_round_trips(loras) -> None:
    request = Request("x", style="s.png", lora=f"{loras['peft']}:0.6")
    assert request.lora == (LoraRef(str(loras["peft"]), 0.6),)
    assert Request.from_json(request.to_json()).lora == request.lora


def test_missing_lora_is_a_user_error(sdxl, tiny, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        sdxl(prompt="x", style=str(tiny.style_image), lora=str(tmp_path / "nope.safetensors"), **FAST)


def test_adapter_file_given_as_lora_is_a_user_error(sdxl, tiny) -> None:
    with pytest.raises(UserError, match="cannot be loaded"):
        sdxl(prompt="x", style=str(tiny.style_image), lora=str(tiny.sdxl_adapter), **FAST)


def test_lora_for_another_model_is_a_user_error(sdxl, tiny, tmp_path: Path) -> None:
    other = write_tiny_lora(tiny.sd15, tmp_path / "sd15.safetensors")
    with pytest.raises(UserError, match="LoRA"):
        sdxl(prompt="x", style=str(tiny.style_image), lora=str(other), **FAST)
