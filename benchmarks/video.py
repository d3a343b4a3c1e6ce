#!/usr/bin/env python
"""Video (AnyV2V on I2VGen-XL): exact cost per phase, the memory plan, and CPU time on the tiny fixtures.

    python benchmarks/video.py flops           # FLOPs per phase, real-size I2VGen-XL on the meta device (minutes)
    python benchmarks/video.py memory          # peak activation bytes of one UNet forward per plan (meta device)
    python benchmarks/video.py cpu             # seconds per phase on the tiny fixtures, this machine's CPU
    python benchmarks/video.py x264            # the same file on every CPU? x264's code paths compared

``flops``: the published ``ali-vilab/i2vgen-xl`` models built on the meta device (shapes, no weights) and counted
with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions, attention; a multiply-add is 2
FLOPs; elementwise work is not counted), at 16 frames of 512 x 512 unless told: encoding the clip (VAE encoder, one
frame at a time), one inversion step (UNet, batch 1 x 16 frames), one sampling step (UNet, the source branch and the
two guidance branches: batch 3 x 16 frames; the same FLOPs split in two batches), and decoding (VAE decoder).

``memory``: the peak of live tensor bytes during one UNet forward, tracked op by op (``LiveBytes``: every tensor an op
makes counts from its creation to its last reference; views share their storage), at float16 on the meta device,
with attention as CUDA's fused kernels hold it (flash or memory-efficient attention never makes the attention matrix;
the meta device only has the math fallback, so ``fused_attention`` stands in for it with the kernel's output, and
``LiveBytes`` fails loudly if an attention matrix still shows up). It prints the activation bytes per frame and
latent pixel that ``modes.video.UNET_ACTIVATION_BYTES`` holds, and the plan ``plan_memory`` makes for 16 frames at
512 x 512 under 24, 8 and 7 GB budgets. No GPU was used for any figure here.

``cpu``: one ``stylize_video`` on the tiny fixtures (5 frames, 64 px), seconds per phase: overhead, not model cost.

``x264``: the same frames written through each of x264's code paths (plain C, SSE2, AVX2, what it detects): whether
the files are the same bytes, and how far apart their pixels decode (``x264_paths``).

``gpu`` (part of ``benchmarks/gpu_run.sh``): the real-size UNet and VAE with random weights, float16, on the GPU: one
sampling step with every injection acting, for 3, 2 and 1 branches per UNet call (``torch.cuda.max_memory_allocated``,
weights included, and seconds per step, median of 3), beside ``plan_memory``'s estimate; and one VAE decode of a frame.
``--smoke``: the same on the tiny fixtures (CPU when there is no GPU), to check the script, not figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common  # noqa: F401  (sets the environment and the import path first)
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

G = 1e9


def meta_models() -> dict[str, Any]:
    from instantstyle.testing.video import meta_i2vgen

    with contextlib.redirect_stderr(io.StringIO()):
        return meta_i2vgen(torch.float16)


def unet_inputs(batch: int, frames: int, width: int, height: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """One UNet call's inputs on the meta device: latents and first-frame latents (batch, 4, F, h, w), text (batch,
    77, 1024), image embedding (batch, 1, 1024), fps."""
    meta = dict(device="meta", dtype=torch.float16)
    shape = (batch, 4, frames, height // 8, width // 8)
    return ((torch.empty(shape, **meta), torch.tensor(500, device="meta")),
            dict(encoder_hidden_states=torch.empty(batch, 77, 1024, **meta), fps=torch.full((batch,), 8, device="meta"),
                 image_latents=torch.empty(shape, **meta), image_embeddings=torch.empty(batch, 1, 1024, **meta),
                 return_dict=False))


def count(fn: Callable[[], Any]) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def flops(frames: int, width: int, height: int, inversion_steps: int, steps: int) -> None:
    models = meta_models()
    unet, vae = models["unet"], models["vae"]
    pixels = torch.empty(1, 3, height, width, device="meta", dtype=torch.float16)
    latent = torch.empty(1, 4, height // 8, width // 8, device="meta", dtype=torch.float16)
    per = {
        "encode (1 frame)": count(lambda: vae.encode(pixels)),
        "inversion step (batch 1)": count(lambda: unet(*unet_inputs(1, frames, width, height)[0],
                                                       **unet_inputs(1, frames, width, height)[1])),
        "sampling step (batch 3)": count(lambda: unet(*unet_inputs(3, frames, width, height)[0],
                                                      **unet_inputs(3, frames, width, height)[1])),
        "decode (1 frame)": count(lambda: vae.decode(latent)),
    }
    phases = {
        "inversion": (frames + 1) * per["encode (1 frame)"] + inversion_steps * per["inversion step (batch 1)"],
        "sampling": 2 * per["encode (1 frame)"] + steps * per["sampling step (batch 3)"],
        "decoding": frames * per["decode (1 frame)"],
    }
    print(f"I2VGen-XL, {frames} frames at {width}x{height}, {inversion_steps} inversion + {steps} sampling steps "
          "(FlopCounterMode on the meta device; text and image encoders not counted: a few GFLOPs)\n")
    print("| unit | GFLOPs |\n|---|---:|")
    for name, value in per.items():
        print(f"| {name} | {value / G:,.1f} |")
    total = sum(phases.values())
    print("\n| phase | GFLOPs | share |\n|---|---:|---:|")
    for name, value in phases.items():
        print(f"| {name} | {value / G:,.0f} | {value / total:.1%} |")
    print(f"| total | {total / G:,.0f} | |")
    plain = per["sampling step (batch 3)"] * 2 / 3
    print(f"\nThe source branch makes a sampling step {per['sampling step (batch 3)'] / plain:.2f}x the cost of plain "
          "guided I2VGen-XL sampling (batch 2).")


class LiveBytes(TorchDispatchMode):
    """The live bytes of the tensors ops make, and their peak: a storage counts from the op that makes it until no
    tensor refers to it (weights and inputs made before the mode are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.now = 0
        self.peak = 0

    def _drop(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.now -= self.sizes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.bmm.default, torch.ops.aten._softmax.default) and _square_attention(out):
            raise RuntimeError(f"{func} made an attention matrix {tuple(out.shape)}: not the fused kernel")
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key not in self.refs:
                self.refs[key] = 0
                self.sizes[key] = storage.nbytes()
                self.now += self.sizes[key]
                self.peak = max(self.peak, self.now)
            self.refs[key] += 1
            weakref.finalize(tensor, self._drop, key)
        return out


def _square_attention(out: Any) -> bool:
    """An (…, N, N) tensor with N a spatial token count of 64 or more: an attention matrix."""
    return (isinstance(out, torch.Tensor) and out.dim() >= 3 and out.shape[-1] == out.shape[-2]
            and out.shape[-1] >= 64)


def fused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any
                    ) -> torch.Tensor:
    """What a fused attention kernel leaves in memory: its output (the meta device has only the math fallback, which
    holds the whole attention matrix; CUDA's flash and memory-efficient kernels work in tiles)."""
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


