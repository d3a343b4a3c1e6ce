#!/usr/bin/env python
"""Exact cost, from any machine: FLOPs per denoising step and per image, and the adapter's resident size.

    python benchmarks/flops.py                 # every preset and mode at 512 and 1024 px, SD3.5 and FLUX (minutes)
    python benchmarks/flops.py --sizes 1024 --presets style --dit-sizes ''   # SDXL only

The full-size SDXL topology is built on the meta device (shapes, no weights, no memory) and counted with
``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions, attention; a multiply-add is
2 FLOPs; elementwise work is not counted). The adapters go in through the real code: diffusers'
``load_ip_adapter`` for (b), instantstyle's ``attach_adapters`` (load, then prune) for (c), with a state
dict of the real h94 file's keys and shapes. A CFG step is one UNet forward of batch 2. The SD3.5 Large and
FLUX.1-dev tables come from ``dit_flops.py`` the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import common  # noqa: F401  (sets the environment and the import path first)
import torch
from common import DIFFUSERS_SCALES, FULL, PRESETS, TOPOLOGIES, Topology, md_table
from torch.utils.flop_counter import FlopCounterMode

#: Modes and how their steps differ: img2img runs ``int(steps * strength)`` steps of the same UNet.
MODES = ("text", "img2img", "inpaint", "controlnet")
DEFAULT_STRENGTH = {"img2img": 0.8, "inpaint": 1.0}
G = 1e9


def _meta(fn: Any) -> Any:
    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        return fn()


def count(fn: Any) -> int:
    """FLOPs of ``fn()`` (no grad)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


# --- models on the meta device -----------------------------------------------------------------------------
def meta_pipeline(topo: Topology, in_channels: int = 4) -> Any:
    """A ``StableDiffusionXLPipeline`` holding only a meta-device UNet of ``topo`` (enough for the adapter
    loaders, which are pipeline methods). ``in_channels=9``: an inpainting UNet."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    unet = _meta(lambda: UNet2DConditionModel(**{**topo.unet, "in_channels": in_channels}))
    return StableDiffusionXLPipeline(
        vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
        scheduler=EulerDiscreteScheduler(), add_watermarker=False,
    )


def adapter_state(unet: Any, embed_dim: int) -> dict[str, dict[str, torch.Tensor]]:
    """An h94 global IP-Adapter state dict with the real file's keys and shapes, on the meta device."""
    from instantstyle.testing.fixtures import _global_adapter

    flat = _meta(lambda: _global_adapter(unet, embed_dim, seed=0))
    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in flat.items():
        group, _, rest = key.partition(".")
        state[group][rest] = tensor
    return state


def attach_diffusers(pipe: Any, topo: Topology, preset: str) -> None:
    """(b): diffusers' recipe: every cross-attention layer gets an IP-Adapter processor and its weights; the
    preset's scale dict sets the other layers to 0, which skips their image attention."""
    state = adapter_state(pipe.unet, topo.embed_dim)
    pipe.load_ip_adapter([state], subfolder=[""], weight_name=[""], image_encoder_folder=None)
    pipe.set_ip_adapter_scale(DIFFUSERS_SCALES[preset])


def attach_instantstyle(pipe: Any, topo: Topology, preset: str) -> None:
    """(c): instantstyle's loader: diffusers loads the adapter, then every layer outside the preset's blocks
    loses its adapter weights and its image attention. (The one place this benchmark reaches into the core
    below ``StylePipeline``: the meta device cannot go through ``from_pretrained``; ``test_benchmark`` checks
    that the processors made here are those of a real ``StylePipeline``.)"""
    from instantstyle.core import adapter as adapters
    from instantstyle.core.blocks import resolve_blocks
    from instantstyle.families import family_named

    sdxl = family_named("sdxl")
    state = adapter_state(pipe.unet, topo.embed_dim)
    layers = sdxl.layers(pipe.unet)
    weights = adapters.AdapterWeights(
        "<meta>", "global", topo.embed_dim, pipe.unet.config.cross_attention_dim, len(layers), state
    )
    keep = set(resolve_blocks(preset, layers, sdxl))
    adapters.attach_adapters(pipe, sdxl, [weights], [keep])


