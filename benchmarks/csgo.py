#!/usr/bin/env python
"""CSGO's cost against plain SDXL + the tile ControlNet: exact FLOPs, resident weights, and a paired CPU timing.

    python benchmarks/csgo.py flops [--sizes 1024,512] [--steps 30]   # exact, meta device: seconds, no memory
    python benchmarks/csgo.py cpu [--size 256] [--steps 8] [--rounds 5] [--workdir DIR]   # minutes on 2 cores
    python benchmarks/csgo.py gpu [--smoke]                                          # GPU: about a minute (planned)

``flops``: the full-size SDXL UNet and its tile ControlNet (a full SDXL ControlNet, as TTPlanet's) are built on the
meta device; CSGO goes in through instantstyle's own code (``csgo_attention``: the processors, the weights of the
layers it keeps, from a checkpoint with the real file's keys and shapes made by ``testing.csgo.csgo_state``) and
every forward is counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions,
attention; a multiply-add is 2 FLOPs; elementwise work is not counted). A CFG step is one UNet and one ControlNet
forward of batch 2. Per image: the text encoders, the VAE decode and, for CSGO, ViT-bigG on the style image (once
per image: instantstyle caches it) and the resampler. Resident weights are counted from the same checkpoint.

``gpu`` (part g of ``benchmarks/gpu_run.sh``): the same contestants at 1024 px, 20 steps, float16, on the full-size
SDXL, a full SDXL tile ControlNet and h94's ViT-bigG built directly on the GPU with random weights (nothing
downloaded; the CSGO checkpoint is written in csgo_4_32's layout and read by instantstyle's own reader): seconds per
step and per call, paired and rotated round by round, each one's peak memory and the resident parameter counts.
``--time-limit`` bounds the mode (a round that would pass it is skipped, and the report says so); ``--smoke`` runs
the same code on tiny models in float16 (the CPU when there is no GPU), to check the script, not figures.

    python benchmarks/csgo.py gpu [--size 1024] [--steps 20] [--rounds 3] [--time-limit 120] [--smoke]

``cpu``: plain diffusers ``StableDiffusionXLControlNetPipeline`` (a, and a' for the noise floor) against
``StylePipeline`` with the CSGO checkpoint (c), in one process, rotated every round, on a narrow random-weight SDXL
with SDXL's layer counts (widths 64/128/256) and its tile ControlNet, same prompt, seed, size and steps. The
ratios per round are the result; a CPU figure, never a GPU one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import common
import torch
from common import FULL, SMOKE, GiB, Topology, md_table
from flops import _meta, count, text_encoders_flops, vae_decode_flops

from instantstyle.core import csgo_attention
from instantstyle.core.csgo import controlnet_weights, layer_weights, read_csgo
from instantstyle.testing.csgo import csgo_state

G, M = 1e9, 1e6
CONTENT_TOKENS, STYLE_TOKENS = 4, 32  # csgo_4_32.bin
#: A narrow SDXL for the CPU timing: SDXL's blocks and layer counts (1, 2, 10 transformer layers), small widths.
NARROW = replace(SMOKE, name="narrow", unet={**SMOKE.unet, "block_out_channels": (64, 128, 256),
                                             "transformer_layers_per_block": (1, 2, 10),
                                             "attention_head_dim": (1, 2, 4)})


# --- exact cost ---------------------------------------------------------------------------------------------
def models(topo: Topology) -> tuple[Any, Any]:
    """The UNet and its ControlNet (the UNet's encoder half, as ControlNets are), on the meta device."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    def build() -> tuple[Any, Any]:
        unet = UNet2DConditionModel(**topo.unet)
        return unet, ControlNetModel.from_unet(unet, load_weights_from_unet=False, **topo.controlnet)

    return _meta(build)  # type: ignore[no-any-return]


def checkpoint(unet: Any, controlnet: Any, topo: Topology) -> Any:
    """A CSGO checkpoint with the real file's keys and shapes (meta tensors), read by instantstyle's reader; its
    ControlNet part holds the whole ControlNet's weights too, as the real files' sizes say."""
    state = _meta(lambda: csgo_state(unet, controlnet, topo.image_encoder["hidden_size"], STYLE_TOKENS, seed=0,
                                     controlnet_weights=dict(controlnet.state_dict())))
    return read_csgo(Path("<meta>"), state)


def attach(unet: Any, controlnet: Any, weights: Any, content: bool) -> None:
    """CSGO's processors and kept layers, as ``CsgoAdapter`` sets them (on meta tensors)."""
    for model, roles in ((unet, ("style", "content") if content else ("style",)), (controlnet, ("style",))):
        processors = csgo_attention.set_processors(model, CONTENT_TOKENS, STYLE_TOKENS)
        for role in roles:
            held = (layer_weights(weights, model, role) if model is unet else controlnet_weights(weights, model)[1])
            csgo_attention.hold(processors, role, held, "meta", torch.float32)
    csgo_attention.set_scales([unet, controlnet], 0.5 if content else 0.0, 1.0)


def step_flops(unet: Any, controlnet: Any, px: int, tokens: int) -> int:
    """One CFG step (batch 2): the ControlNet, then the UNet with its residuals."""
    cfg = unet.config
    text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim

    def inputs() -> tuple[Any, ...]:
        lat = px // 8
        added = {"text_embeds": torch.empty(2, text), "time_ids": torch.empty(2, 6)}
        return (torch.empty(2, cfg.in_channels, lat, lat), torch.full((2,), 500.0),
                torch.empty(2, tokens, cfg.cross_attention_dim), added, torch.empty(2, 3, px, px))

    sample, t, hidden, added, cond = _meta(inputs)

    def step() -> None:
        down, mid = controlnet(sample, t, encoder_hidden_states=hidden, controlnet_cond=cond, added_cond_kwargs=added,
                               return_dict=False)
        unet(sample, t, encoder_hidden_states=hidden, added_cond_kwargs=added, down_block_additional_residuals=down,
             mid_block_additional_residual=mid)

    return count(step)


def encoder_and_resampler_flops(topo: Topology, weights: Any, unet: Any) -> tuple[int, int]:
    """(ViT-bigG's hidden states for one image, one resampler run on them): diffusers' IPAdapterPlusImageProjection
    from the checkpoint's style resampler, as instantstyle builds it."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    encoder = _meta(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**topo.image_encoder)))
    size = topo.image_encoder["image_size"]
    pixels = _meta(lambda: torch.empty(1, 3, size, size))
    vision = count(lambda: encoder(pixels, output_hidden_states=True))
    group = weights.state_dict["style_image_proj"]
    projection = _meta(lambda: IPAdapterPlusImageProjection(
        embed_dims=group["proj_in.weight"].shape[1], output_dims=group["proj_out.weight"].shape[0],
        hidden_dims=group["latents"].shape[2], heads=group["layers.0.0.to_q.weight"].shape[0] // 64,
        num_queries=group["latents"].shape[1]))
    patches = (size // topo.image_encoder["patch_size"]) ** 2 + 1
    hidden = _meta(lambda: torch.empty(1, patches, topo.image_encoder["hidden_size"]))
    return vision, count(lambda: projection(hidden))


def encoder_params(topo: Topology) -> int:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = _meta(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**topo.image_encoder)))
    return sum(p.numel() for p in model.parameters())


def resident(weights: Any, unet: Any, controlnet: Any, topo: Topology) -> list[list[Any]]:
    """Rows of the resident-weights table: the file, the authors' code, instantstyle pruned and with content."""
    def params(group: dict[str, Any]) -> int:
        return sum(t.numel() for t in group.values())

    res = {name: params(weights.state_dict[name]) for name in ("content_image_proj", "style_image_proj")}
    layers = {role: sum(k.numel() + v.numel() for k, v in layer_weights(weights, unet, role).values())
              for role in ("content", "style")}
    own, style = controlnet_weights(weights, controlnet)
    control_layers = sum(k.numel() + v.numel() for k, v in style.values())
    adapter_file = params(weights.state_dict["ip_adapter"]) + sum(res.values()) + control_layers
    whole = adapter_file + params(own)
    pruned = res["style_image_proj"] + layers["style"] + control_layers
    content = pruned + res["content_image_proj"] + layers["content"]
    authors = sum(res.values()) + layers["style"] + control_layers  # their down-block layers are text-only

    def row(label: str, count_: int, note: str) -> list[Any]:
        return [label, f"{count_ / M:,.1f} M", f"{100 * count_ / adapter_file:.1f}%", f"{count_ * 2 / 2**20:,.0f} MiB",
                f"{count_ * 4 / 2**20:,.0f} MiB", note]

    return [
        row("the file: adapter part", adapter_file, f"plus {params(own) / M:,.1f} M of ControlNet weights "
            f"({whole * 2 / 1e9:.2f} GB in fp16 in all)"),
        row("the authors' CSGO class", authors, "both resamplers; the down-block layers are never loaded"),
        row("instantstyle (default: content 0)", pruned, "style resampler, up-block and ControlNet style layers"),
        row("instantstyle, content tokens on", content, "after a request with --content-adapter-scale > 0, "
            "or --keep-all-weights"),
        row("image encoders, the authors' CSGO class", 2 * encoder_params(topo), "ViT-bigG loaded twice (content "
            "and style), both resident"),
        row("image encoder, instantstyle", encoder_params(topo), "once, and only while it encodes an image not "
            "seen before (low memory)"),
    ]


def flops_report(sizes: list[int], steps: int, topo: Topology = FULL) -> str:
    unet, controlnet = models(topo)
    weights = checkpoint(unet, controlnet, topo)
    parts = ["Resident CSGO weights (real file layout, csgo_4_32: 4 + 32 tokens):", "",
             md_table(["", "parameters", "% of the adapter part", "fp16", "fp32", "what"],
                      resident(weights, unet, controlnet, topo))]
    plain = {px: step_flops(unet, controlnet, px, 77) for px in sizes}
    attach(unet, controlnet, weights, content=False)
    styled = {px: step_flops(unet, controlnet, px, 77 + CONTENT_TOKENS + STYLE_TOKENS) for px in sizes}
    attach(unet, controlnet, weights, content=True)
    content = {px: step_flops(unet, controlnet, px, 77 + CONTENT_TOKENS + STYLE_TOKENS) for px in sizes}
    rows = [[f"{px}x{px}", f"{plain[px] / G:,.1f} G", f"{styled[px] / G:,.1f} G",
             f"{100 * (styled[px] / plain[px] - 1):+.3f}%", f"{content[px] / G:,.1f} G",
             f"{100 * (content[px] / plain[px] - 1):+.3f}%"] for px in sizes]
    parts += ["", "FLOPs per CFG step (UNet + ControlNet, batch 2):", "",
              md_table(["size", "plain SDXL + tile ControlNet", "CSGO (content 0)", "ratio", "CSGO, content tokens on",
                        "ratio"], rows)]
    vision, resampler = encoder_and_resampler_flops(topo, weights, unet)
    text = text_encoders_flops(topo)
    image_rows = []
    for px in sizes:
        base = steps * plain[px] + text + vae_decode_flops(topo, px)
        fresh = steps * styled[px] + text + vae_decode_flops(topo, px) + vision + resampler
        cached = fresh - vision
        image_rows.append([f"{px}x{px}", f"{base / G:,.0f} G", f"{fresh / G:,.0f} G ({100 * (fresh / base - 1):+.2f}%)",
                           f"{cached / G:,.0f} G ({100 * (cached / base - 1):+.3f}%)"])
    parts += ["", f"FLOPs per image ({steps} steps, text encoders, VAE decode; CSGO: + ViT-bigG on the style image "
              f"{vision / G:,.1f} G and its resampler {resampler / G:,.2f} G):", "",
              md_table(["size", "plain", "CSGO, new style image", "CSGO, style image seen before"], image_rows)]
    return "\n".join(parts)


# --- paired CPU timing --------------------------------------------------------------------------------------
def build(workdir: Path) -> tuple[Any, Path, Path, Path]:
    """The narrow SDXL tree (``common.build_tree``), its tile ControlNet and a CSGO checkpoint for them (once)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from instantstyle.testing.fixtures import make_style_image

    tree = common.build_tree(workdir, NARROW, torch.float32)
    folder = tree.root / "csgo"
    controlnet_dir, ckpt, content = folder / "tile", folder / "csgo_4_32.bin", folder / "content.png"
    if not ckpt.is_file():
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_pretrained(str(tree.model / "unet"))
        controlnet = ControlNetModel.from_unet(unet, **NARROW.controlnet)
        controlnet.save_pretrained(str(controlnet_dir))
        encoder = tree.adapters / "sdxl_models" / "image_encoder"
        (folder / "image_encoder").symlink_to(encoder.resolve())
        hidden = NARROW.image_encoder["hidden_size"]
        torch.save(csgo_state(unet, controlnet, hidden, STYLE_TOKENS, seed=1), ckpt)
        make_style_image(content, (512, 384), seed=9)
    return tree, controlnet_dir, ckpt, content


def cpu_report(workdir: Path, size: int, steps: int, rounds: int) -> str:
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline
    from PIL import Image

    from instantstyle import Request, StylePipeline

    threads, _ = common.pin_threads()
    tree, controlnet_dir, ckpt, content = build(workdir)
    image = Image.open(content).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    plain = [StableDiffusionXLControlNetPipeline.from_pretrained(
        str(tree.model), controlnet=ControlNetModel.from_pretrained(str(controlnet_dir)), add_watermarker=False)
        for _ in range(2)]
    for p in plain:
        p.set_progress_bar_config(disable=True)
    styled = StylePipeline.from_pretrained(str(tree.model), str(ckpt), device="cpu")
    request = Request(prompt="a lighthouse", style=str(tree.style), content_image=str(content), control="tile",
                      controlnet=str(controlnet_dir), width=size, height=size, steps=steps, seed=1)

    def run_plain(index: int) -> Any:
        return lambda: plain[index](prompt="a lighthouse", negative_prompt="blurry", image=image, width=size,
                                    height=size, num_inference_steps=steps, guidance_scale=10,
                                    controlnet_conditioning_scale=0.6, generator=torch.Generator().manual_seed(1))

    contestants = {"a": run_plain(0), "a2": run_plain(1), "c": lambda: styled(request)}
    for fn in contestants.values():  # warm-up (c: encodes the style once)
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in contestants}
    for r in range(rounds):
        for name in common.rotated(list(contestants), r):
            wall, cpu = time.perf_counter(), time.process_time()
            contestants[name]()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
        common.log(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1][0]:.2f} s" for n in contestants))

    def ratio(num: str, den: str, which: int) -> str:
        values = [n[which] / d[which] for n, d in zip(times[num], times[den], strict=True)]
        return f"{statistics.median(values):.3f} [{min(values):.3f}–{max(values):.3f}]"

    rows = [[label, ratio(num, "a", 0), ratio(num, "a", 1)] for num, label in (("a2", "a'/a: noise floor"),
                                                                               ("c", "c/a: CSGO"))]
    medians = ", ".join(f"{n} {statistics.median(t[0] for t in times[n]):.2f} s" for n in contestants)
    return "\n".join([
        f"CPU, float32, {threads} threads, narrow SDXL (widths 64/128/256, SDXL's layer counts) + tile ControlNet, "
        f"{size}x{size} px, {steps} steps, {rounds} rounds (median wall per image: {medians}):", "",
        md_table(["per-round ratio", "wall, median [min–max]", "process CPU, median [min–max]"], rows)])


# --- the GPU run (benchmarks/gpu_run.sh part g) --------------------------------------------------------------
class StepClock:
    """When a call's denoising begins (the ControlNet's first forward) and ends (the VAE decoder's first), seen from
    hooks on the models both contestants share: ``start()``, the call, ``seconds_per_step(steps)``."""

    def __init__(self, controlnet: Any, decoder: Any, device: torch.device) -> None:
        self.device, self.marks = device, {}
        controlnet.register_forward_pre_hook(lambda *_: self._mark("denoise"))
        decoder.register_forward_pre_hook(lambda *_: self._mark("decode"))

    def _mark(self, name: str) -> None:
        if name not in self.marks:
            common.sync(self.device)
            self.marks[name] = time.perf_counter()

    def start(self) -> None:
        self.marks = {}

    def seconds_per_step(self, steps: int) -> float:
        return (self.marks["decode"] - self.marks["denoise"]) / steps


def gpu(size: int | None = None, steps: int | None = None, rounds: int = 3, time_limit: float = 120.0,
        smoke: bool = False) -> dict[str, Any]:
    """Plain SDXL + tile ControlNet (diffusers) against CSGO (``StylePipeline``) on the same random weights, built
    on the GPU in float16: seconds per step and per call, paired and rotated round by round; each one's peak memory
    (the weights it needs resident plus its call's measured peak above what was allocated before it); resident
    parameter counts. ``smoke``: tiny models, float16 as on the GPU (the CPU when there is no GPU), to check the
    script and its dtype paths, not figures."""
    import gc
    import tempfile
    import traceback

    from diffusers import StableDiffusionXLControlNetPipeline
    from PIL import Image

    from instantstyle import Request
    from instantstyle.core.csgo import NEGATIVE_PROMPT
    from instantstyle.loading.memory import module_bytes
    from instantstyle.testing.csgo import save_flat
    from instantstyle.testing.fixtures import make_style_image

    begin = time.monotonic()
    deadline = begin + time_limit
    cuda = torch.cuda.is_available()
    if not cuda and not smoke:
        raise SystemExit("the gpu mode needs a CUDA GPU (--smoke runs it on tiny models on the CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16  # the smoke run too: its dtype paths are the GPU run's (float16 found a bug on the CPU)
    topo = SMOKE if smoke else FULL
    size, steps = size or (64 if smoke else 1024), steps or (3 if smoke else 20)
    result: dict[str, Any] = {"device": common.device_name(str(device), common.dtype_name(dtype)),
                              "versions": common.versions(), "smoke": smoke, "size": size, "steps": steps,
                              "time_limit_s": time_limit, "times": {}, "peaks": {}, "notes": []}
    with tempfile.TemporaryDirectory(prefix="instantstyle-csgo-gpu-") as tmp:
        folder = Path(tmp)
        pipe = common.sdxl_on_device(topo, device, dtype)
        unet, vae = pipe.unet, pipe.vae
        controlnet = common.controlnet_on_device(unet, topo, device, dtype)
        controlnet.save_config(str(folder / "tile"))  # the folder a request names; the model is this one
        encoder = common.image_encoder_on_device(topo, device, dtype)
        # csgo_4_32's keys and shapes; its ControlNet part holds the processor layers only: the real file's copy of
        # the ControlNet's own weights would overwrite these same-shaped ones (a load, no change in cost).
        state = csgo_state(unet, controlnet, topo.image_encoder["hidden_size"], STYLE_TOKENS, seed=1)
        save_flat({group: {k: v.to(dtype) for k, v in values.items()} for group, values in state.items()},
                  folder / "csgo_4_32.safetensors")
        del state
        make_style_image(folder / "content.png", (size, size), seed=9)
        make_style_image(folder / "style.png", (512, 512), seed=3)
        texts = [pipe.text_encoder, pipe.text_encoder_2]
        params = {"UNet": unet, "ControlNet": controlnet, "VAE": vae, "text encoders": torch.nn.ModuleList(texts)}
        counts = {name: sum(p.numel() for p in m.parameters()) for name, m in params.items()}
        plain_bytes = sum(module_bytes(m) for m in params.values())
        processors = {"plain": (dict(unet.attn_processors), dict(controlnet.attn_processors))}
        styled = common.style_pipeline_on(pipe, folder / "csgo_4_32.safetensors", encoder, device, dtype)
        styled.resources.extras.controlnets[str(folder / "tile")] = controlnet  # as if loaded from there
        adapter = styled.resources.csgo
        plain = StableDiffusionXLControlNetPipeline.from_pipe(pipe, controlnet=controlnet)
        plain.set_progress_bar_config(disable=True)
        content = Image.open(folder / "content.png").convert("RGB")
        request = Request(prompt="a lighthouse on a cliff", style=str(folder / "style.png"),
                          content_image=str(folder / "content.png"), control="tile",
                          controlnet=str(folder / "tile"), width=size, height=size, steps=steps, seed=1)
        clock = StepClock(controlnet, vae.decoder, device)

        def run_plain() -> Any:
            unet.set_attn_processor(dict(processors["plain"][0]))
            controlnet.set_attn_processor(dict(processors["plain"][1]))
            return plain(prompt=request.prompt, negative_prompt=NEGATIVE_PROMPT, image=content, width=size,
                         height=size, num_inference_steps=steps, guidance_scale=10.0,
                         controlnet_conditioning_scale=0.6, generator=torch.Generator("cpu").manual_seed(1))

        def run_csgo() -> Any:
            if "csgo" in processors:  # the first call made the ControlNet CSGO's (its layers read from the file)
                unet.set_attn_processor(dict(processors["csgo"][0]))
                controlnet.set_attn_processor(dict(processors["csgo"][1]))
            return styled(request)

        contestants = {"a": run_plain, "a2": run_plain, "c": run_csgo}
        # CSGO's resident layer parameters: the UNet's from attaching, the ControlNet's from the first call
        held = {"unet": csgo_attention.parameter_count(unet)}

        def call(name: str) -> None:
            gc.collect()
            before = torch.cuda.memory_allocated(device) if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            clock.start()
            common.sync(device)
            started = time.perf_counter()
            contestants[name]()
            common.sync(device)
            whole = time.perf_counter() - started
            result["times"].setdefault(name, []).append((clock.seconds_per_step(steps), whole))
            peak = torch.cuda.max_memory_allocated(device) - before if cuda else 0
            result["peaks"][name] = max(result["peaks"].get(name, 0), peak)

        try:
            warm = time.monotonic()
            if warm > deadline:
                raise TimeoutError("the models took the whole --time-limit to build; nothing timed")
            for name in ("c", "a"):  # CSGO first: its call sets up the ControlNet; the style is encoded once
                call(name)
                if name == "c":
                    processors["csgo"] = (dict(unet.attn_processors), dict(controlnet.attn_processors))
                    held["cn"] = csgo_attention.parameter_count(controlnet)
            round_s = (time.monotonic() - warm) * 1.5
            result["times"], result["peaks"] = {}, {}  # the warm-up's style encoding is not a step
            for r in range(rounds):
                if time.monotonic() + round_s > deadline:
                    result["notes"].append(f"stopped after {r} timed round(s): the next would pass --time-limit")
                    break
                started = time.monotonic()
                for name in common.rotated(list(contestants), r):
                    call(name)
                round_s = time.monotonic() - started
        except Exception as err:  # out of memory, a non-finite image: what was measured is kept
            traceback.print_exc()
            result["notes"].append(f"failed: {type(err).__name__}: {str(err)[:200]}")
        layers = {"CSGO layers in the UNet": held["unet"], "CSGO layers in the ControlNet": held.get("cn", 0),
                  "CSGO resamplers": sum(p.numel() for m in adapter.resident() for p in m.parameters()),
                  "image encoder (ViT-bigG; off the device between encodings with --low-memory)":
                      sum(p.numel() for p in encoder.model.parameters())}
    itemsize = torch.empty((), dtype=dtype).element_size()
    result["parameters"] = {**counts, **layers}
    result["resident_bytes"] = {"a": plain_bytes, "a2": plain_bytes,
                                "c": plain_bytes + itemsize * sum(layers.values())}
    result["seconds"] = round(time.monotonic() - begin, 1)
    return result


def gpu_report(result: dict[str, Any]) -> str:
    """The GPU mode's figures as markdown, its raw figures as JSON after them."""
    times, steps = result["times"], result["steps"]
    smoke = " (smoke: tiny models, not figures)" if result["smoke"] else ""
    lines = [
        f"### CSGO against plain SDXL + tile ControlNet, {result['device']}{smoke}", "",
        f"{result['size']} px, {steps} steps, guidance 10, tile ControlNet at 0.6, random weights "
        + ("at the tiny test widths" if result["smoke"] else "(SDXL, a full SDXL ControlNet, h94's ViT-bigG)")
        + "; the CSGO checkpoint in csgo_4_32's layout (4 content + 32 style tokens; content scale 0 as the authors' "
        "code, style 1.0) read from its file by instantstyle. (a) diffusers' `StableDiffusionXLControlNetPipeline` on "
        "the same weights, (a') the same again (the noise floor), (c) `StylePipeline` with CSGO, rotated every round; "
        "per step: from the ControlNet's first forward to the VAE decoder's, over the steps; the style image's "
        "encoding is cached after the warm-up call.", ""]

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} [{min(values):.3f}–{max(values):.3f}]"

    if all(times.get(name) for name in ("a", "a2", "c")):
        rows = []
        for num, label in (("a2", "a'/a: noise floor"), ("c", "c/a: CSGO")):
            pairs = list(zip(times[num], times["a"], strict=False))
            rows.append([label, spread([n[0] / d[0] for n, d in pairs]), spread([n[1] / d[1] for n, d in pairs])])
        lines += [md_table(["per-round ratio", "seconds per step, median [min–max]", "whole call, median [min–max]"],
                           rows), ""]
        resident = result["resident_bytes"]
        rows = [[label, f"{statistics.median(t[0] for t in times[name]):.4f}",
                 f"{statistics.median(t[1] for t in times[name]):.3f}",
                 f"{(resident[name] + result['peaks'].get(name, 0)) / GiB:.2f}" if result["peaks"].get(name) else "-"]
                for name, label in (("a", "(a) plain"), ("a2", "(a') plain again"), ("c", "(c) CSGO"))]
        lines += [md_table(["", "seconds per step", "whole call s", "peak GiB (resident + the call's peak above)"],
                           rows), "", f"{len(times['a'])} timed round(s).", ""]
    else:
        lines += ["No timed round.", ""]
    item = 2 if "float16" in result["device"] else 4
    lines += ["Resident parameters:", "", md_table(["part", "parameters", "GiB at this dtype"], [
        [name, f"{count / 1e6:,.1f} M", f"{count * item / GiB:.2f}"] for name, count in result["parameters"].items()])]
    return "\n".join(lines) + "\n" + common.report_end(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("flops", "cpu", "gpu"))
    parser.add_argument("--sizes", default="1024,512")
    parser.add_argument("--size", type=int, default=None, help="cpu: 256; gpu: 1024 (smoke: 64)")
    parser.add_argument("--steps", type=int, default=None, help="flops: 30; cpu: 8; gpu: 20 (smoke: 3)")
    parser.add_argument("--rounds", type=int, default=None, help="cpu: 5; gpu: 3")
    parser.add_argument("--time-limit", type=float, default=120.0, help="gpu: seconds for the whole mode")
    parser.add_argument("--smoke", action="store_true", help="gpu: tiny models in float16 (the CPU without a GPU)")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "instantstyle" / "bench")
    parser.add_argument("--topology", choices=("full", "smoke"), default="full", help="flops: the models' size")
    args = parser.parse_args()
    if args.what == "flops":
        topo = FULL if args.topology == "full" else SMOKE
        print(flops_report([int(s) for s in args.sizes.split(",")], args.steps or 30, topo))
    elif args.what == "gpu":
        print(gpu_report(gpu(args.size, args.steps, args.rounds or 3, args.time_limit, args.smoke)), end="")
    else:
        print(cpu_report(args.workdir, args.size or 256, args.steps or 8, args.rounds or 5))


if __name__ == "__main__":
    main()
