#!/usr/bin/env python
"""What a style costs: plain SDXL (a) vs diffusers' own IP-Adapter recipe (b) vs instantstyle (c).

    python benchmarks/bench.py           # CPU mode: 256 px, 2 steps, 3 prompts, smaller encoders (5-15 min, 16 GB RAM)
    python benchmarks/bench.py --gpu     # GPU mode: 1024 px, 30 steps, 5 prompts, real-size encoders, fp16

Offline: the models are random-weight SDXL components built from the public SDXL base configs
(written below as data), saved once under ``--workdir`` in fp16 and loaded back by each run, so model
loading is measured through the real loaders. Each of (a), (b), (c) runs in its own subprocess (peak
memory must not leak between them) with the same prompts, seed, size and steps:

(a) ``StableDiffusionXLPipeline`` without any adapter;
(b) ``load_ip_adapter`` + ``set_ip_adapter_scale`` with the InstantStyle block dict, the style image
    passed on every call (the recipe in diffusers' docs; its image encoder stays resident);
(c) ``instantstyle.StylePipeline`` with the same blocks, ``--low-memory`` (encoder off the device
    between encodes) and its embedding cache.

Peak memory is the process RSS high-water mark on the CPU (reset with /proc/self/clear_refs) and
``max_memory_allocated`` on CUDA; "while denoising" is the peak over images 2..N, when the style is known.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a clean clone

import torch  # noqa: E402

# --- public SDXL base 1.0 configs (stabilityai/stable-diffusion-xl-base-1.0, h94/IP-Adapter) -------
UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=1024, scaling_factor=0.13025, force_upcast=True,
)
TEXT_ENCODER = dict(  # CLIP ViT-L/14 text
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
)
TEXT_ENCODER_2 = dict(  # OpenCLIP ViT-bigG/14 text
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, vocab_size=49408, projection_dim=1280, hidden_act="gelu",
)
IMAGE_ENCODER = dict(  # h94/IP-Adapter sdxl_models/image_encoder: OpenCLIP ViT-bigG/14 vision
    hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16, patch_size=14,
    image_size=224, projection_dim=1280, hidden_act="gelu", layer_norm_eps=1e-5,
)
SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1,
    timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear",
)
SMALL_DEPTH = {"text_encoder_2": 4, "image_encoder": 6}  # --encoders small: same widths, fewer layers

#: diffusers' ``set_ip_adapter_scale`` dicts for the InstantStyle presets.
DIFFUSERS_SCALES = {
    "style": {"up": {"block_0": [0.0, 1.0, 0.0]}},
    "style+layout": {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}},
}
PROMPTS = ["a lighthouse on a cliff", "a cat reading a book", "a city street at night", "a bowl of fruit",
           "a mountain lake at dawn", "a robot playing violin", "an old sailing ship", "a cup of coffee"]
CONFIGS = {"a": "plain SDXL", "b": "diffusers IP-Adapter", "c": "instantstyle"}
GiB = 2**30


# --- building the random-weight model tree ----------------------------------------------------------
def build_models(workdir: Path, encoders: str) -> Path:
    """``workdir/sdxl-random-<encoders>``: a diffusers SDXL folder plus an h94-layout IP-Adapter folder."""
    tree = workdir / f"sdxl-random-{encoders}"
    if (tree / ".complete").is_file():
        return tree
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from instantstyle.testing.fixtures import _global_adapter, _make_tokenizer, make_style_image

    print(f"building random-weight SDXL ({encoders} encoders) in {tree} (once; a few minutes)", file=sys.stderr)
    torch.manual_seed(0)
    small = encoders == "small"
    tokenizer, tokenizer_2 = _make_tokenizer(), _make_tokenizer(pad_token="!")

    def text_config(base: dict[str, Any], tok: Any, depth: int | None) -> CLIPTextConfig:
        layers = {"num_hidden_layers": depth} if depth else {}
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return CLIPTextConfig(**{**base, **layers, **ids})

    torch.set_default_dtype(torch.float16)  # initialise straight in fp16: half the memory and disk
    try:
        unet = UNet2DConditionModel(**UNET)
        adapter = _global_adapter(unet, IMAGE_ENCODER["projection_dim"], seed=0)
        pipe = StableDiffusionXLPipeline(
            vae=AutoencoderKL(**VAE),
            text_encoder=CLIPTextModel(text_config(TEXT_ENCODER, tokenizer, None)),
            text_encoder_2=CLIPTextModelWithProjection(
                text_config(TEXT_ENCODER_2, tokenizer_2, SMALL_DEPTH["text_encoder_2"] if small else None)
            ),
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
            scheduler=EulerDiscreteScheduler(**SCHEDULER),
        )
        tmp = tree.with_name(tree.name + ".tmp")
        pipe.save_pretrained(str(tmp / "sdxl"))
        del pipe, unet
        folder = tmp / "IP-Adapter" / "sdxl_models"
        folder.mkdir(parents=True)
        from safetensors.torch import save_file

        save_file({k: v.half().contiguous() for k, v in adapter.items()}, str(folder / "ip-adapter_sdxl.safetensors"))
        del adapter
        vision = dict(IMAGE_ENCODER, num_hidden_layers=SMALL_DEPTH["image_encoder"]) if small else IMAGE_ENCODER
        CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).save_pretrained(str(folder / "image_encoder"))
    finally:
        torch.set_default_dtype(torch.float32)
    make_style_image(tmp / "style.png", size=(512, 512), seed=3)
    (tmp / ".complete").write_text("ok\n")
    tmp.rename(tree)
    return tree


# --- measuring ----------------------------------------------------------------------------------------
class PeakMemory:
    """Peak RSS (CPU, via /proc/self/clear_refs + VmHWM) or peak allocated bytes (CUDA) since ``reset``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/self/status")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(config: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load one contestant, make N images of N prompts in one style, report times and memory."""
    from PIL import Image

    from instantstyle.adapter import adapter_parameter_count, file_parameter_count, read_adapter

    device = torch.device(args.device)
    dtype = torch.float16 if args.gpu else torch.float32
    tree = Path(args.tree)
    model, adapters = tree / "sdxl", tree / "IP-Adapter"
    adapter_file = adapters / "sdxl_models" / "ip-adapter_sdxl.safetensors"
    style = tree / "style.png"
    peak = PeakMemory(device)
    encoder_runs: list[int] = []
    common = dict(steps=args.steps, width=args.size, height=args.size, seed=args.seed, guidance=args.guidance)

    start = time.perf_counter()
    if config == "c":
        from instantstyle import StylePipeline

        style_pipe = StylePipeline.from_pretrained(
            str(model), str(adapter_file), device=str(device), dtype=str(dtype).removeprefix("torch."),
            blocks=args.blocks, low_memory=not args.no_low_memory,
        )
        pipe = style_pipe.pipe
        style_pipe.image_encoder.model.register_forward_hook(lambda *_: encoder_runs.append(1))

        def generate(prompt: str) -> Image.Image:
            return style_pipe(prompt=prompt, style=str(style), blocks=args.blocks, **common).images[0]
    else:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(str(model), dtype=dtype)
        if config == "b":
            pipe.load_ip_adapter(str(adapters), subfolder="sdxl_models", weight_name=adapter_file.name)
            pipe.set_ip_adapter_scale(DIFFUSERS_SCALES[args.blocks])
            pipe.image_encoder.register_forward_hook(lambda *_: encoder_runs.append(1))
        pipe.to(device)
        style_image = Image.open(style).convert("RGB")

        def generate(prompt: str) -> Image.Image:
            kwargs: dict[str, Any] = dict(
                prompt=prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, width=args.size,
                height=args.size, generator=torch.Generator("cpu").manual_seed(args.seed),
            )
            if config == "b":
                kwargs["ip_adapter_image"] = style_image
            return pipe(**kwargs).images[0]

    pipe.set_progress_bar_config(disable=True)
    sync(device)
    load_s = time.perf_counter() - start
    peaks = [peak.read()]  # loading
    times = []
    out = Path(args.workdir) / "images"
    out.mkdir(parents=True, exist_ok=True)
    cpu_times = []
    for i, prompt in enumerate(PROMPTS[: args.prompts]):
        peak.reset()
        start, cpu_start = time.perf_counter(), time.process_time()
        image = generate(prompt)
        sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        peaks.append(peak.read())
        image.save(out / f"{config}-{i}.png")
    has_adapter = pipe.unet.encoder_hid_proj is not None
    return {
        "config": config,
        "load_s": load_s,
        "first_s": times[0],
        "per_image_s": min(times[1:]),  # the fastest: the machine's other load only ever adds time
        "per_image_mean_s": statistics.mean(times[1:]),
        "total_s": sum(times),
        "per_image_cpu_s": min(cpu_times[1:]),  # CPU seconds of this process: what other jobs cannot inflate
        "peak_all": max(peaks),
        "peak_denoise": max(peaks[2:]) if len(peaks) > 2 else peaks[-1],
        "adapter_params": adapter_parameter_count(pipe.unet) if has_adapter else 0,
        "file_params": file_parameter_count(read_adapter(adapter_file)),
        "encoder_runs": len(encoder_runs),
    }


