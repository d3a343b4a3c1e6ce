"""A request leaves the pipeline as it found it: one loaded pipeline runs a long sequence of different requests, and
every image equals, bit for bit, the one a fresh pipeline makes for that request alone; after every request the
pipeline's observable state (attention processors and their slots and scales per layer, scheduler, LoRAs, VAE
decoding, hooks, module tree, which weights require grad) equals its state before the first.

The pipeline runs under a memory budget and keeps only the adapter weights of its blocks, so requests for other
blocks and further adapters load adapters for their call and load the resting ones back after it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from instantstyle import Request, StylePipeline
from instantstyle.testing.lora import write_tiny_lora
from instantstyle.testing.restyle import tiny_restyle_models

from .conftest import FAST, pixels

HIRES = {"steps": 3, "width": 128, "height": 128}  # where HiDiffusion acts on the tiny SDXL


def sequence(tiny: Any, modes: Any, rs: Any, lora: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, request fields) of every request, in the order they run."""
    style, second, init = str(tiny.style_image), str(modes.second_style), str(modes.init_image)
    restyle = {"restyle": str(rs.photo), "prompt": "a house", "controlnet": str(rs.controlnet), "width": None,
               "height": None}
    left, right = str(modes.left_mask), str(modes.right_mask)
    return [
        ("plain", {}),
        ("lora", {"lora": (lora,)}),
        ("hidiffusion", {**HIRES, "hidiffusion": True}),
        ("regions-and-composition", {"style": (style, f"{second}:0.5"), "regions": (left, right), "composition": init}),
        ("scheduler", {"scheduler": "euler-a"}),
        ("further-adapter", {"adapters": [f"{tiny.sdxl_plus_adapter};style={second};blocks=layout;scale=0.6"]}),
        ("other-blocks", {"blocks": "all", "scale": 0.8}),
        ("controlnet-img2img", {"init_image": init, "strength": 0.6, "control": "canny",
                                "controlnet": str(modes.sdxl_controlnet)}),
        ("inpaint", {"init_image": init, "mask": left}),
        ("content-subtraction", {"content_prompt": "a dog", "content_scale": 0.5}),
        ("style-schedule", {"style_end": 0.5}),
        ("restyle", restyle),
        ("restyle-with-csd-guidance", {**restyle, "csd": str(rs.csd), "style_guidance": 1.0}),
        ("plain-again", {}),
    ]


def load(tiny: Any) -> StylePipeline:
    return StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", memory_budget=8)


def ours(module: torch.nn.Module) -> list[str]:
    """The module's hooks, but transformers' output-capturing ones: transformers installs those on a model's first
    forward and keeps them (inert unless it is collecting outputs), as a fresh pipeline's first request does too."""
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values(), *module._backward_hooks.values()]
    return [f"{fn.__module__}.{fn.__qualname__}" for fn in hooks
            if not getattr(fn, "__module__", "").startswith("transformers.")]


def observable_state(pipe: StylePipeline) -> dict[str, Any]:
    """What a request could leave changed in the loaded pipeline, as plain data."""
    diffusers_pipe = pipe.pipe
    state: dict[str, Any] = {}
    for name, module in diffusers_pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        state[f"{name} modules"] = [(n, type(m).__name__, *((m.stride, m.padding, m.dilation)
                                                             if isinstance(m, torch.nn.Conv2d) else ()))
                                    for n, m in module.named_modules()]
        state[f"{name} requires grad"] = [(n, p.requires_grad) for n, p in module.named_parameters()]
        state[f"{name} hooks"] = [(n, hooks) for n, m in module.named_modules() if (hooks := ours(m))]
        state[f"{name} attributes"] = {k: repr(v) for k, v in vars(module).items()
                                       if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple))}
    denoiser = pipe.resources.denoiser
    state["processors"] = {name: (type(proc).__name__, repr(getattr(proc, "scale", None)),
                                  repr(getattr(proc, "slot_adapters", None)))
                           for name, proc in denoiser.attn_processors.items()}
    state["image projection"] = repr(getattr(denoiser.encoder_hid_proj, "slot_adapters", None))
    state["scheduler"] = (type(diffusers_pipe.scheduler).__name__, dict(diffusers_pipe.scheduler.config))
    state["pipeline config"] = dict(diffusers_pipe.config)
    state["loras"] = diffusers_pipe.get_list_adapters()
    return state


