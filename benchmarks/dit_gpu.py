#!/usr/bin/env python
"""GPU case for the diffusion transformers: plain diffusers vs instantstyle on SD3.5 Large and FLUX.1-dev.

    python benchmarks/dit_gpu.py --out dit-gpu.md --json dit-gpu.json   # GPU: full size, bf16 (~2 min on an H100)
    python benchmarks/dit_gpu.py --smoke                                 # the same code, tiny fixtures, CPU

Nothing is downloaded: every model is built directly on the device from its public config with random weights
(bf16 on the GPU; the tokenizers are the test fixtures', built in code), the adapters are random state dicts in
the published layouts (InstantX's SD3.5 adapter, XLabs' FLUX v1) and SigLIP / CLIP ViT-L image encoders.
(a) is diffusers' own pipeline without an adapter; (c) is ``instantstyle.StylePipeline`` on the same weights
(the adapter attached by instantstyle's ``attach_adapters``, the family's default blocks ``all``), the two
interleaved round by round. Timed: whole text-to-image calls (text encoders, denoising, VAE decode), the
style's encoding excluded (done once, in the warm-up, as instantstyle caches it).

Peak memory: both contestants share one set of weights in this process, so each one's peak is counted as the
bytes of the weights it needs resident (plain: the pipeline's models; instantstyle: plus the adapter weights it
keeps and its image encoder) plus the measured peak of its call above the memory allocated before it.
``--time-limit`` bounds the whole run: a family or a round that would not fit is skipped, and the report says so.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import common  # noqa: F401  (sets the environment and the import path first)
import torch
from common import building, md_table
from dit_flops import CLIP_L_PROJ, FLUX_DEV, INSTANTX, SD35_LARGE

GiB = 2**30
PROMPTS = ["a lighthouse on a cliff", "a cat reading a book", "a city street at night", "a bowl of fruit"]

# Public configs of the other components (text encoders, VAE, image encoders).
CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
CLIP_G_TEXT = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
FLOW_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=1024,
                use_quant_conv=False, use_post_quant_conv=False)
SD3_VAE_SCALE = dict(scaling_factor=1.5305, shift_factor=0.0609)
FLUX_VAE_SCALE = dict(scaling_factor=0.3611, shift_factor=0.1159)
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     image_size=384, patch_size=14)
CLIP_L_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=224, patch_size=14, projection_dim=CLIP_L_PROJ, hidden_act="quick_gelu")
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)


@dataclass(frozen=True)
class Configs:
    """Everything a family's models are built from."""

    transformer: dict[str, Any]
    vae: dict[str, Any]
    text: list[dict[str, Any]]  # CLIP text towers (SD3: L and bigG; FLUX: L)
    t5: dict[str, Any]
    encoder: dict[str, Any]
    resampler: dict[str, Any] = field(default_factory=dict)  # InstantX's (SD3 only)
    scheduler: dict[str, Any] = field(default_factory=dict)


def full_configs(family: str) -> Configs:
    if family == "sd3":
        return Configs(SD35_LARGE, {**FLOW_VAE, **SD3_VAE_SCALE}, [CLIP_L_TEXT, CLIP_G_TEXT], T5_XXL, SIGLIP_SO400M,
                       INSTANTX, SD3_SCHEDULER)
    return Configs(FLUX_DEV, {**FLOW_VAE, **FLUX_VAE_SCALE}, [{**CLIP_L_TEXT, "projection_dim": 768}], T5_XXL,
                   CLIP_L_VISION, {}, FLUX_SCHEDULER)


def smoke_configs(family: str) -> Configs:
    """The tiny fixtures' configs (``instantstyle.testing.dit``), read from the fixture tree."""
    from transformers import CLIPTextConfig, CLIPVisionConfig, SiglipVisionConfig, T5Config

    from instantstyle.testing import dit as fixtures

    tree = fixtures.tiny_dit_models()
    folder = tree.sd3 if family == "sd3" else tree.flux

    def read(sub: str, name: str = "config.json") -> dict[str, Any]:
        data = json.loads((folder / sub / name).read_text())
        return {k: v for k, v in data.items() if not k.startswith("_")}

    def plain(config: Any) -> dict[str, Any]:  # the saved dtype would override the run's
        return {k: v for k, v in config.to_diff_dict().items() if k != "dtype"}

    def text(sub: str) -> dict[str, Any]:
        return plain(CLIPTextConfig.from_pretrained(str(folder / sub)))

    t5 = plain(T5Config.from_pretrained(str(folder / ("text_encoder_3" if family == "sd3" else "text_encoder_2"))))
    if family == "sd3":
        encoder = plain(SiglipVisionConfig.from_pretrained(str(tree.siglip)))
        resampler = dict(embed_dim=fixtures._SIGLIP_HIDDEN, output_dim=fixtures._SD3_INNER,
                         hidden_dim=fixtures._RESAMPLER_HIDDEN, heads=1, num_queries=fixtures._RESAMPLER_QUERIES,
                         timestep_in_dim=fixtures._RESAMPLER_TIME_IN)
        texts = [text("text_encoder"), text("text_encoder_2")]
    else:
        encoder = plain(CLIPVisionConfig.from_pretrained(str(tree.clip_l)))
        resampler, texts = {}, [text("text_encoder")]
    return Configs(read("transformer"), read("vae"), texts, t5, encoder, resampler,
                   read("scheduler", "scheduler_config.json"))


