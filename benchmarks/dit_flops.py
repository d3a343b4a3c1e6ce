#!/usr/bin/env python
"""Exact cost on the diffusion transformers: SD3.5 Large + InstantX's adapter, FLUX.1-dev + XLabs' adapter.

    python benchmarks/dit_flops.py                 # 512 and 1024 px (about a minute, no memory)
    python benchmarks/dit_flops.py --sizes 1024

The full-size transformers are built on the meta device from their public configs and counted with
``torch.utils.flop_counter.FlopCounterMode`` (multiply-add = 2 FLOPs). The adapters go in through the real
code with state dicts of the published files' keys and shapes (meta tensors): diffusers' ``load_ip_adapter``
plus per-layer scales for (b), instantstyle's ``attach_adapters`` (the family's loader, then pruning) for (c).
One step: SD3 one transformer forward of batch 2 (CFG); FLUX one forward of batch 1 (guidance-distilled), two
with true CFG. No block of either model is measured to carry style, so the rows are ``all`` and one block
(``transformer_blocks.9``) as an example of a targeted spec.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import common  # noqa: F401  (sets the environment and the import path first)
import torch
from common import md_table
from torch.utils.flop_counter import FlopCounterMode

G = 1e9
#: stabilityai/stable-diffusion-3.5-large transformer/config.json.
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                  num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")
#: black-forest-labs/FLUX.1-dev transformer/config.json.
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
#: InstantX/SD3.5-Large-IP-Adapter as diffusers reads ip-adapter.bin; google/siglip-so400m-patch14-384's features.
INSTANTX = dict(embed_dim=1152, output_dim=2432, hidden_dim=1280, heads=20, num_queries=64, timestep_in_dim=320)
SIGLIP_TOKENS, SIGLIP_WIDTH = 729, 1152
CLIP_L_PROJ = 768  # openai/clip-vit-large-patch14 image_embeds, XLabs' input
XLABS_TOKENS = {"v1": 4, "v2": 16}
SD3_TEXT_TOKENS = 77 + 256  # CLIP-L/bigG (77) and T5-XXL (256) tokens side by side
FLUX_TEXT_TOKENS = 512
ONE_BLOCK = "transformer_blocks.9"


def _meta(fn: Callable[[], Any]) -> Any:
    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        return fn()


@contextlib.contextmanager
def _sdpa_layout_like_cpu() -> Iterator[None]:
    """The meta kernel of SDPA returns a contiguous (B, H, L, D) output where the CPU and CUDA kernels keep the
    query's layout; diffusers' SD3 IP processor ``.view``s the result, which needs the latter (FLOPs unchanged)."""
    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(query: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = original(query, *args, **kwargs)
        if out.is_meta and out.dim() == 4:
            out = out.transpose(1, 2).contiguous().transpose(1, 2)
        return out

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def count(fn: Callable[[], Any]) -> int:
    counter = FlopCounterMode(display=False)
    with _sdpa_layout_like_cpu(), counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


# --- pipelines and adapters on the meta device ----------------------------------------------------------
def sd3_pipeline() -> Any:
    """A ``StableDiffusion3Pipeline`` holding only a meta-device SD3.5 Large transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = _meta(lambda: SD3Transformer2DModel(**SD35_LARGE))
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
                                    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)


def flux_pipeline() -> Any:
    """A ``FluxPipeline`` holding only a meta-device FLUX.1-dev transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer = _meta(lambda: FluxTransformer2DModel(**FLUX_DEV))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def instantx_state() -> dict[str, dict[str, torch.Tensor]]:
    """InstantX's ip-adapter.bin layout (resampler under its original key names, one processor per block)."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    from instantstyle.testing.dit import _instantx_resampler_keys

    resampler = _meta(lambda: IPAdapterTimeImageProjection(**INSTANTX))
    width, head = SD35_LARGE["num_attention_heads"] * SD35_LARGE["attention_head_dim"], SD35_LARGE["attention_head_dim"]
    layer = _meta(lambda: SD3IPAdapterJointAttnProcessor2_0(width, width, head, INSTANTX["hidden_dim"])).state_dict()
    layers = {f"{i}.{k}": v for i in range(SD35_LARGE["num_layers"]) for k, v in layer.items()}
    return {"image_proj": _instantx_resampler_keys(resampler.state_dict()), "ip_adapter": layers}