@pytest.fixture(scope="module")
def rs(tiny, tmp_path_factory) -> Any:
    return tiny_restyle_models(tmp_path_factory.mktemp("restyle"), tiny)


@pytest.fixture(scope="module")
def ran(tiny, modes, rs, tmp_path_factory) -> dict[str, Any]:
    """The sequence on one pipeline: every request's image and the pipeline's state after it, and its state
    before the first."""
    lora = str(write_tiny_lora(tiny.sdxl, tmp_path_factory.mktemp("lora") / "lora.safetensors"))
    pipe = load(tiny)
    out: dict[str, Any] = {"before": observable_state(pipe), "images": {}, "states": {}, "requests": {}}
    for name, fields in sequence(tiny, modes, rs, lora):
        request = Request(**{"prompt": "a cat", "style": str(tiny.style_image), **FAST, **fields})
        out["requests"][name] = request
        out["images"][name] = pixels(pipe(request).images[0])
        out["states"][name] = observable_state(pipe)
    return out


def test_every_image_of_the_sequence_equals_a_fresh_pipelines_image_of_its_request_alone(ran, tiny):
    differ = []
    for name, request in ran["requests"].items():
        fresh = pixels(load(tiny)(request).images[0])
        if not np.array_equal(fresh, ran["images"][name]):
            differ.append(f"{name}: {np.abs(fresh - ran['images'][name]).max():g}")
    assert differ == []


def test_after_every_request_the_pipeline_is_as_it_was_before_the_first(ran):
    before = ran["before"]
    changed = {name: sorted(key for key in before if state[key] != before[key])
               for name, state in ran["states"].items()}
    assert changed == {name: [] for name in ran["states"]}


def test_each_request_of_the_sequence_makes_another_image_than_the_one_before_it(ran):
    """Each feature acts, so the equalities above compare something."""
    images, names = ran["images"], list(ran["images"])
    same = [f"{a} = {b}" for a, b in zip(names, names[1:], strict=False)
            if images[a].shape == images[b].shape and np.array_equal(images[a], images[b])]
    assert same == []


# --- CSGO: its scales set for each call and put back; the parts it reads when first needed stay ------------------
def csgo_sequence(csgo_models: Any) -> list[tuple[str, dict[str, Any]]]:
    base = {"prompt": "a house", "style": str(csgo_models.style_image), "content_image": str(csgo_models.content_image),
            "control": "tile", "controlnet": str(csgo_models.tile_controlnet), **FAST}
    return [
        ("plain", base),
        ("content-tokens", {**base, "content_adapter_scale": 0.5}),
        ("style-scale", {**base, "scale": 0.5}),
        ("text-driven", {**base, "content_image": None, "control_scale": 0.01}),
        ("plain-again", base),
    ]


def csgo_scales(pipe: StylePipeline) -> list[tuple[str, dict[str, float]]]:
    from instantstyle.core import csgo_attention

    models = [pipe.resources.denoiser, *pipe.resources.extras.controlnets.values()]
    return [(name, dict(proc.scales)) for model in models
            for name, proc in csgo_attention.csgo_processors(model).items()]


def test_a_csgo_pipeline_makes_every_image_of_a_sequence_as_a_fresh_one_and_puts_its_scales_back(tiny, csgo_models):
    def load_csgo() -> StylePipeline:
        return StylePipeline.from_pretrained(str(tiny.sdxl), str(csgo_models.checkpoint), device="cpu")

    pipe, differ, scales = load_csgo(), [], []
    for name, fields in csgo_sequence(csgo_models):
        request = Request(**fields)
        before = csgo_scales(pipe)
        image = pixels(pipe(request).images[0])
        if not np.array_equal(image, pixels(load_csgo()(request).images[0])):
            differ.append(name)
        after = csgo_scales(pipe)
        if [s for _, s in after[: len(before)]] != [s for _, s in before]:
            scales.append(name)
    assert (differ, scales) == ([], [])
