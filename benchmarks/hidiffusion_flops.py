#!/usr/bin/env python
"""What HiDiffusion saves: plain vs HiDiffusion, as ratios measured in one run.

    python benchmarks/hidiffusion_flops.py flops            # exact FLOPs, full-size SDXL, 2048 px (meta, ~1 min)
    python benchmarks/hidiffusion_flops.py cpu              # CPU seconds, narrow random SDXL, 512 px, 10 steps
    python benchmarks/hidiffusion_flops.py gpu --time-limit 240 --json $OUT/hidiffusion-gpu.json
                                                            # GPU: time + memory at 2048 px, equivalence at 4096/2048
    python benchmarks/hidiffusion_flops.py gpu --smoke      # the gpu mode's every step, tiny, on the CPU (seconds)

flops: the full-size SDXL UNet (the public SDXL base config, ``common.UNET``) built on the meta device (shapes,
no weights) and counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions,
attention; elementwise work, pooling and interpolation are not counted). One CFG step is a UNet call of
batch 2. RAU-Net acts only before its switching step, so each phase (RAD, pooled, plain) is counted
once and averaged over the steps with the authors' schedule (above 4096 px RAD and the pooled phase
overlap); MSW-MSA acts at every step.

cpu: the narrow SDXL of the test fixtures (SDXL base's module names, widths 32/64/128) with a style
adapter, text-to-image through diffusers, plain then HiDiffusion, the same seed; its ratio is not the
full-size one (narrow layers shift the balance between convolutions and attention).

gpu (``gpu_benchmark``, one function the GPU script calls): (1) the full-size SDXL UNet with random weights in
fp16 on CUDA and an IP-Adapter on InstantStyle's style block (instantstyle's loader: load, then prune), the
denoising loop only (``steps`` CFG UNet calls of batch 2), plain and HiDiffusion alternating after a warm-up
round: best seconds of each, their ratio, and ``max_memory_allocated`` of each; (2) the equivalence with the
authors' package at the sizes where its large-size switching steps apply (SDXL 4096 px, SD1.5 2048 px) on the
narrow test models (``testing.original_hidiffusion.compare_with_package``; the package's wheel must be in
``.whl/`` on a machine without network: ``pip download --no-deps hidiffusion==0.1.10 -d .whl``). Parts that no
longer fit in ``--time-limit`` are skipped and say so; ``--json`` is rewritten after every part, so a run cut
short keeps what it measured. ``--smoke`` runs every step at a tiny size on the CPU (or the GPU if there is one).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import common  # noqa: F401  (sets the environment and the import path first)
import torch
from common import ROOT, SMOKE, UNET, GiB, PeakMemory, Topology, log, sync

from instantstyle.modes.hidiffusion import denoising_calls, hidiffusion
from instantstyle.modes.hidiffusion_settings import HiDiffusionSettings, Phases, settings_of, switching_schedule

PHASES = ("dilate", "pool", "dilate+pool", "plain")  # see Schedule.phase
WORKDIR = Path("/tmp/instantstyle-hidiffusion")
SDXL = settings_of("sdxl")


def forced(settings: HiDiffusionSettings, phase: str) -> HiDiffusionSettings:
    """``settings`` with RAU-Net fixed in one phase at every step (to count that phase alone)."""
    always = Phases(pool=float("pool" in phase), dilate=float("dilate" in phase))
    return replace(settings, normal=always, large=always, inpaint=None, text_controlnet=None)


def unet_inputs(unet: Any, size: int, dtype: torch.dtype, device: Any) -> tuple[tuple, dict]:
    """One CFG step's UNet inputs (batch 2) for a ``size`` x ``size`` SDXL image (with a style embedding when
    the UNet has an adapter)."""
    latent = size // 8
    sample = torch.randn(2, 4, latent, latent, dtype=dtype, device=device)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, dtype=dtype, device=device)
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    added: dict[str, Any] = {"text_embeds": torch.randn(2, pooled, dtype=dtype, device=device),
                             "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=dtype, device=device)}
    if unet.encoder_hid_proj is not None:
        dim = unet.encoder_hid_proj.image_projection_layers[0].image_embeds.in_features
        added["image_embeds"] = [torch.randn(2, 1, dim, dtype=dtype, device=device)]
    return (sample, torch.tensor(500.0, device=device)), {"encoder_hidden_states": text, "added_cond_kwargs": added}


def phase_flops(unet: Any, size: int, settings: HiDiffusionSettings = SDXL) -> dict[str, int]:
    """FLOPs of one CFG UNet call: plain (no HiDiffusion) and, with HiDiffusion, in each RAU-Net phase."""
    from torch.utils.flop_counter import FlopCounterMode

    args, kwargs = unet_inputs(unet, size, torch.float32, "meta")

    def count() -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            unet(*args, **kwargs)
        return counter.get_total_flops()

    flops = {"without": count()}
    for phase in PHASES:
        with hidiffusion(unet, forced(settings, phase), steps=1, seed=0):
            flops[phase] = count()
    return flops


def flop_ratio(size: int = 2048, steps: tuple[int, ...] = (30, 50)) -> dict[str, Any]:
    """Exact FLOPs per CFG step, plain vs HiDiffusion, on the full-size SDXL UNet at ``size`` px, averaged
    over ``steps`` denoising steps with the authors' switching schedule."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        unet = UNet2DConditionModel(**UNET)  # type: ignore[arg-type]
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


