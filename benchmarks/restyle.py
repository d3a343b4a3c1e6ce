#!/usr/bin/env python
"""What restyling a photo (InstantStyle-Plus) costs, split into its parts, against plain img2img.

    python benchmarks/restyle.py                       # FLOPs at 512 and 1024 px, memory at 1024 px, CPU time
    python benchmarks/restyle.py --sizes 1024 --no-time

1. **FLOPs** (exact, any machine): the full-size SDXL UNet, a ControlNet (diffusers/controlnet-canny-sdxl-1.0's
   shapes), the VAE and CSD's ViT-L/14 built on the meta device and counted with ``FlopCounterMode`` (a
   multiply-add is 2 FLOPs; backward passes counted as they run). A restyle of N steps: the ReNoise inversion
   (per step below t = 250 one UNet pass of batch 2 and one of batch 1, above it two of batch 1, with 1 renoise
   step), N denoising steps (UNet and ControlNet at CFG batch 2), with style guidance per step a UNet pass of
   batch 1 with its backward, the VAE's decode with its backward and CSD's forward and backward, then one decode.
   Plain img2img: the VAE's encode, N UNet steps at CFG batch 2, one decode (strength 1: the same N steps).
2. **Memory** of a 1024 px restyle with style guidance (computed): the weights that stay on the GPU (float16) plus
   the activation peak of one guided step, measured on the meta device by tracking every live tensor the forward
   and backward make (the UNet and the VAE's decoder with gradient checkpointing, as ``--memory-budget`` runs
   them; without it, as the original runs).
3. **CPU time** of the tiny fixture (64 px, 3 steps): the phases a restyle reports (inversion, denoising,
   decoding) and with style guidance, against img2img from the same photo, in the same run, as ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import weakref
from collections.abc import Callable
from typing import Any

import common  # noqa: F401  (sets the environment and the import path first)
import torch
from common import UNET, VAE, md_table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

G = 1e9
GiB = 2**30
#: CSD's backbone: OpenAI CLIP ViT-L/14 (the authors' checkpoint): width 1024, 24 layers, patch 14, 224 px.
CSD_VIT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
               image_size=224, patch_size=14, hidden_act="quick_gelu", projection_dim=768)


def _meta(fn: Callable[[], Any]) -> Any:
    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        return fn()


def models() -> dict[str, Any]:
    """The full-size models on the meta device (shapes only)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModel

    unet = _meta(lambda: UNet2DConditionModel(**UNET))
    return {
        "unet": unet,
        "controlnet": _meta(lambda: ControlNetModel.from_unet(unet, conditioning_channels=3)),
        "vae": _meta(lambda: AutoencoderKL(**VAE)),
        "csd": _meta(lambda: CLIPVisionModel(CLIPVisionConfig(**CSD_VIT))),
    }