# --- building on the device ---------------------------------------------------------------------------------
def build_pipeline(family: str, cfg: Configs, device: torch.device, dtype: torch.dtype) -> Any:
    """The family's text-to-image diffusers pipeline with random weights, built on the device."""
    import diffusers
    import transformers

    from instantstyle.testing.dit import _t5_tokenizer
    from instantstyle.testing.fixtures import _make_tokenizer

    with building(device, dtype):
        cls = diffusers.SD3Transformer2DModel if family == "sd3" else diffusers.FluxTransformer2DModel
        transformer = cls(**cfg.transformer).to(dtype).eval()
        vae = diffusers.AutoencoderKL(**cfg.vae).to(dtype).eval()
        t5 = transformers.T5EncoderModel(transformers.T5Config(**cfg.t5)).to(dtype).eval()
        text_cls = transformers.CLIPTextModelWithProjection if family == "sd3" else transformers.CLIPTextModel
        texts = [text_cls(transformers.CLIPTextConfig(**c)).to(dtype).eval() for c in cfg.text]
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**cfg.scheduler)
    if family == "sd3":
        return diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=texts[0], tokenizer=_make_tokenizer(),
            text_encoder_2=texts[1], tokenizer_2=_make_tokenizer(pad_token="!"), text_encoder_3=t5,
            tokenizer_3=_t5_tokenizer())
    return diffusers.FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=texts[0], tokenizer=_make_tokenizer(),
                                  text_encoder_2=t5, tokenizer_2=_t5_tokenizer(), transformer=transformer)


def adapter_state(family: str, cfg: Configs, transformer: Any, device: torch.device,
                  dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
    """A random adapter state dict in the published layout, on the device: InstantX's (resampler under its
    original key names, one processor per joint block) or XLabs' v1 (in diffusers' names)."""
    config = transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    with building(device, dtype):
        if family == "sd3":
            from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
            from diffusers.models.embeddings import IPAdapterTimeImageProjection

            from instantstyle.testing.dit import _instantx_resampler_keys

            resampler = IPAdapterTimeImageProjection(**cfg.resampler).state_dict()
            layers: dict[str, torch.Tensor] = {}
            for i in range(config.num_layers):
                proc = SD3IPAdapterJointAttnProcessor2_0(width, width, config.attention_head_dim,
                                                         cfg.resampler["hidden_dim"])
                layers.update({f"{i}.{k}": v for k, v in proc.state_dict().items()})
            return {"image_proj": _instantx_resampler_keys(resampler), "ip_adapter": layers}
        text, embed = config.joint_attention_dim, cfg.encoder["projection_dim"]
        scale = text**-0.5
        proj = {"proj.weight": torch.randn(4 * text, embed) * embed**-0.5, "proj.bias": torch.zeros(4 * text),
                "norm.weight": torch.ones(text), "norm.bias": torch.zeros(text)}
        layers = {f"{i}.{kind}_ip.{p}": torch.randn(width, text) * scale if p == "weight" else torch.zeros(width)
                  for i in range(config.num_layers) for kind in ("to_k", "to_v") for p in ("weight", "bias")}
        return {"image_proj": proj, "ip_adapter": layers}


def build_encoder(family: str, cfg: Configs, device: torch.device, dtype: torch.dtype) -> Any:
    """The adapter's image encoder (SigLIP so400m / CLIP ViT-L/14 vision) with its preprocessing."""
    import transformers

    from instantstyle.core.embeddings import ImageEncoder

    with building(device, dtype):
        if family == "sd3":
            model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**cfg.encoder))
            size = cfg.encoder["image_size"]
            processor = transformers.SiglipImageProcessor(size={"height": size, "width": size})
        else:
            model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**cfg.encoder))
            processor = transformers.CLIPImageProcessor(size=cfg.encoder["image_size"],
                                                        crop_size=cfg.encoder["image_size"])
    return ImageEncoder(model.to(dtype).eval(), processor, f"<random {family} image encoder>")


