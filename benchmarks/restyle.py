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
4. ``gpu`` (part r of ``benchmarks/gpu_run.sh``): the full-size SDXL (UNet, VAE, both text encoders), h94's
   ViT-bigG image encoder, a full SDXL ControlNet and CSD's ViT-L/14, random weights in float16 built directly on the
   GPU (nothing downloaded; the IP-Adapter is written as its real file and read, pruned and re-read by instantstyle's
   own code, as ``from_pretrained`` does), then ``StylePipeline`` calls at 1024 px: img2img (strength 1), a restyle,
   a restyle with CSD style guidance, and that under ``--memory-budget``, a new seed each (the photo is inverted every
   time): seconds and peak ``torch.cuda.max_memory_allocated`` of each phase (the inversion's seconds per step, the
   denoising's seconds per step), beside the memory part 2 computes. ``--time-limit`` bounds the whole mode (a round
   that would pass it is skipped and the report says so); ``--smoke`` runs the same code on tiny models, in float16
   as on the GPU (the CPU when there is no GPU), to check the script and its dtype paths, not figures.

    python benchmarks/restyle.py gpu [--size 1024] [--steps 20] [--rounds 2] [--memory-budget 14] [--time-limit 180]
    python benchmarks/restyle.py gpu --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common  # (sets the environment and the import path first)
import torch
from common import FULL, SMOKE, Topology, md_table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

G = 1e9
GiB = 2**30
#: CSD's backbone: OpenAI CLIP ViT-L/14 (the authors' checkpoint): width 1024, 24 layers, patch 14, 224 px.
CSD_VIT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
               image_size=224, patch_size=14, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5)
#: CSD at the test fixture's tiny width (``testing.csd``), for ``gpu --smoke``.
CSD_SMOKE = {**CSD_VIT, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 2,
             "projection_dim": 48}


def _meta(fn: Callable[[], Any]) -> Any:
    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        return fn()


def models(topo: Topology = FULL, csd: dict[str, Any] = CSD_VIT) -> dict[str, Any]:
    """The models of ``topo`` (default: full size) on the meta device (shapes only)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModel

    unet = _meta(lambda: UNet2DConditionModel(**topo.unet))
    return {
        "unet": unet,
        "controlnet": _meta(lambda: ControlNetModel.from_unet(unet, **topo.controlnet)),
        "vae": _meta(lambda: AutoencoderKL(**topo.vae)),
        "csd": _meta(lambda: CLIPVisionModel(CLIPVisionConfig(**csd))),
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
    cfg = m["unet"].config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    tracker = LiveTensors()
    with tracker:
        latent = torch.randn(1, 4, side // 8, side // 8, device="meta", dtype=dtype, requires_grad=True)
        t = torch.tensor(500, device="meta")
        text = torch.randn(1, 77, cfg.cross_attention_dim, device="meta", dtype=dtype)
        added = {"text_embeds": torch.randn(1, pooled, device="meta", dtype=dtype),
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


def computed_memory(m: dict[str, Any], side: int) -> dict[str, float]:
    """The memory part 2 computes (GiB): the weights that stay on the device in float16 (the VAE in float32), one
    guided step's activations with and without checkpointing, and the budget they need with the 0.5 GiB reserve."""
    weights = weights_bytes(m)
    peaks = {ck: guided_peak(m, side, torch.float16, ck) for ck in (True, False)}
    return {**{f"{name} weights": b / GiB for name, b in weights.items()},
            "one guided step's activations, checkpointed (--memory-budget)": peaks[True] / GiB,
            "one guided step's activations, not checkpointed (the original)": peaks[False] / GiB,
            "needed with --memory-budget (weights + checkpointed step + 0.5 reserve)":
                (sum(weights.values()) + peaks[True]) / GiB + 0.5}


# --- 4. the GPU run --------------------------------------------------------------------------------------
#: The phases of a call: ``StylePipeline.on_phase``'s, with ``setup`` before the first (the adapters loaded for the
#: call) and ``restore`` after ``end`` (the resting adapter loaded back).
GPU_PHASES = ("setup", "text", "style", "invert", "denoise", "decode", "restore")
#: Seconds the meta-device memory computation takes (full size; a tiny topology takes about one).
COMPUTE_S = 30.0