def xlabs_state(version: str) -> dict[str, dict[str, torch.Tensor]]:
    """An XLabs flux-ip-adapter file in diffusers' names (as ``families.flux.read_xlabs`` reads it)."""
    tokens, text = XLABS_TOKENS[version], FLUX_DEV["joint_attention_dim"]
    inner = FLUX_DEV["num_attention_heads"] * FLUX_DEV["attention_head_dim"]

    def make() -> dict[str, dict[str, torch.Tensor]]:
        proj = {"proj.weight": torch.empty(tokens * text, CLIP_L_PROJ), "proj.bias": torch.empty(tokens * text),
                "norm.weight": torch.empty(text), "norm.bias": torch.empty(text)}
        layers = {f"{i}.{kind}_ip.{p}": torch.empty(inner, text) if p == "weight" else torch.empty(inner)
                  for i in range(FLUX_DEV["num_layers"]) for kind in ("to_k", "to_v") for p in ("weight", "bias")}
        return {"image_proj": proj, "ip_adapter": layers}

    return _meta(make)  # type: ignore[no-any-return]


def attach(pipe: Any, family_name: str, state: dict[str, dict[str, torch.Tensor]], contestant: str,
           spec: str) -> None:
    """(b) diffusers: its own ``load_ip_adapter`` into every block, the spec's blocks at scale 1 and the others
    at 0; (c) instantstyle: the family's loader, then every layer outside the spec loses its adapter weights."""
    from instantstyle.core import adapter as adapters
    from instantstyle.core.blocks import Slot, resolve_blocks
    from instantstyle.core.processors import set_slots
    from instantstyle.families import family_named

    family = family_named(family_name)
    transformer = family.denoiser_of(pipe)
    layers = family.layers(transformer)
    scales = resolve_blocks(spec, layers, family)
    if contestant == "b":
        with contextlib.redirect_stderr(io.StringIO()):
            if family_name == "sd3":
                pipe.load_ip_adapter(state, image_encoder_folder=None)
            else:
                pipe.load_ip_adapter([state], weight_name=[""], image_encoder_pretrained_model_name_or_path=None)
    else:
        proj = state["image_proj"]
        kind = "plus" if "latents" in proj else "global"
        embed = proj["proj_in.weight" if kind == "plus" else "proj.weight"].shape[1]
        width = proj["proj_out.weight"].shape[0] if kind == "plus" else proj["norm.weight"].shape[0]
        weights = adapters.AdapterWeights("<meta>", kind, embed, width, len(layers), state)  # type: ignore[arg-type]
        adapters.attach_adapters(pipe, family, [weights], [set(scales)])
    set_slots(transformer, family, [Slot(0, scales)])  # SD3: each processor's float; FLUX: its slots'


def sd3_step(pipe: Any, px: int, with_image: bool) -> int:
    """One CFG step of SD3: a transformer forward of batch 2 at ``px``."""
    transformer, lat = pipe.transformer, px // 8

    def make() -> dict[str, Any]:
        return dict(hidden_states=torch.empty(2, 16, lat, lat),
                    encoder_hidden_states=torch.empty(2, SD3_TEXT_TOKENS, 4096),
                    pooled_projections=torch.empty(2, 2048), timestep=torch.full((2,), 500.0))

    inputs = _meta(make)
    embeds = _meta(lambda: torch.empty(2, SIGLIP_TOKENS, SIGLIP_WIDTH))
    kwargs = {"joint_attention_kwargs": {"ip_adapter_image_embeds": embeds}} if with_image else {}
    return count(lambda: transformer(**inputs, **kwargs))