def style_pipeline(pipe: Any, family_name: str, state: dict[str, dict[str, torch.Tensor]], encoder: Any,
                   blocks: str | None, device: torch.device, dtype: torch.dtype, folder: Path) -> Any:
    """instantstyle on an already built pipeline: the adapter checked and attached by the loader's own steps
    (``check_adapter_fits``, ``attach_adapters``: the family's loader, then pruning), then a ``StylePipeline``. The
    adapter is written to ``folder`` too (flat safetensors, ``group.key``): every request's check reads its file's
    kind from its path, as for a loaded adapter."""
    from safetensors.torch import save_file

    from instantstyle import StylePipeline
    from instantstyle.core.adapter import AdapterWeights, attach_adapters, check_adapter_fits
    from instantstyle.core.blocks import resolve_blocks
    from instantstyle.core.styles import EmbeddingStore
    from instantstyle.families import family_named
    from instantstyle.loading.extras import Extras
    from instantstyle.loading.resources import Resources
    from instantstyle.loading.runtime import Runtime

    family = family_named(family_name)
    denoiser = family.denoiser_of(pipe)
    proj = state["image_proj"]
    kind = "plus" if "latents" in proj else "global"
    embed = proj["proj_in.weight" if kind == "plus" else "proj.weight"].shape[1]
    width = proj["proj_out.weight"].shape[0] if kind == "plus" else proj["norm.weight"].shape[0]
    layers = family.layers(denoiser)
    path = folder / f"{family_name}-adapter.safetensors"
    save_file({f"{group}.{key}": tensor.detach().to("cpu").contiguous() for group, tensors in state.items()
               for key, tensor in tensors.items()}, str(path))
    weights = AdapterWeights(str(path), kind, int(embed), int(width), len(layers), state)  # type: ignore[arg-type]
    check_adapter_fits(weights, family, denoiser)
    keep = frozenset(resolve_blocks(blocks, layers, family))
    attach_adapters(pipe, family, [weights], [set(keep)])
    runtime = Runtime(device=str(device), dtype=str(dtype).removeprefix("torch."))
    return StylePipeline(Resources(pipe, family, replace(weights, state_dict={}), encoder, f"<random {family_name}>",
                                   runtime, device, dtype, low_memory=False, embeddings=EmbeddingStore(device, dtype),
                                   extras=Extras(device, dtype), rest=keep))