# --- the table --------------------------------------------------------------------------------------------
def device_name(args: argparse.Namespace) -> str:
    if args.device.startswith("cuda"):
        return f"GPU: {torch.cuda.get_device_name(torch.device(args.device))}, fp16"
    model = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"CPU: {model}, {torch.get_num_threads()} threads, fp32"


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    a, b, c = (results[k] for k in "abc")

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.3f}" if y else "-"

    def gib(v: int) -> str:
        return f"{v / GiB:.2f} GiB"

    def params(r: dict[str, Any]) -> str:
        return f"{r['adapter_params'] / 1e6:.1f} M ({100 * r['adapter_params'] / r['file_params']:.1f}%)"

    n = args.prompts
    rows = [
        ("model load", *(f"{r['load_s']:.1f} s" for r in (a, b, c)), ratio(c["load_s"], a["load_s"]),
         ratio(c["load_s"], b["load_s"])),
        ("first image (encodes the style)", *(f"{r['first_s']:.1f} s" for r in (a, b, c)),
         ratio(c["first_s"], a["first_s"]), ratio(c["first_s"], b["first_s"])),
        (f"per image, fastest of images 2..{n}", *(f"{r['per_image_s']:.2f} s" for r in (a, b, c)),
         ratio(c["per_image_s"], a["per_image_s"]), ratio(c["per_image_s"], b["per_image_s"])),
        (f"per image, process CPU time, fastest of 2..{n}", *(f"{r['per_image_cpu_s']:.2f} s" for r in (a, b, c)),
         ratio(c["per_image_cpu_s"], a["per_image_cpu_s"]), ratio(c["per_image_cpu_s"], b["per_image_cpu_s"])),
        (f"{n} prompts, one style", *(f"{r['total_s']:.1f} s" for r in (a, b, c)),
         ratio(c["total_s"], a["total_s"]), ratio(c["total_s"], b["total_s"])),
        ("peak memory, whole run", *(gib(r["peak_all"]) for r in (a, b, c)), ratio(c["peak_all"], a["peak_all"]),
         ratio(c["peak_all"], b["peak_all"])),
        (f"peak memory while denoising (images 2..{n})", *(gib(r["peak_denoise"]) for r in (a, b, c)),
         ratio(c["peak_denoise"], a["peak_denoise"]), ratio(c["peak_denoise"], b["peak_denoise"])),
        ("adapter parameters resident (% of file)", "-", params(b), params(c), "-",
         ratio(c["adapter_params"], b["adapter_params"])),
        ("image encoder runs", *(str(r["encoder_runs"]) for r in (a, b, c)), "-", "-"),
    ]
    head = ("", "(a) plain SDXL", "(b) diffusers IP-Adapter", "(c) instantstyle", "c/a", "c/b")
    lines = [
        f"Device: {device_name(args)}; {args.size}x{args.size} px, {args.steps} steps, guidance {args.guidance}, "
        f"blocks {args.blocks}, {n} prompts, seed {args.seed}; encoders: {args.encoders}"
        + ("" if args.no_low_memory else "; (c) with --low-memory"),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="GPU mode: cuda, fp16, 1024 px, 30 steps, 5 prompts, "
                        "real-size encoders")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda with --gpu, else cpu)")
    parser.add_argument("--size", type=int, default=None, help="image side in px (CPU 256, GPU 1024)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (CPU 2, GPU 30)")
    parser.add_argument("--prompts", type=int, default=None, help="N prompts sharing one style (CPU 3, GPU 5)")
    parser.add_argument("--encoders", choices=["full", "small"], default=None,
                        help="real-size text_encoder_2 and ViT-bigG image encoder, or the same widths with "
                        f"{SMALL_DEPTH} layers (default: full on GPU, small on CPU)")
    parser.add_argument("--blocks", choices=sorted(DIFFUSERS_SCALES), default="style")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-low-memory", action="store_true", help="run (c) with the encoder resident")
    parser.add_argument("--only", default="abc", help="contestants to run, e.g. ac")
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/instantstyle-bench"),
                        help="where the random-weight models (about 11 GB full, 7 GB small) and images go")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # child process: one contestant
    parser.add_argument("--tree", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = args.device or ("cuda" if args.gpu else "cpu")
    args.size = args.size or (1024 if args.gpu else 256)
    args.steps = args.steps or (30 if args.gpu else 2)
    args.prompts = args.prompts or (5 if args.gpu else 3)
    args.encoders = args.encoders or ("full" if args.gpu else "small")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --gpu / --device cuda asked for, but no CUDA GPU is available")
    if args.prompts < 2:
        sys.exit("error: --prompts must be at least 2 (images 2..N are the steady state)")

    if args.run:
        print("RESULT " + json.dumps(run_config(args.run, args)), flush=True)
        return
    workdir = Path(args.workdir).expanduser()
    tree = build_models(workdir, args.encoders)
    results: dict[str, dict[str, Any]] = {}
    passthrough = list(sys.argv[1:])
    # The same allocator for all three: glibc's default mmap threshold, fixed (instantstyle's --low-memory
    # pins it on the CPU by itself; without this (a) and (b) would be measured with a different malloc).
    child_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    for config in "abc":
        if config not in args.only:
            continue
        print(f"running ({config}) {CONFIGS[config]} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, *passthrough, "--run", config, "--tree", str(tree), "--workdir", str(workdir)],
            capture_output=True, text=True, env=child_env,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"error: ({config}) failed:\n{proc.stderr[-3000:]}")
        results[config] = json.loads(lines[-1].removeprefix("RESULT "))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if set(results) == set("abc"):
        print(table(results, args))
    else:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