class PhaseClock:
    """Seconds and peak device memory (``max_memory_allocated``, weights included; 0 on the CPU) of each phase of a
    ``StylePipeline`` call, told by its ``on_phase``: ``start()``, the call, ``finish()``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, int] = {}
        self.current, self.began, self.resident = "setup", 0.0, 0

    def _open(self, phase: str) -> None:
        self.current = phase
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.began = time.perf_counter()

    def _close(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        phase = self.current
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - self.began
        peak = torch.cuda.max_memory_allocated(self.device) if self.cuda else 0
        self.peaks[phase] = max(self.peaks.get(phase, 0), peak)

    def start(self) -> None:
        self.seconds, self.peaks = {}, {}
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.resident = torch.cuda.memory_allocated(self.device) if self.cuda else 0
        self._open("setup")

    def __call__(self, phase: str) -> None:
        self._close()
        self._open("restore" if phase == "end" else phase)

    def finish(self) -> dict[str, Any]:
        self._close()
        return {"seconds": dict(self.seconds), "peaks": dict(self.peaks), "resident": self.resident,
                "whole": sum(self.seconds.values())}


def csd_on_device(config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Any:
    """CSD (a CLIP ViT and its style and content heads) with random weights, on the device."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from instantstyle.scores.csd import CsdModel

    width, dim = config["hidden_size"], config["projection_dim"]
    with common.building(device, dtype):
        backbone = CLIPVisionModel(CLIPVisionConfig(**config)).eval()
        heads = [torch.randn(width, dim) * width**-0.5 for _ in range(2)]
    return CsdModel(backbone, heads[0], "<random CSD>", heads[1])


def gpu_runs(folder: Path, size: int, steps: int, budget: float) -> dict[str, Any]:
    """The calls timed, by name: img2img from the photo (the baseline), a restyle, one with style guidance, and that
    under the memory budget (the last: its pipeline moves models off the device)."""
    from instantstyle import Request

    base = dict(prompt="a photo of a house by a lake", style=str(folder / "style.png"), steps=steps, width=size,
                height=size, guidance=5.0)
    restyle = dict(restyle=str(folder / "photo.png"), controlnet=str(folder / "controlnet"))
    guided = dict(restyle, csd=str(folder / "csd"), style_guidance=1.0)
    return {
        "img2img (strength 1)": Request(**base, init_image=str(folder / "photo.png"), strength=1.0, scheduler="ddim"),
        "restyle": Request(**base, **restyle),
        "restyle + style guidance": Request(**base, **guided),
        f"restyle + style guidance, --memory-budget {budget:g}": Request(**base, **guided),
    }