# --- measuring ------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_above(device: torch.device, fn: Callable[[], Any]) -> tuple[float, int]:
    """(seconds, peak bytes allocated above what was allocated before) of ``fn()``; bytes 0 on the CPU."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else 0
    return seconds, peak


def parameter_bytes(*modules: Any) -> int:
    unique = {id(p): p for m in modules if m is not None for p in m.parameters()}
    return sum(p.numel() * p.element_size() for p in unique.values())


@dataclass
class FamilyResult:
    family: str
    times: dict[str, list[float]] = field(default_factory=dict)
    peaks: dict[str, list[int]] = field(default_factory=dict)
    resident: dict[str, int] = field(default_factory=dict)
    adapter_params: int = 0
    build_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def run_family(family: str, cfg: Configs, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
               deadline: float, style: Path) -> FamilyResult:
    """Build, warm up, then time both contestants round by round (rotated order) until ``--rounds`` or the
    deadline."""
    from instantstyle import Request
    from instantstyle.core.processors import adapter_parameter_count

    result = FamilyResult(family)
    start = time.perf_counter()
    pipe = build_pipeline(family, cfg, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    plain_procs = dict(transformer.attn_processors)
    models = [pipe.transformer, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
              getattr(pipe, "text_encoder_3", None)]
    plain_bytes = parameter_bytes(*models)
    state = adapter_state(family, cfg, transformer, device, dtype)
    encoder = build_encoder(family, cfg, device, dtype)
    styled = style_pipeline(pipe, family, state, encoder, args.blocks, device, dtype, style.parent)
    del state
    styled_procs = dict(transformer.attn_processors)
    plain_view = {**styled_procs, **plain_procs}  # the resampler's own attentions (SD3) keep their processors
    result.adapter_params = adapter_parameter_count(transformer)
    item = torch.empty((), dtype=dtype).element_size()
    styled_bytes = plain_bytes + result.adapter_params * item + parameter_bytes(encoder.model)
    result.resident = {"a": plain_bytes, "c": styled_bytes}
    result.build_s = time.perf_counter() - start
    size = {"width": args.size, "height": args.size}

    def plain(prompt: str) -> Any:
        transformer.set_attn_processor(dict(plain_view))
        return pipe(prompt=prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                    generator=torch.Generator("cpu").manual_seed(args.seed), **size).images

    def instantstyle(prompt: str) -> Any:
        transformer.set_attn_processor(dict(styled_procs))
        request = Request(prompt, style=str(style), steps=args.steps, guidance=args.guidance, seed=args.seed,
                          blocks=args.blocks, **size)
        return styled(request).images

    contestants = {"a": plain, "c": instantstyle}
    warm_start = time.perf_counter()
    for fn in contestants.values():  # first calls: kernels, allocator, the style's one encoding
        fn(PROMPTS[0])
    round_s = time.perf_counter() - warm_start
    for r in range(args.rounds):
        if time.perf_counter() + round_s > deadline:
            result.notes.append(f"stopped after {r} timed round(s): the next would pass --time-limit")
            break
        order = list(contestants) if r % 2 == 0 else list(reversed(contestants))
        round_start = time.perf_counter()
        for name in order:
            seconds, peak = peak_above(device, lambda fn=contestants[name], r=r: fn(PROMPTS[(r + 1) % len(PROMPTS)]))
            result.times.setdefault(name, []).append(seconds)
            result.peaks.setdefault(name, []).append(peak)
        round_s = time.perf_counter() - round_start
    return result  # the models go with this frame; main collects them before the next family


def report(results: list[FamilyResult], args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
           skipped: list[str]) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"### SD3.5 Large and FLUX.1-dev: plain diffusers (a) vs instantstyle (c) on {name}",
        "",
        f"{args.size} px, {args.steps} steps, guidance {args.guidance:g} (FLUX: distilled guidance, one forward per "
        f"step), {dtype}, random weights at {'full' if not args.smoke else 'tiny fixture'} size, blocks "
        f"{args.blocks or 'the default (all)'}; per image: the whole call (text encoders, denoising, VAE). Peak "
        "memory: the weights a contestant needs resident plus its call's measured peak above them.",
        "",
    ]
    rows = []
    for res in results:
        if "a" not in res.times or "c" not in res.times:
            rows.append([res.family, "-", "-", "-", "-", "-", "-", "; ".join(res.notes) or "no timed round"])
            continue
        ta, tc = statistics.median(res.times["a"]), statistics.median(res.times["c"])
        ratios = [c / a for a, c in zip(res.times["a"], res.times["c"], strict=False)]
        pa = res.resident["a"] + max(res.peaks["a"])
        pc = res.resident["c"] + max(res.peaks["c"])
        rows.append([
            res.family, f"{ta:.2f} s", f"{tc:.2f} s",
            f"{statistics.median(ratios):.3f} ({', '.join(f'{x:.3f}' for x in ratios)})",
            f"{pa / GiB:.2f} GiB", f"{pc / GiB:.2f} GiB", f"{pc / pa:.3f}",
            f"build {res.build_s:.0f} s; adapter resident {res.adapter_params / 1e6:,.1f} M params"
            + ("; " + "; ".join(res.notes) if res.notes else ""),
        ])
    lines.append(md_table(["family", "(a) per image", "(c) per image", "time ratio c/a (per round)",
                           "(a) peak", "(c) peak", "memory ratio c/a", "notes"], rows))
    for family in skipped:
        lines += ["", f"{family}: skipped, not enough of --time-limit left"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--smoke", action="store_true", help="the tiny fixtures on the CPU (float32): every code path")
    parser.add_argument("--families", default="flux,sd3")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024; smoke 64)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 8; smoke 2)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per family (each: one image of each)")
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--blocks", default=None, help="instantstyle's blocks spec (default: the family's, all)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--time-limit", type=float, default=150.0, help="seconds for the whole run")
    parser.add_argument("--out", default=None, help="write the markdown report here too")
    parser.add_argument("--json", default=None, help="write the raw numbers here")
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    deadline = begin + args.time_limit
    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        print("error: no CUDA GPU (use --smoke for the CPU run on the tiny fixtures)", file=sys.stderr)
        return 2
    args.size = args.size or (64 if args.smoke else 1024)
    args.steps = args.steps or (2 if args.smoke else 8)
    from instantstyle.testing.fixtures import make_style_image

    results, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        style = make_style_image(Path(tmp) / "style.png", (512, 384))
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        for i, family in enumerate(families):
            left = deadline - time.perf_counter()
            if results and left < (args.time_limit - left) / len(results) * 0.8:  # less than a family took
                skipped += families[i:]
                break
            cfg = smoke_configs(family) if args.smoke else full_configs(family)
            try:
                results.append(run_family(family, cfg, args, device, dtype, deadline, style))
            except Exception as err:  # one family's failure (out of memory, say) leaves the other's numbers
                traceback.print_exc()
                results.append(FamilyResult(family, notes=[f"failed: {type(err).__name__}: {str(err)[:200]}"]))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"{family}: done at {time.perf_counter() - begin:.0f} s", file=sys.stderr)
    text = report(results, args, device, dtype, skipped)
    text += f"\nwhole run: {time.perf_counter() - begin:.0f} s\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps([vars(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