# --- gpu mode ------------------------------------------------------------------------------------------------------
def style_unet(topo: Topology, device: torch.device, dtype: torch.dtype) -> Any:
    """A random-weight SDXL UNet of ``topo`` on ``device`` at ``dtype``, with a random h94-layout global IP-Adapter
    attached by instantstyle's loader and pruned to InstantStyle's style block (its image attention runs there)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from instantstyle.core.adapter import AdapterWeights, attach_adapters
    from instantstyle.core.blocks import resolve_blocks
    from instantstyle.families import family_named
    from instantstyle.testing.fixtures import _global_adapter

    torch.manual_seed(0)
    with torch.device(device), contextlib.redirect_stderr(io.StringIO()):
        unet = UNet2DConditionModel(**topo.unet).to(dtype).eval()  # type: ignore[arg-type]
    pipe = StableDiffusionXLPipeline(  # the adapter loader is a pipeline method; the UNet is all it touches
        vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
        scheduler=EulerDiscreteScheduler(), add_watermarker=False,
    )
    sdxl = family_named("sdxl")
    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in _global_adapter(unet, topo.embed_dim, seed=0).items():
        group, _, rest = key.partition(".")
        state[group][rest] = tensor.to(dtype)
    layers = sdxl.layers(unet)
    weights = AdapterWeights("<random>", "global", topo.embed_dim, unet.config.cross_attention_dim, len(layers), state)
    attach_adapters(pipe, sdxl, [weights], [set(resolve_blocks("style", layers, sdxl))])
    return pipe.unet


def time_and_memory(topo: Topology, size: int, steps: int, repeats: int, device: torch.device, dtype: torch.dtype,
                    deadline: float) -> dict[str, Any]:
    """Seconds of ``steps`` CFG UNet calls, plain and HiDiffusion alternating after a warm-up round, best of up to
    ``repeats`` rounds (fewer when the next round would pass ``deadline``), and each one's peak memory."""
    log(f"building the random-weight SDXL UNet ({topo.name}) with a style-block adapter on {device}")
    unet = style_unet(topo, device, dtype)
    args, kwargs = unet_inputs(unet, size, dtype, device)
    peak = PeakMemory(device)
    times: dict[str, list[float]] = {"plain": [], "hidiffusion": []}
    peaks: dict[str, int] = {"plain": 0, "hidiffusion": 0}
    phases: list[str] = []

    def loop(name: str) -> float:
        context = hidiffusion(unet, "sdxl", steps=steps, seed=1) if name == "hidiffusion" else contextlib.nullcontext()
        peak.reset()
        sync(device)
        start = time.perf_counter()
        with torch.no_grad(), context as run:
            for _ in range(steps):
                unet(*args, **kwargs)
        sync(device)
        seconds = time.perf_counter() - start
        peaks[name] = max(peaks[name], peak.read())
        if run is not None:
            phases[:] = run.phases
        return seconds

    rounds = 0
    for round_index in range(repeats + 1):  # round 0 is the warm-up
        started = time.monotonic()
        for name in times:
            seconds = loop(name)
            if round_index:
                times[name].append(seconds)
        rounds = round_index
        log(f"round {round_index}{' (warm-up)' if not round_index else ''}: {time.monotonic() - started:.1f} s")
        if time.monotonic() + (time.monotonic() - started) > deadline:
            break
    result: dict[str, Any] = {"size": size, "steps": steps, "dtype": str(dtype).removeprefix("torch."),
                              "unet": topo.name, "adapter": "global, style block", "timed_rounds": rounds,
                              "phases": {p: phases.count(p) for p in dict.fromkeys(phases)}}
    if rounds:
        plain, hidiff = min(times["plain"]), min(times["hidiffusion"])
        result.update(plain_s=round(plain, 3), hidiffusion_s=round(hidiff, 3),
                      ratio_plain_over_hidiffusion=round(plain / hidiff, 3))
    else:
        result["note"] = "out of time after the warm-up round: no timed round"
    unit = "max_memory_allocated" if device.type == "cuda" else "process RSS high-water mark"
    result["peak_memory"] = {"measure": unit, "plain_gib": round(peaks["plain"] / GiB, 2),
                             "hidiffusion_gib": round(peaks["hidiffusion"] / GiB, 2)}
    return result


