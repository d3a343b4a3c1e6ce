#!/usr/bin/env python
"""Per-step overhead: one UNet forward on the same inputs with three sets of attention processors.

    python benchmarks/step.py --tree DIR --size 256 [--rounds 6]   (bench.py runs it; prints one JSON line)

One process, one UNet, the same weights and inputs; only the processors (and the image projection) change
between forwards, in rotated order each round:

- ``plain``, ``plain2``: diffusers' default ``AttnProcessor2_0`` everywhere, no image tokens (plain SDXL;
  the second is the same again, for the noise floor);
- ``pruned``: what ``StylePipeline`` loads (and every request leaves as it found): IP-Adapter processors on the
  preset's layers only, text-only processors elsewhere;
- ``full``: diffusers' recipe: an IP-Adapter processor on every cross-attention layer, scale 0 outside the
  preset (diffusers then skips the image attention, but each layer still runs its Python checks).

Time above the FLOP ratio of the same configuration is overhead of the code, not of the method.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common
import torch
from common import ADAPTER_NAME, DIFFUSERS_SCALES, RunSpec, Spread, Tree, log, pin_threads, rotated, timed

VARIANTS = ("plain", "plain2", "pruned", "full")


def prepare(spec: RunSpec) -> tuple[Any, dict[str, tuple[dict[str, Any], Any]], tuple[Any, ...], dict[str, Any]]:
    """Load instantstyle's pipeline, run one small real request (the processors are as it leaves them: as loaded),
    then add diffusers' full processors; returns the UNet, each variant's (processors, image projection) and one CFG
    step's inputs."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from instantstyle import StylePipeline

    tree = Tree(Path(spec.tree))
    style_pipe = StylePipeline.from_pretrained(
        str(tree.model), str(tree.adapter_file), device=spec.device, dtype=spec.dtype, blocks=spec.preset,
        low_memory=True,
    )
    style_pipe(prompt="a cat", style=str(tree.style), blocks=spec.preset, steps=1, width=64, height=64, seed=0)
    pipe, unet = style_pipe.pipe, style_pipe.pipe.unet
    variants: dict[str, tuple[dict[str, Any], Any]] = {"pruned": (dict(unet.attn_processors), unet.encoder_hid_proj)}
    embed_dim = unet.encoder_hid_proj.image_projection_layers[0].image_embeds.in_features

    pipe.unload_ip_adapter()
    pipe.load_ip_adapter(str(tree.adapters), subfolder="sdxl_models", weight_name=ADAPTER_NAME,
                         image_encoder_folder=None)
    pipe.set_ip_adapter_scale(DIFFUSERS_SCALES[spec.preset])
    pipe.to(spec.device)
    variants["full"] = (dict(unet.attn_processors), unet.encoder_hid_proj)
    plain = {name: AttnProcessor2_0() for name in unet.attn_processors}
    variants["plain"] = variants["plain2"] = (plain, None)

    cfg = unet.config
    text_proj = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    gen = torch.Generator("cpu").manual_seed(spec.seed)
    lat = spec.size // 8

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(spec.device, spec.torch_dtype)

    args = (randn(2, cfg.in_channels, lat, lat), torch.full((2,), 500.0, device=spec.device))
    kwargs = {
        "encoder_hidden_states": randn(2, 77, cfg.cross_attention_dim),
        "added_cond_kwargs": {"text_embeds": randn(2, text_proj), "time_ids": randn(2, 6),
                              "image_embeds": [randn(2, 1, embed_dim)]},
    }
    return unet, variants, args, kwargs


def use(unet: Any, variant: tuple[dict[str, Any], Any]) -> None:
    processors, projection = variant
    unet.set_attn_processor(dict(processors))  # diffusers empties the dict it is given
    unet.encoder_hid_proj = projection  # None: the UNet takes no image tokens (plain SDXL)


def forward(unet: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if unet.encoder_hid_proj is None:
        added = {k: v for k, v in kwargs["added_cond_kwargs"].items() if k != "image_embeds"}
        kwargs = {**kwargs, "added_cond_kwargs": added}
    with torch.no_grad():
        unet(*args, **kwargs)


def measure(spec: RunSpec, rounds: int, budget_s: float) -> dict[str, Any]:
    """Warm up each variant once, then time ``rounds`` rotated rounds (fewer if ``budget_s`` runs out, at
    least 3). Returns per variant the wall and CPU seconds of each round."""
    threads, cpus = pin_threads(spec.threads, spec.cpus)
    unet, variants, args, kwargs = prepare(spec)
    for name in VARIANTS[1:]:  # warm-up (the first forward of a set of processors pays one-off costs)
        use(unet, variants[name])
        forward(unet, args, kwargs)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    spent = 0.0
    for r in range(rounds):
        round_s = 0.0
        for name in rotated(VARIANTS, r):
            use(unet, variants[name])
            wall, process = timed(lambda: forward(unet, args, kwargs), spec.device)
            times[name].append(wall)
            cpu[name].append(process)
            round_s += wall
        spent += round_s
        log(f"step round {r + 1}: " + ", ".join(f"{v} {times[v][-1]:.3f} s" for v in VARIANTS))
        if r + 1 >= 3 and spent + round_s > budget_s:
            break
    return {"threads": threads, "cpus": list(cpus), "wall": times, "cpu": cpu}


def table(result: dict[str, Any], flops: dict[str, int]) -> str:
    """Markdown: per variant median time, and per-round ratios to plain against the FLOP ratio."""
    wall, cpu = result["wall"], result["cpu"]
    rows = []
    label = {"plain": "plain processors", "plain2": "plain again (noise floor)",
             "pruned": "(c) instantstyle, pruned", "full": "(b) diffusers, every layer"}
    for name in VARIANTS:
        w = common.Spread.of(common.ratios(wall[name], wall["plain"]))
        c = common.Spread.of(common.ratios(cpu[name], cpu["plain"]))
        flop = flops[name] / flops["plain"]
        rows.append([
            label[name], f"{Spread.of(wall[name]).median * 1e3:,.1f} ms",
            f"{Spread.of(cpu[name]).median * 1e3:,.1f} ms",
            f"{flop:.5f}", common.fmt_ratio(w), common.fmt_range(w), f"{100 * (w.median - flop):+.2f}%",
            common.fmt_ratio(c), common.fmt_range(c), f"{100 * (c.median - flop):+.2f}%",
        ])
    head = ["UNet forward (CFG batch 2)", "median wall", "median CPU", "FLOP ratio",
            "wall ratio to plain, median [IQR]", "wall min–max", "wall above FLOPs", "CPU-time ratio [IQR]",
            "CPU min–max", "CPU time above FLOPs"]
    return common.md_table(head, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="RunSpec as JSON")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--budget-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    spec = RunSpec.from_json(args.spec)
    result = measure(spec, args.rounds, args.budget_s)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