def contestant_pipeline(topo: Topology, contestant: str, preset: str, in_channels: int = 4) -> Any:
    pipe = meta_pipeline(topo, in_channels)
    if contestant == "b":
        attach_diffusers(pipe, topo, preset)
    elif contestant == "c":
        attach_instantstyle(pipe, topo, preset)
    return pipe


def unet_inputs(unet: Any, px: int, with_image: bool, batch: int = 2) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """One CFG step's UNet inputs (batch 2) at ``px`` on the meta device."""
    cfg = unet.config
    text_proj = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    embed_dim = None
    if with_image:
        embed_dim = unet.encoder_hid_proj.image_projection_layers[0].image_embeds.in_features

    def make() -> tuple[tuple[Any, ...], dict[str, Any]]:
        lat = px // 8
        added: dict[str, Any] = {"text_embeds": torch.empty(batch, text_proj), "time_ids": torch.empty(batch, 6)}
        if embed_dim is not None:
            added["image_embeds"] = [torch.empty(batch, 1, embed_dim)]
        args = (torch.empty(batch, cfg.in_channels, lat, lat), torch.full((batch,), 500.0))
        return args, {"encoder_hidden_states": torch.empty(batch, 77, cfg.cross_attention_dim),
                      "added_cond_kwargs": added}

    return _meta(make)


def step_flops(pipe: Any, px: int) -> int:
    """FLOPs of one CFG denoising step (UNet, batch 2) at ``px``."""
    unet = pipe.unet
    args, kwargs = unet_inputs(unet, px, with_image=unet.encoder_hid_proj is not None)
    return count(lambda: unet(*args, **kwargs))


def controlnet_flops(topo: Topology, px: int) -> int:
    """FLOPs of the ControlNet per CFG step (batch 2; the adapter's image tokens never reach it)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    def build() -> Any:
        unet = UNet2DConditionModel(**topo.unet)
        return ControlNetModel.from_unet(unet, load_weights_from_unet=False, **topo.controlnet)

    controlnet = _meta(build)
    args, kwargs = unet_inputs(controlnet, px, with_image=False)
    cond = _meta(lambda: torch.empty(2, 3, px, px))
    return count(lambda: controlnet(*args, controlnet_cond=cond, return_dict=False, **kwargs))


# --- per image: encoders and VAE ---------------------------------------------------------------------
def text_encoders_flops(topo: Topology) -> int:
    """Both SDXL text encoders on one 77-token prompt (the empty negative prompt is zeros, not encoded)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    total = 0
    for cls, config in ((CLIPTextModel, topo.text_encoder), (CLIPTextModelWithProjection, topo.text_encoder_2)):
        model = _meta(lambda cls=cls, config=config: cls(CLIPTextConfig(**config)))
        ids = _meta(lambda: torch.zeros(1, 77, dtype=torch.long))
        total += count(lambda model=model, ids=ids: model(ids, output_hidden_states=True))
    return total


def image_encoder_flops(topo: Topology) -> int:
    """One style image through the CLIP image encoder (global adapters need no negative image)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = _meta(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**topo.image_encoder)))
    size = topo.image_encoder["image_size"]
    pixels = _meta(lambda: torch.empty(1, 3, size, size))
    return count(lambda: model(pixels))


def image_encoder_params(topo: Topology) -> int:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = _meta(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**topo.image_encoder)))
    return sum(p.numel() for p in model.parameters())


def vae_decode_flops(topo: Topology, px: int) -> int:
    from diffusers import AutoencoderKL

    vae = _meta(lambda: AutoencoderKL(**topo.vae))
    latents = _meta(lambda: torch.empty(1, 4, px // 8, px // 8))
    return count(lambda: vae.decode(latents))


# --- tables ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepCost:
    """FLOPs of one CFG step of a mode at a size: plain, and per preset (b) and (c)."""

    mode: str
    px: int
    plain: int
    diffusers: dict[str, int]
    instantstyle: dict[str, int]


def step_costs(topo: Topology, sizes: Sequence[int], presets: Sequence[str], modes: Sequence[str]) -> list[StepCost]:
    """Per mode and size, one CFG step's FLOPs. text and img2img run the same UNet step; inpaint counts the
    9-channel inpainting UNet; controlnet adds the ControlNet's FLOPs to the text step."""
    unets = {"text": 4} if {"text", "img2img", "controlnet"} & set(modes) else {}
    if "inpaint" in modes:
        unets["inpaint"] = 9
    per_unet: dict[str, dict[int, StepCost]] = {}
    for kind, channels in unets.items():
        plain = contestant_pipeline(topo, "a", "style", channels)
        rows = {px: StepCost(kind, px, step_flops(plain, px), {}, {}) for px in sizes}
        b = None
        for preset in presets:
            if b is None:
                b = contestant_pipeline(topo, "b", preset, channels)
            else:  # the same processors; diffusers only changes the scales
                b.set_ip_adapter_scale(DIFFUSERS_SCALES[preset])
            c = contestant_pipeline(topo, "c", preset, channels)
            for px in sizes:
                rows[px].diffusers[preset] = step_flops(b, px)
                rows[px].instantstyle[preset] = step_flops(c, px)
        per_unet[kind] = rows
    out = []
    for mode in modes:
        for px in sizes:
            base = per_unet["inpaint" if mode == "inpaint" else "text"][px]
            extra = controlnet_flops(topo, px) if mode == "controlnet" else 0
            out.append(StepCost(
                mode, px, base.plain + extra, {k: v + extra for k, v in base.diffusers.items()},
                {k: v + extra for k, v in base.instantstyle.items()},
            ))
    return out