def package_equivalence(cases: Sequence[tuple[str, int, int]], device: torch.device, workdir: Path,
                        deadline: float, reserve: float) -> dict[str, Any]:
    """Ours vs the authors' package on the narrow models at each (family, side, steps), while at least
    ``reserve`` seconds are left; a case that fails is recorded, not raised."""
    from instantstyle.testing import tiny_models
    from instantstyle.testing.hires import hires_models
    from instantstyle.testing.original_hidiffusion import PackageUnavailable, compare_with_package, original_hidiffusion

    if time.monotonic() + reserve > deadline:  # not even one case fits: build nothing
        return {f"{family}-{side}px-{steps}steps": {"skipped": "out of time"} for family, side, steps in cases}
    wheels = ROOT / ".whl"
    if any(wheels.glob("hidiffusion-*.whl")):  # a machine without network: pip takes the carried wheel
        os.environ.setdefault("PIP_FIND_LINKS", str(wheels))
        os.environ.setdefault("PIP_NO_INDEX", "1")
    os.environ.setdefault("PIP_RETRIES", "0")  # without the wheel or a network, fail in seconds, not minutes
    os.environ.setdefault("PIP_TIMEOUT", "5")
    try:
        package = original_hidiffusion()
    except PackageUnavailable as err:
        return {"skipped": f"the hidiffusion package is unavailable: {err}"}
    hires = hires_models(workdir / "hires", tiny_models(workdir / "tiny"))
    found: dict[str, Any] = {}
    for family, side, steps in cases:
        name = f"{family}-{side}px-{steps}steps"
        if time.monotonic() + reserve > deadline:
            found[name] = {"skipped": "out of time"}
            continue
        log(f"equivalence with the package: {name}")
        started = time.monotonic()
        try:
            made = compare_with_package(hires, package, family, side, side, steps, device=str(device),
                                        output_type="latent")
        except Exception as err:  # noqa: BLE001  (recorded: the timing above is still worth keeping)
            found[name] = {"error": f"{type(err).__name__}: {err}"}
            continue
        relative = made.relative_difference
        found[name] = {"max_abs_difference": made.max_difference, "relative_difference": relative,
                       "equal": relative <= 1e-4, "large_size_schedule": "dilate+pool" in made.phases,
                       "seconds": round(time.monotonic() - started, 1)}
    return found