def activation_peak(unet: Any, batch: int, frames: int, width: int, height: int) -> int:
    from unittest import mock

    args, kwargs = unet_inputs(batch, frames, width, height)
    with mock.patch("torch.nn.functional.scaled_dot_product_attention", fused_attention), torch.no_grad(), \
            LiveBytes() as live:
        unet(*args, **kwargs)
    return live.peak


def memory(frames: int, width: int, height: int) -> None:
    from instantstyle.modes.video import UNET_ACTIVATION_BYTES, VIDEO_RESERVE, injected_bytes, plan_memory

    models = meta_models()
    unet = models["unet"]
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    print("parameters: " + ", ".join(f"{name} {count:,}" for name, count in params.items()))
    latent = (width // 8) * (height // 8)
    rows = []
    for batch in (1, 2, 3):
        peak = activation_peak(unet, batch, frames, width, height)
        rows.append((batch, peak, peak / (batch * frames * latent)))
    print(f"\nOne UNet forward, float16, {frames} frames at {width}x{height} (meta device, live-tensor tracking)\n")
    print("| batch (branches) | peak activations GiB | bytes per frame and latent pixel |\n|---:|---:|---:|")
    for batch, peak, per in rows:
        print(f"| {batch} | {peak / common.GiB:.2f} | {per:,.0f} |")
    measured = max(per for _, _, per in rows)
    print(f"\nmodes.video.UNET_ACTIVATION_BYTES = {UNET_ACTIVATION_BYTES:,} (measured here: {measured:,.0f})")
    weights = 2 * (params["unet"] + params["vae"])
    kept = injected_bytes(unet.config.block_out_channels, frames, width, height, 2)
    print(f"resident while sampling (UNet + VAE, float16): {weights / common.GiB:.2f} GiB; source features kept by "
          f"a split run: {kept / common.GiB:.2f} GiB; encoders (only while encoding): "
          f"{2 * (params['text_encoder'] + params['image_encoder']) / common.GiB:.2f} GiB")
    for budget in (24, 8, 7):
        plan = plan_memory(weights, unet.config.block_out_channels, frames, width, height, 2, budget * common.GiB)
        print(f"--memory-budget {budget}: {plan.branches_per_call} branch(es) per UNet call, estimated peak "
              f"{plan.estimate / common.GiB:.1f} GiB")
    for branches in (3, 2, 1):
        kept_here = kept if branches < 3 else 0
        peak = weights + branches * frames * latent * UNET_ACTIVATION_BYTES + kept_here + VIDEO_RESERVE
        print(f"{branches} branch(es) per call: {peak / common.GiB:.2f} GiB")


def cpu() -> None:
    import os

    from instantstyle import Request
    from instantstyle.core.video_options import VideoOptions
    from instantstyle.loading.runtime import Runtime
    from instantstyle.modes.video import VideoModel, stylize_video
    from instantstyle.testing.video import tiny_video_models

    fixtures = tiny_video_models()
    model = VideoModel.from_pretrained(str(fixtures.i2vgen), Runtime(device="cpu"))
    options = VideoOptions(frames=5, width=64, height=64, inversion_steps=5, steps=5, seed=0,
                           first_frame=str(fixtures.edited_frame))
    runs = []
    for _ in range(3):
        result = stylize_video(fixtures.clip, Request("a cat", style="s.png"), options, video_model=model)
        runs.append(result.seconds)
    print(f"tiny I2VGen-XL, 5 frames at 64 px, 5 + 5 steps, torch threads {torch.get_num_threads()} "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); seconds, best of 3, CPU only\n")
    print("| phase | seconds |\n|---|---:|")
    for phase in ("inversion", "sampling", "decoding"):
        print(f"| {phase} | {min(r[phase] for r in runs):.2f} |")


def gpu(frames: int, size: int, smoke: bool) -> None:
    import statistics
    import types

    from diffusers import AutoencoderKL, I2VGenXLUNet

    from instantstyle.core.video_options import VideoOptions
    from instantstyle.modes.video import (
        Injection,
        VideoModel,
        _Clock,
        _Conditions,
        _predict,
        memory_plans,
    )
    from instantstyle.testing.video import I2VGEN_UNET, I2VGEN_VAE, tiny_video_models

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if smoke:
        folder = tiny_video_models().i2vgen
        unet = I2VGenXLUNet.from_pretrained(str(folder / "unet")).to(device, dtype)
        vae = AutoencoderKL.from_pretrained(str(folder / "vae")).to(device, dtype)
        frames, size = min(frames, 4), 64
    else:
        with torch.device(device):
            unet, vae = I2VGenXLUNet(**I2VGEN_UNET).to(dtype), AutoencoderKL(**I2VGEN_VAE).to(dtype)
    cross = unet.config.cross_attention_dim
    h = w = size // 8

    def conditions() -> _Conditions:
        return _Conditions(torch.randn(1, 77, cross, device=device, dtype=dtype),
                           torch.randn(1, 1, cross, device=device, dtype=dtype),
                           torch.randn(1, 4, frames, h, w, device=device, dtype=dtype))

    source, negative, positive = conditions(), conditions(), conditions()
    latents = torch.randn(1, 4, frames, h, w, device=device, dtype=dtype)
    options = VideoOptions(steps=50, conv_injection=1.0, spatial_injection=1.0, temporal_injection=1.0)
    injection = Injection.of([981], options)
    clock = _Clock(981)
    scheduler = types.SimpleNamespace(scale_model_input=lambda x, t: x)
    weights = sum(p.numel() * p.element_size() for m in (unet, vae) for p in m.parameters())
    print(f"I2VGen-XL UNet + VAE, random weights, {str(dtype).split('.')[-1]} on {device}"
          f"{' (smoke: tiny model)' if smoke else ''}, {frames} frames at {size}x{size}, one sampling step with "
          "every injection acting\n")
    print("| branches per UNet call | peak GiB (weights included) | estimate GiB | seconds per step |")
    print("|---:|---:|---:|---:|")
    itemsize = torch.empty((), dtype=dtype).element_size()
    estimates = {p.branches_per_call: p.estimate
                 for p in memory_plans(weights, unet.config.block_out_channels, frames, size, size, itemsize)}
    for branches in (3, 2, 1):
        model = VideoModel(types.SimpleNamespace(unet=unet, vae=vae), "random", device, dtype,
                           branches_per_call=branches)
        times = []
        for _ in range(3):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            began = time.perf_counter()
            with torch.no_grad():
                _predict(model, latents, latents, torch.tensor(981, device=device), source, [negative, positive],
                         injection, clock, 8, scheduler)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
        print(f"| {branches} | {peak / common.GiB:.2f} | {estimates[branches] / common.GiB:.2f} | "
              f"{statistics.median(times):.3f} |")
    print()


#: x264's code paths, forced with its ``asm`` parameter: plain C, SSE2 alone, AVX2 alone, and what it detects here.
CODE_PATHS = {"C": "asm=0", "SSE2": "asm=MMX2,SSE2", "AVX2": "asm=MMX2,SSE2,SSE3,SSSE3,SSE4.1,SSE4.2,AVX,AVX2,FMA3,"
              "BMI2,LZCNT", "detected": ""}


def x264_paths() -> None:
    """Does ``write_video`` write the same file whatever CPU runs x264? The same 8 frames (noise and a gradient, 3 px
    of motion a frame) written through each of x264's code paths: the file's hash, and the decoded pixels' distance
    from the detected path's and from the frames written (the encoder's own loss, at the default CRF 17)."""
    import hashlib
    import tempfile

    import av
    from PIL import Image

    from instantstyle.files import video as video_files

    def pictures(width: int, height: int) -> dict[str, np.ndarray]:
        yy, xx = np.mgrid[0:height, 0:width]
        gradient = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], -1)
        return {"noise": np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8),
                "gradient": gradient.astype(np.uint8)}

    def written(frames: list[Image.Image], params: str, path: Path) -> tuple[str, np.ndarray]:
        default = video_files.X264_PARAMS
        video_files.X264_PARAMS = ":".join(p for p in (default, params) if p)
        try:
            video_files.write_video(path, frames, 8)
        finally:
            video_files.X264_PARAMS = default
        with av.open(str(path)) as container:
            pixels = np.stack([video_files.frame_rgb(f) for f in container.decode(video=0)]).astype(int)
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12], pixels

    print(f"x264 code paths (PyAV {av.__version__}); pixel distances in levels of 255, max / mean\n")
    print("| size | picture | path | file | vs detected | encoder loss |")
    print("|---|---|---|---|---:|---:|")
    for width, height in ((64, 64), (96, 64), (200, 136), (512, 512)):
        for name, picture in pictures(width, height).items():
            frames = [Image.fromarray(np.roll(picture, 3 * i, axis=1)) for i in range(8)]
            made = np.stack([np.asarray(f) for f in frames]).astype(int)
            with tempfile.TemporaryDirectory() as folder:
                runs = {path: written(frames, params, Path(folder) / f"{path}.mp4")
                        for path, params in CODE_PATHS.items()}
            ref_hash, ref = runs["detected"]
            for path, (digest, pixels) in runs.items():
                same = "same" if digest == ref_hash else digest
                apart, loss = np.abs(pixels - ref), np.abs(pixels - made)
                print(f"| {width}x{height} | {name} | {path} | {same} | {apart.max()} / {apart.mean():.2f} | "
                      f"{loss.max()} / {loss.mean():.2f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("flops", "memory", "cpu", "gpu", "x264"))
    parser.add_argument("--smoke", action="store_true", help="gpu: the tiny fixtures, to check the script")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--inversion-steps", type=int, default=50)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if args.part == "flops":
        flops(args.frames, args.size, args.size, args.inversion_steps, args.steps)
    elif args.part == "gpu":
        gpu(args.frames, args.size, args.smoke)
    elif args.part == "memory":
        memory(args.frames, args.size, args.size)
    elif args.part == "x264":
        x264_paths()
    else:
        cpu()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