def adapter_residency(topo: Topology, presets: Sequence[str]) -> dict[str, int]:
    """Resident adapter parameters per contestant and preset: what loading adds to the UNet's parameters
    (image projection + to_k_ip/to_v_ip kept). Key ``b`` (diffusers keeps every layer) and ``c:<preset>``."""
    base = sum(p.numel() for p in meta_pipeline(topo).unet.parameters())
    out = {"b": sum(p.numel() for p in contestant_pipeline(topo, "b", "all").unet.parameters()) - base}
    for preset in presets:
        out[f"c:{preset}"] = sum(p.numel() for p in contestant_pipeline(topo, "c", preset).unet.parameters()) - base
    return out


def pct(x: int, base: int) -> str:
    return f"{100 * (x - base) / base:+.3f}%"


def steps_run(mode: str, steps: int) -> int:
    """Denoising steps a mode runs of ``steps`` at its default strength (diffusers: int(steps * strength))."""
    return int(steps * DEFAULT_STRENGTH[mode]) if mode in DEFAULT_STRENGTH else steps


def step_table(costs: Sequence[StepCost], steps: int = 30) -> str:
    presets = list(costs[0].instantstyle)
    head = ["mode", "px", "steps run (of 30)", "(a) plain GFLOPs", *[f"{p}: (c) GFLOPs (vs a)" for p in presets]]
    rows = []
    mode_name = {"text": "text", "img2img": "img2img (strength 0.8)", "inpaint": "inpaint (9-channel UNet)",
                 "controlnet": "text + ControlNet"}
    for cost in costs:
        cells = []
        for p in presets:
            c, b = cost.instantstyle[p], cost.diffusers[p]
            cell = f"{c / G:,.1f} ({pct(c, cost.plain)})"
            if b != c:
                cell += f"; (b) {b / G:,.1f}"
            cells.append(cell)
        rows.append([mode_name[cost.mode], cost.px, steps_run(cost.mode, steps), f"{cost.plain / G:,.1f}", *cells])
    return md_table(head, rows)


def residency_table(topo: Topology, presets: Sequence[str]) -> str:
    counts = adapter_residency(topo, presets)
    file_params = counts["b"]
    encoder = image_encoder_params(topo)

    def mib(n: int, itemsize: int) -> str:
        return f"{n * itemsize / 2**20:,.0f} MiB"

    rows = [["(b) diffusers IP-Adapter, any preset", f"{file_params / 1e6:,.1f} M", "100%", mib(file_params, 2),
             mib(file_params, 4)]]
    for preset in presets:
        n = counts[f"c:{preset}"]
        rows.append([f"(c) instantstyle, {preset}", f"{n / 1e6:,.1f} M", f"{100 * n / file_params:.1f}%",
                     mib(n, 2), mib(n, 4)])
    rows.append(["image encoder (b: resident; c: only while encoding)", f"{encoder / 1e6:,.1f} M", "-",
                 mib(encoder, 2), mib(encoder, 4)])
    return md_table(["resident adapter weights", "parameters", "% of the file", "fp16", "fp32"], rows)