def gpu(size: int | None = None, steps: int | None = None, rounds: int = 2, time_limit: float = 180.0,
        smoke: bool = False, budget: float = 14.0) -> dict[str, Any]:
    """The GPU mode (module docstring, 4.): its raw figures (``gpu_report`` writes them as markdown)."""
    import gc
    import statistics
    import tempfile
    import traceback

    from instantstyle.loading.memory import module_bytes
    from instantstyle.testing.fixtures import make_style_image
    from instantstyle.testing.restyle import make_photo

    begin = time.monotonic()
    deadline = begin + time_limit
    cuda = torch.cuda.is_available()
    if not cuda and not smoke:
        raise SystemExit("the gpu mode needs a CUDA GPU (--smoke runs it on tiny models on the CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16  # the smoke run too: its dtype paths are the GPU run's (float16 found a bug on the CPU)
    topo, csd_config = (SMOKE, CSD_SMOKE) if smoke else (FULL, CSD_VIT)
    size, steps = size or (64 if smoke else 1024), steps or (3 if smoke else 20)
    result: dict[str, Any] = {"device": common.device_name(str(device), common.dtype_name(dtype)),
                              "versions": common.versions(), "smoke": smoke, "size": size, "steps": steps,
                              "rounds": rounds, "memory_budget_gib": budget, "time_limit_s": time_limit,
                              "runs": {}, "notes": []}
    with tempfile.TemporaryDirectory(prefix="instantstyle-restyle-gpu-") as tmp:
        folder = Path(tmp)
        pipe = common.sdxl_on_device(topo, device, dtype)
        controlnet = common.controlnet_on_device(pipe.unet, topo, device, dtype)
        controlnet.save_config(str(folder / "controlnet"))  # the folder a request names; the model is this one
        encoder = common.image_encoder_on_device(topo, device, dtype)
        csd = csd_on_device(csd_config, device, dtype)
        (folder / "csd").write_text("CSD built in memory by benchmarks/restyle.py gpu\n")
        adapter = common.write_global_adapter(pipe.unet, topo, folder / "ip-adapter_sdxl.safetensors", dtype)
        make_photo(folder / "photo.png", (size, size))
        make_style_image(folder / "style.png", (512, 512), seed=5)
        runs = gpu_runs(folder, size, steps, budget)
        clock = PhaseClock(device)

        def pipeline(memory_budget: float | None) -> Any:
            styled = common.style_pipeline_on(pipe, adapter, encoder, device, dtype, memory_budget=memory_budget)
            styled.resources.extras.controlnets[str(folder / "controlnet")] = controlnet  # as if loaded from there
            styled.resources.extras.csd_models[str(folder / "csd")] = csd
            styled.on_phase = clock
            return styled

        def call(styled: Any, name: str, request: Any) -> dict[str, Any] | None:
            """One call's phases, or ``None`` with the failure kept (out of memory, a non-finite image...)."""
            entry = result["runs"][name]
            clock.start()
            try:
                styled(request)
            except Exception as err:  # one run's failure leaves the others' figures
                traceback.print_exc()
                entry["failed"] = f"{type(err).__name__}: {str(err)[:200]}"
                if cuda:
                    torch.cuda.empty_cache()
                return None
            return clock.finish()

        def timed(styled: Any, names: list[str]) -> None:
            """Warm each run up (2 steps), then time them round by round, rotated, while the time limit allows."""
            warm_s = 0.0
            for name in names:
                result["runs"][name] = entry = {"rounds": []}
                if time.monotonic() + warm_s > deadline:
                    entry["skipped"] = "out of --time-limit before its warm-up"
                    continue
                began = time.monotonic()
                warm = call(styled, name, runs[name].replace(steps=2, seed=1))
                warm_s = time.monotonic() - began
                if warm is not None:  # the call's fixed costs plus its steps' at the warm-up's pace
                    per_step = (warm["seconds"].get("denoise", 0.0) + warm["seconds"].get("invert", 0.0)) / 2
                    entry["estimate_s"] = warm["whole"] + (steps - 2) * per_step
            for r in range(rounds):
                for i, name in enumerate(common.rotated(names, r)):
                    entry = result["runs"][name]
                    if "estimate_s" not in entry:  # failed or skipped
                        continue
                    if time.monotonic() + entry["estimate_s"] > deadline:
                        result["notes"].append(f"{name}: round {r + 1} skipped, it would pass --time-limit")
                        continue
                    figures = call(styled, name, runs[name].replace(seed=100 + 10 * r + i))  # the photo inverted again
                    if figures is not None:
                        entry["rounds"].append(figures)
                        entry["estimate_s"] = figures["whole"]

        styled = pipeline(None)
        result["build_s"] = round(time.monotonic() - begin, 1)
        result["weights_gib"] = {name: module_bytes(module) / GiB for name, module in (
            ("UNet (with the adapter's kept layers)", pipe.unet), ("ControlNet", controlnet), ("VAE", pipe.vae),
            ("text encoders", torch.nn.ModuleList([pipe.text_encoder, pipe.text_encoder_2])),
            ("image encoder", encoder.model), ("CSD", csd.backbone))}
        names = list(runs)
        timed(styled, names[:3])
        del styled
        gc.collect()
        if time.monotonic() < deadline:
            timed(pipeline(budget), names[3:])
        else:
            result["runs"][names[3]] = {"rounds": [], "skipped": "out of --time-limit"}
    for entry in result["runs"].values():
        if entry["rounds"]:
            entry["median"] = {key: statistics.median(r["seconds"].get(key, 0.0) for r in entry["rounds"])
                               for key in (*GPU_PHASES, "whole")}
            entry["median"]["whole"] = statistics.median(r["whole"] for r in entry["rounds"])
            entry["peaks"] = {key: max(r["peaks"].get(key, 0) for r in entry["rounds"]) / GiB for key in GPU_PHASES}
            entry["resident_gib"] = max(r["resident"] for r in entry["rounds"]) / GiB
    if time.monotonic() + (1.0 if smoke else COMPUTE_S) < deadline:
        result["computed"] = computed_memory(models(topo, csd_config), size)
    else:
        result["notes"].append("the computed memory was skipped (not enough of --time-limit left): "
                               "`python benchmarks/restyle.py --no-time` prints it")
    result["seconds"] = round(time.monotonic() - begin, 1)
    return result


def gpu_report(result: dict[str, Any]) -> str:
    """The GPU mode's figures as markdown, its raw figures as JSON after them."""
    steps, runs = result["steps"], result["runs"]
    smoke = " (smoke: tiny models, not figures)" if result["smoke"] else ""
    lines = [
        f"### Restyle (InstantStyle-Plus): seconds and memory per phase, {result['device']}{smoke}", "",
        f"{result['size']} px, {steps} steps (inversion steps = steps, 1 renoise step), DDIM, guidance 5, canny "
        "ControlNet at 0.6, content slot 0.3; style guidance 1.0 with CSD. Random weights: "
        + ("the tiny test widths" if result["smoke"] else "SDXL (UNet, VAE, both text encoders), a full SDXL "
           "ControlNet, h94's ViT-bigG, CSD's ViT-L/14")
        + "; the IP-Adapter read from its file and pruned to the style block as `from_pretrained` does, so a restyle, "
        "whose content slot takes every layer, reads it again for its call (`setup`) and back after it (`restore`). "
        f"Built in {result.get('build_s', '?')} s. Each call a new seed (the photo inverted every time); the median "
        "of the timed rounds. Peak: `max_memory_allocated` within the phase, weights included (0 on the CPU); "
        "resident: allocated when the call begins.", ""]
    base = runs.get("img2img (strength 1)", {}).get("median", {}).get("whole")
    rows = []
    for name, entry in runs.items():
        if "median" not in entry:
            rows.append([name, *["-"] * 9, entry.get("failed") or entry.get("skipped") or "no timed round"])
            continue
        m, peak = entry["median"], entry["peaks"]
        invert = f"{m['invert']:.2f} ({m['invert'] / steps:.3f}/step)" if m["invert"] else "-"
        rows.append([
            name, f"{m['setup']:.2f}", f"{m['text'] + m['style']:.2f}", invert, f"{m['denoise'] / steps:.3f}",
            f"{m['decode']:.2f}", f"{m['restore']:.2f}",
            f"{m['whole']:.2f}" + (f" ({m['whole'] / base:.2f}x)" if base else ""),
            " / ".join(f"{peak[p]:.2f}" if peak[p] else "-" for p in ("invert", "denoise", "decode")),
            f"{entry['resident_gib']:.2f}", f"{len(entry['rounds'])} round(s)"])
    lines.append(md_table(["run", "setup s", "text + style s", "inversion s", "denoising s/step", "decoding s",
                           "restore s", "whole s (to img2img)", "peak GiB: inversion / denoising / decoding",
                           "resident GiB", "notes"], rows))
    lines += ["", "Resident weights as built (GiB): " + ", ".join(
        f"{name} {gib:.2f}" for name, gib in result.get("weights_gib", {}).items())]
    computed = result.get("computed")
    if computed:
        guided = runs.get("restyle + style guidance", {})
        budgeted = next((e for n, e in runs.items() if "--memory-budget" in n), {})

        def above(entry: dict[str, Any]) -> str:
            return f"{entry['peaks']['denoise'] - entry['resident_gib']:.2f}" if entry.get("peaks", {}).get(
                "denoise") else "-"

        highest = max(budgeted.get("peaks", {}).values(), default=0)
        measured = {
            "one guided step's activations, checkpointed (--memory-budget)":
                f"{above(budgeted)} (denoising peak above resident, under the budget)",
            "one guided step's activations, not checkpointed (the original)":
                f"{above(guided)} (denoising peak above resident, no budget)",
            "needed with --memory-budget (weights + checkpointed step + 0.5 reserve)":
                f"{highest:.2f} (the highest peak under --memory-budget {result['memory_budget_gib']:g})"
                if highest else "-",
        }
        lines += ["", f"Memory of a {result['size']} px restyle with style guidance, computed on the meta device "
                  "(part 2 of this script) beside the measured:", "",
                  md_table(["", "computed GiB", "measured GiB"],
                           [[name, f"{gib:.2f}", measured.get(name, "")] for name, gib in computed.items()])]
    return "\n".join(lines) + "\n" + common.report_end(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", choices=("cpu", "gpu"), default="cpu",
                        help="cpu (default): FLOPs, computed memory, CPU time; gpu: the GPU run (gpu_run.sh part r)")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--steps", type=int, default=None, help="FLOPs: 50; gpu: 20 (smoke: 3)")
    parser.add_argument("--rounds", type=int, default=None, help="CPU time: 3; gpu: 2")
    parser.add_argument("--no-time", action="store_true")
    parser.add_argument("--no-flops", action="store_true", help="only the CPU times")
    parser.add_argument("--size", type=int, default=None, help="gpu: image side (1024; smoke 64)")
    parser.add_argument("--memory-budget", type=float, default=14.0, help="gpu: the budget run's GiB")
    parser.add_argument("--time-limit", type=float, default=180.0, help="gpu: seconds for the whole mode")
    parser.add_argument("--smoke", action="store_true", help="gpu: tiny models in float16 (the CPU without a GPU)")
    args = parser.parse_args()
    if args.mode == "gpu":
        print(gpu_report(gpu(args.size, args.steps, args.rounds or 2, args.time_limit, args.smoke,
                             args.memory_budget)), end="")
        return
    args.steps, args.rounds = args.steps or 50, args.rounds or 3
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
    print("\n1024 px restyle with style guidance, float16 on a GPU (computed):\n")
    print(md_table(["part", "GiB"], [[name, f"{gib:.2f}"] for name, gib in computed_memory(m, 1024).items()]))
    if not args.no_time:
        print(f"\nCPU seconds per phase, tiny fixture, 64 px, 3 steps (best of {args.rounds}; ratio to img2img):\n")
        print(md_table(["run", "text", "style", "invert", "denoise", "decode", "whole", "ratio"],
                       cpu_times(args.rounds)))


if __name__ == "__main__":
    main()
