#!/usr/bin/env python
"""What HiDiffusion saves: plain vs HiDiffusion, as ratios measured in one run.

    python benchmarks/hidiffusion_flops.py flops            # exact FLOPs, full-size SDXL, 2048 px (meta, ~1 min)
    python benchmarks/hidiffusion_flops.py cpu              # CPU seconds, narrow random SDXL, 512 px, 10 steps
    python benchmarks/hidiffusion_flops.py gpu              # GPU seconds, full-size random SDXL UNet, 2048 px, fp16

flops: the full-size SDXL UNet (the public SDXL base config, below) built on the meta device (shapes, no
weights) and counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions,
attention; elementwise work, pooling and interpolation are not counted). One CFG step is a UNet call of
batch 2. RAU-Net acts only before its switching step, so each phase (RAD, pooled, plain) is counted
once and averaged over the steps with the authors' schedule (above 4096 px RAD and the pooled phase
overlap); MSW-MSA acts at every step.

cpu: the narrow SDXL of the test fixtures (SDXL base's module names, widths 32/64/128) with a style
adapter, text-to-image through diffusers, plain then HiDiffusion, the same seed; its ratio is not the
full-size one (narrow layers shift the balance between convolutions and attention).

gpu: the full-size UNet with random weights in fp16 on CUDA, the denoising loop only (UNet calls, batch
2), plain then HiDiffusion, after one warm-up run of each.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a clean clone

import torch  # noqa: E402

from instantstyle.hidiffusion import SDXL, HiDiffusionFamily, Phases, hidiffusion, switching_schedule  # noqa: E402

#: stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the parts that shape the network).
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
PHASES = ("dilate", "pool", "dilate+pool", "plain")  # see Schedule.phase


def forced(family: HiDiffusionFamily, phase: str) -> HiDiffusionFamily:
    """``family`` with RAU-Net fixed in one phase at every step (to count that phase alone)."""
    always = Phases(pool=float("pool" in phase), dilate=float("dilate" in phase))
    return replace(family, normal=always, large=always, inpaint=None, text_controlnet=None)


def unet_inputs(unet: Any, size: int, dtype: torch.dtype, device: Any) -> tuple[tuple, dict]:
    """One CFG step's UNet inputs (batch 2) for a ``size`` x ``size`` SDXL image."""
    latent = size // 8
    sample = torch.randn(2, 4, latent, latent, dtype=dtype, device=device)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, dtype=dtype, device=device)
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(2, pooled, dtype=dtype, device=device),
             "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=dtype, device=device)}
    return (sample, torch.tensor(500.0, device=device)), {"encoder_hidden_states": text, "added_cond_kwargs": added}


def phase_flops(unet: Any, size: int, family: HiDiffusionFamily = SDXL) -> dict[str, int]:
    """FLOPs of one CFG UNet call: plain (no HiDiffusion) and, with HiDiffusion, in each RAU-Net phase."""
    from torch.utils.flop_counter import FlopCounterMode

    args, kwargs = unet_inputs(unet, size, torch.float32, "meta")

    def count() -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            unet(*args, **kwargs)
        return counter.get_total_flops()

    flops = {"without": count()}
    for phase in PHASES:
        with hidiffusion(unet, forced(family, phase), steps=1, seed=0):
            flops[phase] = count()
    return flops