def per_image_table(topo: Topology, px: int, steps: int, preset: str, prompts: int) -> str:
    """GFLOPs per text-to-image image: (a), (b) (encodes the style on every call) and (c) (once per style)."""
    plain = contestant_pipeline(topo, "a", preset)
    b = contestant_pipeline(topo, "b", preset)
    c = contestant_pipeline(topo, "c", preset)
    unet = {k: steps * step_flops(p, px) for k, p in (("a", plain), ("b", b), ("c", c))}
    text, vae, enc = text_encoders_flops(topo), vae_decode_flops(topo, px), image_encoder_flops(topo)
    total = {"a": unet["a"] + text + vae, "b": unet["b"] + text + vae + enc, "c": unet["c"] + text + vae}
    first_c = total["c"] + enc
    mean_c = total["c"] + enc / prompts
    rows = [
        [f"UNet, {steps} CFG steps", *(f"{unet[k] / G:,.1f}" for k in "abc")],
        ["text encoders (1 prompt)", *[f"{text / G:,.1f}"] * 3],
        [f"VAE decode {px} px", *[f"{vae / G:,.1f}"] * 3],
        ["image encoder", "0", f"{enc / G:,.1f} (every image)", f"{enc / G:,.1f} (first image of a style only)"],
        ["**per image, style known**", *(f"**{total[k] / G:,.1f}**" for k in "abc")],
        [f"mean of {prompts} prompts, one style", f"{total['a'] / G:,.1f}", f"{total['b'] / G:,.1f}",
         f"{mean_c / G:,.1f}"],
        ["ratio to (a), style known", "1", f"{total['b'] / total['a']:.5f}", f"{total['c'] / total['a']:.5f}"],
        ["ratio to (a), first image", "1", f"{total['b'] / total['a']:.5f}", f"{first_c / total['a']:.5f}"],
    ]
    return md_table(["GFLOPs per image", "(a) plain", "(b) diffusers", "(c) instantstyle"], rows)


def report(topo: Topology, sizes: Sequence[int], presets: Sequence[str], modes: Sequence[str],
           per_image: Sequence[tuple[Topology, int, int, int]], preset: str = "style",
           dit_sizes: Sequence[int] = ()) -> str:
    """The FLOP section of the benchmark report (with ``dit_sizes``: SD3.5 Large and FLUX.1-dev at those sizes)."""
    parts = [
        "### Exact cost (FLOPs, any machine)",
        "",
        f"Counted with `torch.utils.flop_counter` on the {topo.name}-size SDXL topology on the meta device "
        "(multiply-add = 2 FLOPs; matrix products, convolutions and attention; elementwise work not counted). "
        "One CFG step = one UNet forward of batch 2. (b) diffusers' recipe and (c) instantstyle cost the same "
        "per step (a cell names (b) only where it differs): diffusers skips the image attention of a layer "
        "at scale 0, and instantstyle drops those layers' weights.",
        "",
        step_table(step_costs(topo, sizes, presets, modes)),
        "",
        residency_table(topo, presets),
    ]
    for image_topo, px, steps, prompts in per_image:
        parts += ["", f"Per image, text mode, {px} px, {steps} steps, preset {preset}, {image_topo.name}-size "
                  "encoders:", "", per_image_table(image_topo, px, steps, preset, prompts)]
    if dit_sizes:
        import dit_flops

        parts += ["", dit_flops.report(dit_sizes)]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", choices=sorted(TOPOLOGIES), default="full")
    parser.add_argument("--sizes", default="512,1024", help="image sides in px, comma-separated")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--dit-sizes", default="512,1024", help="SD3.5 Large and FLUX.1-dev sizes ('' to skip)")
    args = parser.parse_args(argv)
    topo = TOPOLOGIES[args.topology]
    sizes = [int(s) for s in args.sizes.split(",")]
    per_image = [(topo if topo.name == "smoke" else FULL, sizes[-1], 30, 5)]
    dit_sizes = [int(s) for s in args.dit_sizes.split(",") if s.strip()]
    print(report(topo, sizes, args.presets.split(","), args.modes.split(","), per_image, dit_sizes=dit_sizes))


if __name__ == "__main__":
    main()
