"""Reference images from the authors' CSGO code (instantX-research/CSGO), for instantstyle's exactness tests.

    python references/csgo/make_reference.py /path/to/CSGO [--out tests/data/csgo] [--fixtures DIR]

Runs the authors' ``CSGO.generate`` (``ip_adapter/ip_adapter.py``) exactly as ``infer/infer_CSGO.py`` sets it up
(SDXL + tile ControlNet in ``StableDiffusionXLControlNetPipeline``, ``BLOCKS``/``controlnet_BLOCKS``,
``controlnet_adapter=True``, both resamplers, guidance 10, their negative prompt, ControlNet scale 0.6, seed 42)
on instantstyle's tiny random-weight fixtures (``instantstyle.testing.csgo``), for the three uses of their README
and gradio demo, and writes the images (uint8) with the settings of each case to ``OUT/reference.npz`` and
``OUT/cases.json``.

What is patched at run time, and why (nothing else; the checkout is not modified):

1. float16 -> float32: ``ip_adapter.py`` puts the image encoders, resamplers and processors in float16 by hand
   (``dtype=torch.float16``); on the CPU we run float32, as instantstyle does there. The module's ``torch`` is
   replaced by a view of torch whose ``float16`` is ``float32``.
2. ``diffusers.pipelines.controlnet.MultiControlNetModel``: diffusers 0.42 moved the class to
   ``diffusers.models.controlnets``; ``ip_adapter.py`` imports it from the old place (only for an ``isinstance``).
   The old name is pointed at the new class.
3. ``torchvision`` and ``einops``: imported by ``ip_adapter.py`` (``transforms``, for a commented-out CSD encoder)
   and ``resampler.py`` (for ``num_latents_mean_pooled > 0``, which CSGO never sets), used on no path run here,
   and not installed (torchvision breaks diffusers beside the CPU torch wheel). Empty modules stand in while
   ``ip_adapter`` is imported, and are removed again.
4. Size: ``resize_content`` makes every content image 1024 px on its short side; on tiny models the cases use a
   96x64 px output, and each content image is resized to it exactly as ``resize_content`` does
   (``image.resize((width, height))``, PIL's default filter), then passed as ``pil_content_image`` and ``image``.

One case runs a changed copy of ``ip_adapter.py`` and says so (``content_adapter``): in ``set_ip_adapter`` the
UNet's content blocks get a content processor and, a few lines later, a text-only one in its place, because
``selected = True`` is commented out in the UNet's content loop (in the ControlNet's loop it is live, after the
processor is made). So the released code never injects the content tokens and ``content_scale`` changes nothing.
The copy adds that line where the ControlNet loop has it (``CONTENT_LINE``), to check instantstyle's content
injection (``content_adapter_scale`` above 0) against the authors' processor.

The text-driven case follows the gradio demo (``gradio/app.py``): a black content image, guidance 7.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
NEGATIVE = ("text, watermark, lowres, low quality, worst quality, deformed, glitch, low contrast, noisy, saturation, "
            "blurry")
WIDTH, HEIGHT, STEPS, SEED = 96, 64, 3, 42

#: name -> settings; ``content`` is the content image (``None``: black, as the gradio demo's text-driven task).
CASES = {
    "image_driven": {"prompt": "a photo of a house", "content": True, "guidance": 10.0, "control_scale": 0.6,
                     "content_scale": 0.5, "style_scale": 1.0, "num_images": 1, "checkpoint": "csgo_4_32.bin"},
    "text_driven": {"prompt": "a cat", "content": False, "guidance": 7.0, "control_scale": 0.6,
                    "content_scale": 0.5, "style_scale": 1.0, "num_images": 1, "checkpoint": "csgo_4_32.bin"},
    "text_editing": {"prompt": "a dog in front of the house", "content": True, "guidance": 10.0, "control_scale": 0.4,
                     "content_scale": 0.5, "style_scale": 0.8, "num_images": 2, "checkpoint": "csgo_4_32.bin"},
    "checkpoint_4_16": {"prompt": "a photo of a house", "content": True, "guidance": 10.0, "control_scale": 0.6,
                        "content_scale": 0.5, "style_scale": 1.0, "num_images": 1, "checkpoint": "csgo.bin"},
    "content_adapter": {"prompt": "a photo of a house", "content": True, "guidance": 10.0, "control_scale": 0.6,
                        "content_scale": 0.5, "style_scale": 1.0, "num_images": 1, "checkpoint": "csgo_4_32.bin",
                        "fixed": True},
}


#: The one change of the ``content_adapter`` case: in ``IPAdapter_CS.set_ip_adapter``'s UNet loop, mark a layer given a
#: content processor as selected, as its ControlNet loop does (there the line is live; here it is commented out,
#: above the ``if``, where uncommenting it would make the ``else`` run on a layer with no processor yet).
CONTENT_LINE = (
    "                                num_style_tokens=self.num_style_tokens,\n"
    "                            )\n"
    "                        else:\n"
    "                            attn_procs[name].set_content_ipa(content_scale=1.0)\n",
    "                                num_style_tokens=self.num_style_tokens,\n"
    "                            )\n"
    "                            selected = True\n"
    "                        else:\n"
    "                            attn_procs[name].set_content_ipa(content_scale=1.0)\n",
)


class _Float32Torch(types.ModuleType):
    """torch, except that ``float16`` is ``float32`` (patch 1)."""

    def __init__(self, torch: types.ModuleType) -> None:
        super().__init__("torch")
        self._torch = torch
        self.float16 = torch.float32

    def __getattr__(self, name: str) -> object:
        return getattr(self._torch, name)


def import_authors(checkout: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """The authors' ``ip_adapter.ip_adapter`` and a copy with the content line restored, patched (1-3)."""
    import diffusers  # noqa: F401  (before the stand-ins: diffusers and transformers probe for torchvision)
    import diffusers.pipelines.controlnet as controlnet_pipelines
    import torch
    import transformers  # noqa: F401
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    controlnet_pipelines.MultiControlNetModel = MultiControlNetModel  # patch 2
    stand_ins = {name: types.ModuleType(name) for name in ("torchvision", "einops", "einops.layers",
                                                           "einops.layers.torch")}
    stand_ins["torchvision"].transforms = None  # type: ignore[attr-defined]
    stand_ins["einops"].rearrange = None  # type: ignore[attr-defined]
    stand_ins["einops.layers.torch"].Rearrange = None  # type: ignore[attr-defined]
    sys.path.insert(0, str(checkout))
    sys.modules.update(stand_ins)  # patch 3
    try:
        import ip_adapter.ip_adapter as authors

        source = (checkout / "ip_adapter" / "ip_adapter.py").read_text()
        assert source.count(CONTENT_LINE[0]) == 1, "the UNet's content loop changed: check the checkout"
        fixed = types.ModuleType("ip_adapter.ip_adapter_content")
        fixed.__package__ = "ip_adapter"
        exec(compile(source.replace(*CONTENT_LINE), "ip_adapter_content.py", "exec"), fixed.__dict__)
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    for module in (authors, fixed):
        module.torch = _Float32Torch(torch)  # type: ignore[attr-defined]  # patch 1
    return authors, fixed