def unet_inputs(batch: int, side: int, grad: bool = False) -> tuple[Any, ...]:
    latent = torch.randn(batch, 4, side // 8, side // 8, device="meta", requires_grad=grad)
    added = {"text_embeds": torch.randn(batch, 1280, device="meta"), "time_ids": torch.randn(batch, 6, device="meta")}
    return latent, torch.tensor(500, device="meta"), torch.randn(batch, 77, 2048, device="meta"), added


def unet_pass(m: dict[str, Any], batch: int, side: int, control: bool = False) -> None:
    latent, t, text, added = unet_inputs(batch, side)
    kwargs: dict[str, Any] = {}
    if control:
        cond = torch.randn(batch, 3, side, side, device="meta")
        down, mid = m["controlnet"](latent, t, encoder_hidden_states=text, controlnet_cond=cond,
                                    added_cond_kwargs=added, return_dict=False)
        kwargs = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    m["unet"](latent, t, encoder_hidden_states=text, added_cond_kwargs=added, **kwargs)


def guided_pass(m: dict[str, Any], side: int) -> None:
    """One step's CSD guidance: the UNet (batch 1) and the VAE's decoder forward and back, CSD forward and back."""
    latent, t, text, added = unet_inputs(1, side, grad=True)
    noise = m["unet"](latent, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
    image = m["vae"].decode((latent - noise) / 0.13025).sample
    image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    loss = m["csd"](pixel_values=image).pooler_output.sum()
    loss.backward()


def count(fn: Callable[[], None], grad: bool = False) -> float:
    counter = FlopCounterMode(display=False)
    with counter, (contextlib.nullcontext() if grad else torch.no_grad()):
        fn()
    return counter.get_total_flops() / G


def flops(side: int, steps: int, m: dict[str, Any]) -> dict[str, float]:
    """GFLOPs of each part of a restyle and of img2img at ``side`` px and ``steps`` steps (inversion steps = steps,
    leading spacing: the steps whose timestep is below 250 are averaged and regularised)."""
    first = sum(1 for i in range(steps) if i * (1000 // steps) + 1 < 250)
    b1, b2 = count(lambda: unet_pass(m, 1, side)), count(lambda: unet_pass(m, 2, side))
    step = count(lambda: unet_pass(m, 2, side, control=True))
    decode = count(lambda: m["vae"].decode(torch.randn(1, 4, side // 8, side // 8, device="meta")))
    encode = count(lambda: m["vae"].encode(torch.randn(1, 3, side, side, device="meta")))
    guided = count(lambda: guided_pass(m, side), grad=True)
    return {"inversion": encode + first * (b2 + b1) + (steps - first) * 2 * b1, "denoise": steps * step,
            "guidance": steps * guided, "decode": decode, "img2img": encode + steps * b2 + decode,
            "unet_b2": b2}


class LiveTensors(TorchDispatchMode):
    """The peak bytes of tensors alive at once, from every tensor an op creates (views of another excluded) until
    it is freed (its storage dies: autograd's saved tensors keep it alive)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        fresh = all(r.alias_info is None for r in func._schema.returns)
        if fresh:
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    nbytes = t.numel() * t.element_size()
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, nbytes)
        return out


def guided_peak(m: dict[str, Any], side: int, dtype: torch.dtype, checkpointing: bool) -> int:
    """Activation peak (bytes) of one guided step at ``side`` px: UNet batch 1, VAE decode and CSD, forward and
    back, in ``dtype`` (the VAE in float32, as SDXL's asks)."""
    for name in ("unet", "csd"):
        m[name].to(dtype)
    for module in (m["unet"], m["vae"]):
        (module.enable_gradient_checkpointing if checkpointing else module.disable_gradient_checkpointing)()
    tracker = LiveTensors()
    with tracker:
        latent = torch.randn(1, 4, side // 8, side // 8, device="meta", dtype=dtype, requires_grad=True)
        t = torch.tensor(500, device="meta")
        text = torch.randn(1, 77, 2048, device="meta", dtype=dtype)
        added = {"text_embeds": torch.randn(1, 1280, device="meta", dtype=dtype),
                 "time_ids": torch.randn(1, 6, device="meta", dtype=dtype)}
        noise = m["unet"](latent, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
        image = m["vae"].decode(((latent - noise) / 0.13025).float()).sample
        image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
        loss = m["csd"](pixel_values=image.to(dtype)).pooler_output.float().sum()
        loss.backward()
    return tracker.peak


def weights_bytes(m: dict[str, Any]) -> dict[str, int]:
    """Resident weights in float16 (the VAE in float32 for decoding, as SDXL's ``force_upcast`` asks)."""
    size = {name: sum(p.numel() for p in module.parameters()) for name, module in m.items()}
    return {"unet": 2 * size["unet"], "controlnet": 2 * size["controlnet"], "vae": 4 * size["vae"],
            "csd": 2 * size["csd"]}


def cpu_times(rounds: int) -> list[list[str]]:
    """Seconds of each phase on the tiny fixture: restyle (with and without style guidance) and img2img."""
    import tempfile
    from pathlib import Path

    from instantstyle import Request, StylePipeline
    from instantstyle.testing import tiny_models
    from instantstyle.testing.restyle import tiny_restyle_models

    root = Path(tempfile.gettempdir()) / "instantstyle-restyle-bench"
    tiny = tiny_models(root / "tiny")
    rs = tiny_restyle_models(root / "restyle", tiny)
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu")
    marks: list[tuple[str, float]] = []
    pipe.on_phase = lambda name: marks.append((name, time.perf_counter()))
    common_fields = {"prompt": "a photo of a house", "style": str(rs.style), "steps": 3, "width": 64, "height": 64}
    control = {"controlnet": str(rs.controlnet)}
    runs = {
        "img2img (strength 1)": Request(**common_fields, init_image=str(rs.photo), strength=1.0),
        "restyle": Request(**common_fields, **control, restyle=str(rs.photo)),
        "restyle + style guidance": Request(**common_fields, **control, restyle=str(rs.photo), style_guidance=100.0,
                                            csd=str(rs.csd)),
    }
    totals: dict[str, dict[str, list[float]]] = {name: {} for name in runs}
    for r in range(rounds + 1):  # the first round warms up
        for i, (name, request) in enumerate(runs.items()):
            marks.clear()
            pipe(request.replace(seed=100 + 10 * r + i))  # a new seed: the inversion runs every time
            spans = {a: b_t - a_t for (a, a_t), (_, b_t) in zip(marks, marks[1:], strict=False)}
            if r:
                for phase, seconds in spans.items():
                    totals[name].setdefault(phase, []).append(seconds)
    base = sum(min(v) for v in totals["img2img (strength 1)"].values())
    rows = []
    for name, phases in totals.items():
        best = {phase: min(v) for phase, v in phases.items()}
        whole = sum(best.values())
        rows.append([name, *(f"{best.get(p, 0):.2f}" for p in ("text", "style", "invert", "denoise", "decode")),
                     f"{whole:.2f}", f"{whole / base:.2f}x"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-time", action="store_true")
    parser.add_argument("--no-flops", action="store_true", help="only the CPU times")
    args = parser.parse_args()
    if args.no_flops:
        print(md_table(["run", "text", "style", "invert", "denoise", "decode", "whole", "ratio"],
                       cpu_times(args.rounds)))
        return
    m = models()
    rows = []
    for side in (int(s) for s in args.sizes.split(",")):
        f = flops(side, args.steps, m)
        restyle, guided = f["inversion"] + f["denoise"] + f["decode"], f["guidance"]
        rows.append([f"{side} px", f"{f['img2img']:,.0f}", f"{f['inversion']:,.0f}", f"{f['denoise']:,.0f}",
                     f"{f['decode']:,.0f}", f"{restyle:,.0f} ({restyle / f['img2img']:.2f}x)",
                     f"+{guided:,.0f} ({(restyle + guided) / f['img2img']:.2f}x)"])
    print(f"GFLOPs, {args.steps} steps (inversion steps = steps, 1 renoise step), CFG 5:\n")
    print(md_table(["size", "img2img", "inversion", "denoising + ControlNet", "decoding", "restyle",
                    "style guidance"], rows))
    weights = weights_bytes(m)
    peaks = {ck: guided_peak(m, 1024, torch.float16, ck) for ck in (True, False)}
    resident = sum(weights.values())
    print("\n1024 px restyle with style guidance, float16 on a GPU (computed):\n")
    print(md_table(["part", "GiB"], [
        *[[f"{name} weights", f"{b / GiB:.2f}"] for name, b in weights.items()],
        ["one guided step's activations, checkpointed (--memory-budget)", f"{peaks[True] / GiB:.2f}"],
        ["one guided step's activations, not checkpointed (the original)", f"{peaks[False] / GiB:.2f}"],
        ["needed with --memory-budget (weights + checkpointed step + 0.5 reserve)",
         f"{(resident + peaks[True]) / GiB + 0.5:.1f}"],
    ]))
    if not args.no_time:
        print(f"\nCPU seconds per phase, tiny fixture, 64 px, 3 steps (best of {args.rounds}; ratio to img2img):\n")
        print(md_table(["run", "text", "style", "invert", "denoise", "decode", "whole", "ratio"],
                       cpu_times(args.rounds)))


if __name__ == "__main__":
    main()