def gpu_benchmark(*, size: int | None = None, steps: int | None = None, repeats: int = 2, smoke: bool = False,
                  time_limit: float = 240.0, equivalence: bool = True, workdir: Path = WORKDIR,
                  json_path: Path | None = None) -> dict[str, Any]:
    """The gpu mode in one call: plain vs HiDiffusion time and peak memory on the full-size SDXL UNet (fp16,
    2048 px, 30 steps), then the equivalence with the package at the large sizes, within ``time_limit`` seconds
    (parts that would pass it are skipped and say so). ``smoke``: a tiny UNet at 256 px, 3 steps, on the CPU
    unless a GPU is there, and the equivalence at 128 px. ``json_path`` is rewritten after every part."""
    deadline = time.monotonic() + time_limit
    cuda = torch.cuda.is_available()
    if not cuda and not smoke:
        raise SystemExit("the gpu mode needs a CUDA GPU (--smoke runs it at a tiny size on the CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    topo = SMOKE if smoke else common.FULL
    dtype_name = str(dtype).removeprefix("torch.")
    result: dict[str, Any] = {"mode": "smoke" if smoke else "gpu", "time_limit_s": time_limit,
                              "device": common.device_name(str(device), dtype_name), "versions": common.versions()}

    def save() -> None:
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(result, indent=1))

    save()
    result["timing"] = time_and_memory(topo, size or (256 if smoke else 2048), steps or (3 if smoke else 30),
                                       repeats, device, dtype, deadline)
    save()
    if cuda:
        torch.cuda.empty_cache()  # the full-size UNet is gone
    if equivalence:
        from instantstyle.testing.original_hidiffusion import LARGE_SIZES

        cases = (("sdxl", 128, 4), ("sd15", 128, 4)) if smoke else LARGE_SIZES
        result["equivalence"] = package_equivalence(cases, device, workdir, deadline, 10.0 if smoke else 45.0)
        save()
    result["seconds"] = round(time_limit - (deadline - time.monotonic()), 1)
    save()
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("flops", "cpu", "gpu"))
    parser.add_argument("--size", type=int, help="image side in px (flops/gpu: 2048, cpu: 512, gpu --smoke: 256)")
    parser.add_argument("--steps", type=int, help="denoising steps (flops: 30 and 50, cpu: 10, gpu: 30)")
    parser.add_argument("--threads", type=int, default=0, help="cpu: torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=2, help="cpu/gpu: timed runs of each (best is kept)")
    parser.add_argument("--smoke", action="store_true", help="gpu: every step at a tiny size (CPU is enough)")
    parser.add_argument("--time-limit", type=float, default=240.0, help="gpu: seconds for the whole mode")
    parser.add_argument("--no-equivalence", action="store_true", help="gpu: time and memory only")
    parser.add_argument("--workdir", type=Path, default=WORKDIR,
                        help="gpu: where the narrow test models are built")
    parser.add_argument("--json", type=Path, help="gpu: also write the result here (after every part)")
    args = parser.parse_args(argv)
    if args.what == "flops":
        result = flop_ratio(args.size or 2048, (args.steps,) if args.steps else (30, 50))
    elif args.what == "cpu":
        result = cpu_time_ratio(args.size or 512, args.steps or 10, args.threads, args.repeats)
    else:
        result = gpu_benchmark(size=args.size, steps=args.steps, repeats=args.repeats, smoke=args.smoke,
                               time_limit=args.time_limit, equivalence=not args.no_equivalence,
                               workdir=args.workdir, json_path=args.json)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