def run_case(module: types.ModuleType, checkout: Path, fixtures: object, tiny: object, case: dict) -> np.ndarray:
    """One case through the authors' code, set up as ``infer/infer_CSGO.py`` does."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
    from PIL import Image

    sys.path.insert(0, str(checkout))
    from ip_adapter.utils import BLOCKS, controlnet_BLOCKS

    controlnet = ControlNetModel.from_pretrained(str(fixtures.tile_controlnet), dtype=torch.float32)  # type: ignore[attr-defined]
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
        str(tiny.sdxl), controlnet=controlnet, dtype=torch.float32, add_watermarker=False)  # type: ignore[attr-defined]
    checkpoint = fixtures.checkpoint_4_16 if case["checkpoint"] == "csgo.bin" else fixtures.checkpoint  # type: ignore[attr-defined]
    csgo = module.CSGO(
        pipe, str(fixtures.image_encoder), str(checkpoint), torch.device("cpu"),  # type: ignore[attr-defined]
        num_content_tokens=4, num_style_tokens=16 if case["checkpoint"] == "csgo.bin" else 32,
        target_content_blocks=BLOCKS["content"], target_style_blocks=BLOCKS["style"], controlnet_adapter=True,
        controlnet_target_content_blocks=controlnet_BLOCKS["content"],
        controlnet_target_style_blocks=controlnet_BLOCKS["style"],
        content_model_resampler=True, style_model_resampler=True,
    )
    if case["content"]:
        content = Image.open(fixtures.content_image).convert("RGB").resize((WIDTH, HEIGHT))  # type: ignore[attr-defined]  # patch 4
    else:
        content = Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)).convert("RGB")
    style = Image.open(fixtures.style_image).convert("RGB")  # type: ignore[attr-defined]
    images = csgo.generate(
        pil_content_image=content, pil_style_image=style, prompt=case["prompt"], negative_prompt=NEGATIVE,
        height=HEIGHT, width=WIDTH, content_scale=case["content_scale"], style_scale=case["style_scale"],
        guidance_scale=case["guidance"], num_images_per_prompt=case["num_images"], num_samples=1,
        num_inference_steps=STEPS, seed=SEED, image=content.convert("RGB"),
        controlnet_conditioning_scale=case["control_scale"],
    )
    return np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="the authors' CSGO repository, extracted")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests" / "data" / "csgo")
    parser.add_argument("--fixtures", type=Path, default=None, help="where the tiny fixtures are (built if needed)")
    args = parser.parse_args()

    from instantstyle.testing import tiny_models
    from instantstyle.testing.csgo import build_csgo_models

    tiny = tiny_models(args.fixtures / "tiny" if args.fixtures else None)
    root = args.fixtures / "csgo" if args.fixtures else tiny.root.parent / f"{tiny.root.name}-csgo"
    fixtures = build_csgo_models(root, tiny)
    authors, fixed = import_authors(args.checkout.resolve())
    images = {}
    for name, case in CASES.items():
        images[name] = run_case(fixed if case.get("fixed") else authors, args.checkout, fixtures, tiny, case)
        print(f"{name}: {images[name].shape}")
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "reference.npz", **images)
    settings = {"width": WIDTH, "height": HEIGHT, "steps": STEPS, "seed": SEED, "negative_prompt": NEGATIVE,
                "cases": CASES}
    (args.out / "cases.json").write_text(json.dumps(settings, indent=1) + "\n")


if __name__ == "__main__":
    main()