def flop_ratio(size: int = 2048, steps: tuple[int, ...] = (30, 50)) -> dict[str, Any]:
    """Exact FLOPs per CFG step, plain vs HiDiffusion, on the full-size SDXL UNet at ``size`` px, averaged
    over ``steps`` denoising steps with the authors' switching schedule."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        unet = UNet2DConditionModel(**SDXL_UNET)  # type: ignore[arg-type]
    per_call = phase_flops(unet, size)
    result: dict[str, Any] = {"size": size, "gflops_per_step": {k: round(v / 1e9, 1) for k, v in per_call.items()}}
    for n in steps:
        schedule = switching_schedule(SDXL, (size // 8, size // 8), n)
        counts = {p: sum(schedule.phase(i) == p for i in range(n)) for p in PHASES}
        mean = sum(counts[p] * per_call[p] for p in PHASES) / n
        result[f"{n}_steps"] = {"phases": counts, "hidiffusion_gflops_per_step": round(mean / 1e9, 1),
                                "ratio_plain_over_hidiffusion": round(per_call["without"] / mean, 3)}
    return result


def cpu_time_ratio(size: int = 512, steps: int = 10, threads: int = 0, repeats: int = 2) -> dict[str, Any]:
    """Seconds for one text-to-image generation on the narrow SDXL with a style adapter, plain and
    HiDiffusion alternating ``repeats`` times in this process (CPU, fp32); best of each."""
    from diffusers import StableDiffusionXLPipeline

    from instantstyle.hidiffusion import denoising_calls
    from instantstyle.testing.hires import hires_models

    if threads:
        torch.set_num_threads(threads)
    models = hires_models()
    pipe = StableDiffusionXLPipeline.from_pretrained(str(models.sdxl))
    adapter = models.sdxl_adapter
    pipe.load_ip_adapter(str(adapter.parents[1]), subfolder=adapter.parent.name, weight_name=adapter.name,
                         image_encoder_folder=None)
    pipe.set_ip_adapter_scale({"up": {"block_0": [0.0, 1.0, 0.0]}})
    pipe.set_progress_bar_config(disable=True)
    dim = pipe.unet.encoder_hid_proj.image_projection_layers[0].image_embeds.in_features
    style = torch.randn(1, 1, dim, generator=torch.Generator().manual_seed(5))
    embeds = [torch.cat([torch.zeros_like(style), style])]

    def generate() -> float:
        start = time.perf_counter()
        pipe("a cat", width=size, height=size, num_inference_steps=steps, ip_adapter_image_embeds=embeds,
             generator=torch.Generator().manual_seed(1), output_type="np")
        return time.perf_counter() - start

    plains, hidiffs = [], []
    for _ in range(repeats):  # alternating, so a noisy neighbour slows both alike
        plains.append(generate())
        with hidiffusion(pipe.unet, "sdxl", steps=denoising_calls(pipe.scheduler, steps), seed=1):
            hidiffs.append(generate())
    plain, hidiff = min(plains), min(hidiffs)
    return {"device": "cpu", "threads": torch.get_num_threads(), "size": size, "steps": steps,
            "plain_s": round(plain, 2), "hidiffusion_s": round(hidiff, 2), "ratio_plain_over_hidiffusion":
            round(plain / hidiff, 3)}


def gpu_time_ratio(size: int = 2048, steps: int = 30, repeats: int = 2) -> dict[str, Any]:
    """Seconds of the denoising loop (``steps`` CFG UNet calls) on the full-size SDXL UNet, fp16, CUDA:
    plain and HiDiffusion alternating, after a warm-up round; best of ``repeats``."""
    from diffusers import UNet2DConditionModel

    device = torch.device("cuda")
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET).to(torch.float16).eval()  # type: ignore[arg-type]
    args, kwargs = unet_inputs(unet, size, torch.float16, device)

    def loop() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(steps):
                unet(*args, **kwargs)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats + 1):  # alternating; the first round is the warm-up
        for hidiff in (False, True):
            with hidiffusion(unet, "sdxl", steps=steps, seed=1) if hidiff else contextlib.nullcontext():
                times[hidiff].append(loop())
    plain, hidiff = min(times[False][1:]), min(times[True][1:])
    return {"device": torch.cuda.get_device_name(), "dtype": "float16", "size": size, "steps": steps,
            "plain_s": round(plain, 3), "hidiffusion_s": round(hidiff, 3),
            "ratio_plain_over_hidiffusion": round(plain / hidiff, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("flops", "cpu", "gpu"))
    parser.add_argument("--size", type=int, help="image side in px (flops/gpu: 2048, cpu: 512)")
    parser.add_argument("--steps", type=int, help="denoising steps (flops: 30 and 50, cpu: 10, gpu: 30)")
    parser.add_argument("--threads", type=int, default=0, help="cpu: torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=2, help="cpu/gpu: timed runs of each (best is kept)")
    args = parser.parse_args()
    if args.what == "flops":
        result = flop_ratio(args.size or 2048, (args.steps,) if args.steps else (30, 50))
    elif args.what == "cpu":
        result = cpu_time_ratio(args.size or 512, args.steps or 10, args.threads, args.repeats)
    else:
        result = gpu_time_ratio(args.size or 2048, args.steps or 30, args.repeats)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
