"""torch.compile of the UNet works with the adapter's attention processors and compiles once.

The ``eager`` backend is used so the test takes seconds: dynamo still traces the UNet with the
adapter's processors and guards exactly as with ``inductor``; only code generation is skipped.
"""

from __future__ import annotations

import pytest
import torch

from instantstyle import StylePipeline
from instantstyle.errors import UserError

from .conftest import FAST, pixels


@pytest.fixture(scope="module")
def compiled(tiny) -> StylePipeline:
    torch._dynamo.reset()
    return StylePipeline.from_pretrained(
        str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", compile_backend="eager"
    )


def test_compiled_unet_gives_the_same_image(compiled, sdxl, tiny) -> None:
    request = {"prompt": "a kite", "style": str(tiny.style_image), **FAST}
    assert pixels(compiled(**request).images[0]) == pytest.approx(pixels(sdxl(**request).images[0]), abs=1)


def test_no_recompilation_per_step_or_per_image(compiled, tiny) -> None:
    compiled(prompt="warm up", style=str(tiny.style_image), **{**FAST, "steps": 1})
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed, prompt in ((1, "a kite"), (2, "a sail")):
            compiled(prompt=prompt, style=str(tiny.style_image), **{**FAST, "steps": 3, "seed": seed})


def test_unknown_compile_backend_is_a_user_error(tiny) -> None:
    with pytest.raises(UserError, match="compile backend"):
        StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", compile_backend="tvm")