def flux_step(pipe: Any, px: int, with_image: bool, forwards: int) -> int:
    """One FLUX step: ``forwards`` transformer forwards of batch 1 at ``px`` (2 with true CFG)."""
    transformer, seq = pipe.transformer, (px // 16) ** 2

    def make() -> dict[str, Any]:
        return dict(hidden_states=torch.empty(1, seq, 64),
                    encoder_hidden_states=torch.empty(1, FLUX_TEXT_TOKENS, 4096),
                    pooled_projections=torch.empty(1, 768), timestep=torch.full((1,), 0.5),
                    guidance=torch.full((1,), 3.5), txt_ids=torch.zeros(FLUX_TEXT_TOKENS, 3),
                    img_ids=torch.zeros(seq, 3))

    inputs = _meta(make)
    embeds = _meta(lambda: torch.empty(1, 1, CLIP_L_PROJ))

    def run() -> None:
        for _ in range(forwards):
            extra = {"joint_attention_kwargs": {"ip_adapter_image_embeds": [embeds]}} if with_image else {}
            transformer(**inputs, **extra)

    return count(run)


def resident(pipe: Any, family_name: str) -> int:
    from instantstyle.core.processors import adapter_parameter_count
    from instantstyle.families import family_named

    return adapter_parameter_count(family_named(family_name).denoiser_of(pipe))


def pct(x: int, base: int) -> str:
    return f"{100 * (x - base) / base:+.3f}%"


def sd3_table(sizes: Sequence[int]) -> tuple[str, str]:
    plain = sd3_pipeline()
    contestants = {}
    for who in "bc":
        for spec in ("all", ONE_BLOCK):
            pipe = sd3_pipeline()
            attach(pipe, "sd3", instantx_state(), who, spec)
            contestants[who, spec] = pipe
    rows = []
    for px in sizes:
        base = sd3_step(plain, px, False)
        cells = [f"{base / G:,.1f}"]
        for spec in ("all", ONE_BLOCK):
            b, c = (sd3_step(contestants[who, spec], px, True) for who in "bc")
            differs = "" if b == c else f"; (b) {b / G:,.1f} ({pct(b, base)})"
            cells.append(f"{c / G:,.1f} ({pct(c, base)}){differs}")
        rows.append([px, *cells])
    steps = md_table(["px", "(a) plain GFLOPs", "all: (c) (vs a)", f"{ONE_BLOCK}: (c) (vs a)"], rows)
    file_params = resident(contestants["b", "all"], "sd3")
    one = resident(contestants["c", ONE_BLOCK], "sd3")
    memory = md_table(["resident adapter weights (SD3.5 + InstantX)", "parameters", "bf16"], [
        ["(b) diffusers, any scales / (c) all", f"{file_params / 1e6:,.1f} M", f"{file_params * 2 / 2**20:,.0f} MiB"],
        [f"(c) {ONE_BLOCK}", f"{one / 1e6:,.1f} M", f"{one * 2 / 2**20:,.0f} MiB"],
    ])
    return steps, memory


def flux_table(sizes: Sequence[int]) -> tuple[str, str]:
    plain = flux_pipeline()
    rows, memory_rows = [], []
    for version in ("v1", "v2"):
        contestants = {}
        for who in "bc":
            for spec in ("all", ONE_BLOCK):
                pipe = flux_pipeline()
                attach(pipe, "flux", xlabs_state(version), who, spec)
                contestants[who, spec] = pipe
        for forwards in (1, 2):
            for px in sizes:
                base = flux_step(plain, px, False, forwards)
                cells = [f"{base / G:,.1f}"]
                for spec in ("all", ONE_BLOCK):
                    b, c = (flux_step(contestants[who, spec], px, True, forwards) for who in "bc")
                    cells.append(f"{c / G:,.1f} ({pct(c, base)})"
                                 + ("" if b == c else f"; (b) {b / G:,.1f} ({pct(b, base)})"))
                rows.append([f"XLabs {version}", "true CFG (2 forwards)" if forwards == 2 else "distilled (1 forward)",
                             px, *cells])
        file_params = resident(contestants["b", "all"], "flux")
        one = resident(contestants["c", ONE_BLOCK], "flux")
        memory_rows += [[f"XLabs {version}: (b) diffusers / (c) all", f"{file_params / 1e6:,.1f} M",
                         f"{file_params * 2 / 2**20:,.0f} MiB"],
                        [f"XLabs {version}: (c) {ONE_BLOCK}", f"{one / 1e6:,.1f} M", f"{one * 2 / 2**20:,.0f} MiB"]]
    steps = md_table(["adapter", "guidance", "px", "(a) plain GFLOPs (same forwards)", "all: (c) (vs a)",
                      f"{ONE_BLOCK}: (c) (vs a)"], rows)
    memory = md_table(["resident adapter weights (FLUX.1-dev + XLabs)", "parameters", "bf16"], memory_rows)
    return steps, memory


def report(sizes: Sequence[int] = (512, 1024)) -> str:
    """The DiT part of the FLOP section."""
    sd3_steps, sd3_memory = sd3_table(sizes)
    flux_steps, flux_memory = flux_table(sizes)
    return "\n".join([
        "### Exact cost on SD3.5 Large and FLUX.1-dev (FLOPs, any machine)",
        "",
        "Full-size transformers from their public configs on the meta device, adapters in the published layouts "
        "through the real loaders. SD3.5: one CFG step = one transformer forward of batch 2 (text tokens 77 + "
        f"256, {SIGLIP_TOKENS} SigLIP patches). FLUX.1-dev: one forward of batch 1 ({FLUX_TEXT_TOKENS} T5 tokens), "
        "two with true CFG. A cell names (b), diffusers' recipe with the same per-layer scales, where it differs "
        "from (c) instantstyle: diffusers' FLUX processor computes the image attention of a block at scale 0 "
        "and multiplies it by 0; instantstyle drops those blocks' weights and skips them.",
        "",
        sd3_steps,
        "",
        flux_steps,
        "",
        sd3_memory,
        "",
        flux_memory,
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024", help="image sides in px, comma-separated")
    args = parser.parse_args(argv)
    print(report([int(s) for s in args.sizes.split(",")]))


if __name__ == "__main__":
    main()
