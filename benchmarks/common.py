"""What every part of the benchmark shares: the SDXL topology (public configs written as data), the
random-weight model tree, the contestants, thread pinning, timers, statistics and markdown.

The contestants, run on the same prompts, seed, size and steps:

(a) ``StableDiffusionXLPipeline`` without any adapter (``a2``: a second copy of it, for the noise floor);
(b) diffusers' own IP-Adapter recipe: ``load_ip_adapter`` + ``set_ip_adapter_scale`` with the InstantStyle
    block dict, the style image passed on every call (its image encoder stays resident);
(c) ``instantstyle.StylePipeline`` with the same blocks and ``low_memory`` (encoder off the device between
    encodes), its embedding cache and its pruned adapter.

and, for the memory table only, (c) with its defaults (``c-default``), with ``--offload model`` (``c-offload``)
and with ``--memory-budget`` (``c-budget``). Every contestant reports the peak memory of each phase of an image
(``PHASES``): instantstyle tells them itself (``StylePipeline.on_phase``), diffusers' are seen from the first
forward of the model each phase runs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a clean clone, without installing

import torch  # noqa: E402

GiB = 2**30

# --- public SDXL base 1.0 configs (stabilityai/stable-diffusion-xl-base-1.0, h94/IP-Adapter) -------
UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
#: diffusers/controlnet-canny-sdxl-1.0: the UNet's encoder half plus the control image embedding.
CONTROLNET_EXTRA = dict(conditioning_channels=3, conditioning_embedding_out_channels=(16, 32, 96, 256))
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


@dataclass(frozen=True)
class Topology:
    """The model configs a benchmark run builds: ``full`` (SDXL base + h94's ViT-bigG), ``small`` (the same
    widths, fewer encoder layers: fits a 24 GB CPU machine) or ``smoke`` (tiny, real layer structure)."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    image_encoder: dict[str, Any]
    controlnet: dict[str, Any] = field(default_factory=lambda: dict(CONTROLNET_EXTRA))

    @property
    def embed_dim(self) -> int:
        """The image embedding width the global adapter takes (the encoder's projection)."""
        return int(self.image_encoder["projection_dim"])


FULL = Topology("full", UNET, VAE, TEXT_ENCODER, TEXT_ENCODER_2, IMAGE_ENCODER)
SMALL = replace(
    FULL, name="small", text_encoder_2={**TEXT_ENCODER_2, "num_hidden_layers": 4},
    image_encoder={**IMAGE_ENCODER, "num_hidden_layers": 6},
)
SMOKE = Topology(  # every code path of the full run in seconds: SDXL's block structure, tiny widths
    "smoke",
    unet={**UNET, "sample_size": 8, "block_out_channels": (32, 64, 128), "transformer_layers_per_block": (1, 2, 2),
          "attention_head_dim": (2, 4, 8), "cross_attention_dim": 96, "addition_time_embed_dim": 8,
          "projection_class_embeddings_input_dim": 6 * 8 + 32},
    vae={**VAE, "block_out_channels": (8, 16, 16, 16), "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64},
    text_encoder={**TEXT_ENCODER, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "projection_dim": 32},
    text_encoder_2={**TEXT_ENCODER_2, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "projection_dim": 32},
    image_encoder={**IMAGE_ENCODER, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "patch_size": 32, "projection_dim": 32},
    controlnet={**CONTROLNET_EXTRA, "conditioning_embedding_out_channels": (8, 8, 16, 16)},
)
TOPOLOGIES = {t.name: t for t in (FULL, SMALL, SMOKE)}

#: InstantStyle's SDXL presets (``instantstyle.core.blocks``), as diffusers' ``set_ip_adapter_scale`` takes them.
DIFFUSERS_SCALES: dict[str, Any] = {
    "style": {"up": {"block_0": [0.0, 1.0, 0.0]}},
    "layout": {"down": {"block_2": [0.0, 1.0]}},
    "style+layout": {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}},
    "all": 1.0,
}
PRESETS = tuple(DIFFUSERS_SCALES)
PROMPTS = ["a lighthouse on a cliff", "a cat reading a book", "a city street at night", "a bowl of fruit",
           "a mountain lake at dawn", "a robot playing violin", "an old sailing ship", "a cup of coffee"]
LABELS = {"a": "(a) plain SDXL", "a2": "(a') plain SDXL, 2nd copy", "b": "(b) diffusers IP-Adapter",
          "c": "(c) instantstyle", "c-default": "(c) instantstyle, defaults",
          "c-offload": "(c) instantstyle, --offload model", "c-budget": "(c) instantstyle, --memory-budget"}
#: The phases of an image whose peaks are reported; ``setup`` is what comes before the first (instantstyle's
#: request preparation, diffusers' input checks).
PHASES = ("setup", "text", "style", "denoise", "decode")
ADAPTER_NAME = "ip-adapter_sdxl.safetensors"


# --- the random-weight model tree ------------------------------------------------------------------
@dataclass(frozen=True)
class Tree:
    """A built model tree: a diffusers SDXL folder, an h94-layout IP-Adapter folder and a style image."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "sdxl"

    @property
    def adapters(self) -> Path:
        return self.root / "IP-Adapter"

    @property
    def adapter_file(self) -> Path:
        return self.adapters / "sdxl_models" / ADAPTER_NAME

    @property
    def style(self) -> Path:
        return self.root / "style.png"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tree_path(workdir: Path, topo: Topology, dtype: torch.dtype) -> Tree:
    return Tree(Path(workdir).expanduser() / f"sdxl-random-{topo.name}-{dtype_name(dtype)}")


def build_tree(workdir: Path, topo: Topology, dtype: torch.dtype, device: str = "cpu") -> Tree:
    """Build (once) random-weight SDXL components of ``topo`` saved at ``dtype``, initialised on ``device``
    (a GPU initialises 2.6 B parameters in seconds). Saved at the dtype the benchmark runs in, so loading is
    a memory map of the files: the workers of the paired timing share one copy of the weights."""
    tree = tree_path(workdir, topo, dtype)
    if (tree.root / ".complete").is_file():
        return tree
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection

    from instantstyle.testing.fixtures import _global_adapter, _make_tokenizer, make_style_image

    log(f"building random-weight SDXL ({topo.name}, {dtype_name(dtype)}) in {tree.root} (once)")
    start = time.perf_counter()
    torch.manual_seed(0)
    tokenizer, tokenizer_2 = _make_tokenizer(), _make_tokenizer(pad_token="!")
    text_config = clip_text_config

    tmp = tree.root.with_name(tree.root.name + ".tmp")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise straight at the saved dtype: no fp32 copy of 2.6 B parameters
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**topo.unet)
            pipe = StableDiffusionXLPipeline(
                vae=AutoencoderKL(**topo.vae),
                text_encoder=CLIPTextModel(text_config(topo.text_encoder, tokenizer)),
                text_encoder_2=CLIPTextModelWithProjection(text_config(topo.text_encoder_2, tokenizer_2)),
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                scheduler=EulerDiscreteScheduler(**SCHEDULER), add_watermarker=False,
            )
        pipe.to("cpu")
        pipe.save_pretrained(str(tmp / "sdxl"))
        del pipe
        torch.set_default_dtype(torch.float32)
        adapter = _global_adapter(unet, topo.embed_dim, seed=0)  # the real file's keys and shapes
        del unet
        folder = tmp / "IP-Adapter" / "sdxl_models"
        folder.mkdir(parents=True)
        save_file({k: v.to(dtype).contiguous() for k, v in adapter.items()}, str(folder / ADAPTER_NAME))
        del adapter
        torch.set_default_dtype(dtype)
        with torch.device(device):
            encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**topo.image_encoder))
        encoder.to("cpu").save_pretrained(str(folder / "image_encoder"))
        del encoder
    finally:
        torch.set_default_dtype(previous)
    make_style_image(tmp / "style.png", size=(512, 512), seed=3)
    (tmp / ".complete").write_text("ok\n")
    tmp.rename(tree.root)
    log(f"built in {time.perf_counter() - start:.0f} s")
    return tree


def clip_text_config(base: dict[str, Any], tokenizer: Any) -> Any:
    """A CLIP text config whose special-token ids are the tokenizer's."""
    from transformers import CLIPTextConfig

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    return CLIPTextConfig(**{**base, **ids})


# --- random-weight models built on the device, nothing written (the GPU modes of restyle.py and csgo.py) -------
#: SDXL's scheduler_config.json: the DDIM keys stay in the config (restyle inverts with a DDIM made from it, and
#: ``clip_sample`` / ``set_alpha_to_one`` decide DDIM's numbers); ``from_config`` keeps what Euler does not take.
SCHEDULER_FILE = {**SCHEDULER, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True,
                  "sample_max_value": 1.0, "use_karras_sigmas": False}


@contextmanager
def building(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Modules made inside are created on ``device`` in ``dtype`` (no float32 copy of a 2.6 B model first)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), torch.no_grad():
            yield
    finally:
        torch.set_default_dtype(before)


def sdxl_on_device(topo: Topology, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A ``StableDiffusionXLPipeline`` of ``topo`` with random weights, built directly on the device (seconds on a
    GPU; the tokenizers are the test fixtures', made in code)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from instantstyle.testing.fixtures import _make_tokenizer

    tokenizer, tokenizer_2 = _make_tokenizer(), _make_tokenizer(pad_token="!")
    torch.manual_seed(seed)
    with building(device, dtype):
        parts = dict(
            unet=UNet2DConditionModel(**topo.unet), vae=AutoencoderKL(**topo.vae),
            text_encoder=CLIPTextModel(clip_text_config(topo.text_encoder, tokenizer)),
            text_encoder_2=CLIPTextModelWithProjection(clip_text_config(topo.text_encoder_2, tokenizer_2)),
        )
    pipe = StableDiffusionXLPipeline(**{k: v.eval() for k, v in parts.items()}, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, scheduler=EulerDiscreteScheduler.from_config(
                                         SCHEDULER_FILE), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def controlnet_on_device(unet: Any, topo: Topology, device: torch.device, dtype: torch.dtype) -> Any:
    """A full SDXL ControlNet for ``unet`` (its encoder half and the conditioning embedding; the canny and tile
    ControlNets have this shape), random weights, on the device."""
    from diffusers import ControlNetModel

    with building(device, dtype):
        return ControlNetModel.from_unet(unet, load_weights_from_unet=False, **topo.controlnet).eval()


def image_encoder_on_device(topo: Topology, device: torch.device, dtype: torch.dtype) -> Any:
    """h94's SDXL image encoder (ViT-bigG at full size) with CLIP's preprocessing at its size, on the device."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from instantstyle.core.embeddings import ImageEncoder

    size = topo.image_encoder["image_size"]
    with building(device, dtype):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**topo.image_encoder)).eval()
    return ImageEncoder(model, CLIPImageProcessor(size=size, crop_size=size), f"<random {topo.name} image encoder>")


def write_global_adapter(unet: Any, topo: Topology, path: Path, dtype: torch.dtype, seed: int = 0) -> Path:
    """h94's SDXL IP-Adapter (global) for ``unet`` with random weights, written as the real file is (flat
    safetensors at ``dtype``), so instantstyle reads it, prunes it and reads it again as it does a downloaded one."""
    from safetensors.torch import save_file

    from instantstyle.testing.fixtures import _global_adapter

    state = _global_adapter(unet, topo.embed_dim, seed=seed)  # on the CPU: the fixture's seeded generator
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(path))
    return path


def style_pipeline_on(pipe: Any, adapter: Path, encoder: Any, device: torch.device, dtype: torch.dtype,
                      memory_budget: float | None = None) -> Any:
    """``StylePipeline`` on an already built pipeline, its adapter file attached as ``loading.loader.load`` attaches
    it (an IP-Adapter pruned to the family's default blocks, or a CSGO checkpoint), everything already on the device
    (with ``memory_budget``, GiB: placed as the loader places it under a budget: the text encoders and the image
    encoder off the device until they encode)."""
    import dataclasses

    from instantstyle import StylePipeline
    from instantstyle.core.adapter import attach_adapters, check_adapter_fits, read_adapter
    from instantstyle.core.blocks import resolve_blocks
    from instantstyle.core.csgo import CsgoAdapter, check_fits
    from instantstyle.core.styles import EmbeddingStore
    from instantstyle.families import family_named
    from instantstyle.loading import memory
    from instantstyle.loading.extras import Extras
    from instantstyle.loading.resources import Resources
    from instantstyle.loading.runtime import Runtime

    family = family_named("sdxl")
    unet = pipe.unet
    weights = read_adapter(adapter)
    rest, csgo = None, None
    if weights.kind == "csgo":
        check_fits(weights, family, unet, str(adapter))
        csgo = CsgoAdapter.attach(unet, weights, content=False)
        for projection in csgo.resident():
            projection.to(device)
    else:
        check_adapter_fits(weights, family, unet)
        rest = frozenset(resolve_blocks(None, family.layers(unet), family))
        attach_adapters(pipe, family, [weights], [set(rest)])
    runtime = Runtime(device=device.type, dtype=dtype_name(dtype), memory_budget=memory_budget)
    budget = None
    if memory_budget is not None:
        memory.check_budget(memory_budget, [unet, pipe.vae, *(csgo.resident() if csgo else ())])
        budget = memory.Budget(device, int(memory_budget * GiB), residents=[unet])
        budget.park([getattr(pipe, name) for name in memory.text_encoder_names(pipe)])
        memory.release_encoder(encoder, device)
    low_memory = memory_budget is not None
    store = EmbeddingStore(device, dtype, low_memory, make_room=budget.make_room if budget is not None else None)
    return StylePipeline(Resources(
        pipe, family, dataclasses.replace(weights, state_dict={}), encoder, f"<random SDXL, {device.type}>", runtime,
        device, dtype, low_memory, store, Extras(device, dtype), budget, adapter_ref=str(adapter), rest=rest,
        scheduler=pipe.scheduler, csgo=csgo))


# --- the contestants -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """What one benchmark run makes and how: the same for every contestant."""

    tree: str
    device: str
    dtype: str
    size: int
    steps: int
    guidance: float = 5.0
    seed: int = 7
    preset: str = "style"
    topology: str = "full"
    threads: int = 0  # 0: every CPU this process may use
    cpus: tuple[int, ...] = ()  # () : the CPUs this process may use now
    memory_budget: float = 8.0  # GiB, for the ``c-budget`` contestant

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data = json.loads(text)
        data["cpus"] = tuple(data.get("cpus", ()))
        return cls(**data)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass
class Contestant:
    """A loaded contestant: ``generate(prompt)`` makes one image; ``pipe`` is its diffusers pipeline."""

    name: str
    generate: Callable[[str], Any]
    pipe: Any


def count_encoder_runs() -> list[int]:
    """Count CLIP image encoder forwards in this process, wherever the encoder lives (a class-level wrapper:
    no per-module hook on the timed path)."""
    from transformers import CLIPVisionModelWithProjection

    runs: list[int] = []
    forward = CLIPVisionModelWithProjection.forward

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return forward(self, *args, **kwargs)

    CLIPVisionModelWithProjection.forward = counted  # type: ignore[method-assign]
    return runs


#: How each instantstyle contestant is loaded (``Runtime`` fields); ``c-budget`` adds the spec's budget.
C_OPTIONS: dict[str, dict[str, Any]] = {
    "c": {"low_memory": True}, "c-default": {}, "c-offload": {"low_memory": True, "offload": "model"},
    "c-budget": {},
}


def load_contestant(name: str, spec: RunSpec, on_phase: Callable[[str], None] | None = None) -> Contestant:
    """Load one contestant the way its users would, through its real loader; ``on_phase`` is told where each
    phase of an image begins (``PHASES``)."""
    from PIL import Image

    tree = Tree(Path(spec.tree))
    dtype = spec.torch_dtype
    common = dict(steps=spec.steps, width=spec.size, height=spec.size, seed=spec.seed, guidance=spec.guidance)
    if name.startswith("c"):
        from instantstyle import StylePipeline

        options = {**C_OPTIONS[name], **({"memory_budget": spec.memory_budget} if name == "c-budget" else {})}
        style_pipe = StylePipeline.from_pretrained(
            str(tree.model), str(tree.adapter_file), device=spec.device, dtype=spec.dtype, blocks=spec.preset,
            **options,
        )
        style_pipe.on_phase = on_phase

        def generate_c(prompt: str) -> Any:
            return style_pipe(prompt=prompt, style=str(tree.style), blocks=spec.preset, **common).images[0]

        style_pipe.pipe.set_progress_bar_config(disable=True)
        return Contestant(name, generate_c, style_pipe.pipe)

    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tree.model), dtype=dtype)
    if name == "b":
        pipe.load_ip_adapter(str(tree.adapters), subfolder="sdxl_models", weight_name=ADAPTER_NAME)
        pipe.set_ip_adapter_scale(DIFFUSERS_SCALES[spec.preset])
    pipe.to(spec.device)
    pipe.set_progress_bar_config(disable=True)
    if on_phase is not None:
        watch_phases(pipe, on_phase)
    style_image = Image.open(tree.style).convert("RGB")

    def generate(prompt: str) -> Any:
        kwargs: dict[str, Any] = dict(
            prompt=prompt, num_inference_steps=spec.steps, guidance_scale=spec.guidance, width=spec.size,
            height=spec.size, generator=torch.Generator("cpu").manual_seed(spec.seed),
        )
        if name == "b":
            kwargs["ip_adapter_image"] = style_image
        return pipe(**kwargs).images[0]

    return Contestant(name, generate, pipe)


def watch_phases(pipe: Any, on_phase: Callable[[str], None]) -> None:
    """Tell ``on_phase`` the phase of a diffusers pipeline's call from the first forward of the model that runs it
    (text encoders, image encoder, UNet, VAE decoder); a phase told again is ignored by ``PhasePeaks``."""
    models = {"text": [pipe.text_encoder, pipe.text_encoder_2], "style": [getattr(pipe, "image_encoder", None)],
              "denoise": [pipe.unet], "decode": [pipe.vae.decoder]}
    for phase, modules in models.items():
        for module in modules:
            if module is not None:
                module.register_forward_pre_hook(lambda *_, phase=phase: on_phase(phase))


# --- measuring -----------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pin_threads(threads: int = 0, cpus: Sequence[int] = ()) -> tuple[int, tuple[int, ...]]:
    """Pin this process to ``cpus`` (default: the CPUs it may use now) with ``threads`` intra-op threads
    (default: one per CPU) and one inter-op thread; returns (threads, cpus) as set."""
    allowed = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
    chosen = tuple(cpus) or allowed
    if chosen and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, chosen)
    n = threads or len(chosen) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran
        pass
    return n, chosen


def worker_env(threads: int, device: str) -> dict[str, str]:
    """The environment of every worker process, the same for all contestants: thread counts fixed before
    OpenMP starts, glibc's default mmap threshold pinned (instantstyle's low-memory mode pins it itself), and
    on the CPU idle OpenMP threads sleeping (spinning threads would count as process CPU time)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if device == "cpu":
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


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


class PhasePeaks:
    """The peak memory of each phase of one image: ``start()``, then called with each phase's name as it begins
    (phases only go forward: a name told again, or an earlier one, is ignored), then ``finish()``."""

    def __init__(self, peak: PeakMemory) -> None:
        self.peak = peak
        self.current = "setup"
        self.peaks: dict[str, int] = {}

    def start(self) -> None:
        self.current, self.peaks = "setup", {}
        self.peak.reset()

    def __call__(self, phase: str) -> None:
        if phase not in PHASES or PHASES.index(phase) <= PHASES.index(self.current):
            return
        sync(self.peak.device)
        self.peaks[self.current] = max(self.peaks.get(self.current, 0), self.peak.read())
        self.current = phase
        self.peak.reset()

    def finish(self) -> dict[str, int]:
        sync(self.peak.device)
        self.peaks[self.current] = max(self.peaks.get(self.current, 0), self.peak.read())
        return dict(self.peaks)


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``, the device synchronised before and after."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


# --- statistics ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spread:
    """Median, quartiles and range of a sample (per-round ratios or times)."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        xs = sorted(values)
        if not xs:
            raise ValueError("no values")
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
        return cls(statistics.median(xs), q1, q3, xs[0], xs[-1], len(xs))

    @property
    def half_range(self) -> float:
        """Half the min-max width: how far one round may stray from another."""
        return (self.high - self.low) / 2


def ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-round ratios ``num[i] / den[i]`` (the rounds pair the contestants)."""
    if len(num) != len(den):
        raise ValueError("ratios need paired rounds")
    return [x / y for x, y in zip(num, den, strict=True)]


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """The order of round ``round_index``: the contestants rotated by one place a round, so each runs in each
    position equally often (a contestant is not always the one after the slow one)."""
    k = round_index % len(names)
    return [*names[k:], *names[:k]]


# --- markdown ----------------------------------------------------------------------------------------
def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report_end(result: dict[str, Any]) -> str:
    """The end of a GPU mode's report: its notes, the mode's seconds, and the raw figures as JSON."""
    import json

    lines = [f"- {note}" for note in result["notes"]]
    lines += ["", f"whole mode: {result['seconds']} s", "", "```json", json.dumps(result, default=str), "```"]
    return "\n".join(lines) + "\n"


def fmt_ratio(s: Spread) -> str:
    """``1.003 [0.998–1.007]``: median and interquartile range."""
    return f"{s.median:.3f} [{s.q1:.3f}–{s.q3:.3f}]"


def fmt_range(s: Spread) -> str:
    return f"{s.low:.3f}–{s.high:.3f}"


def device_name(device: str, dtype: str) -> str:
    if device.startswith("cuda"):
        return f"GPU: {torch.cuda.get_device_name(torch.device(device))}, {dtype}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU: {model}, {cores} cores, {dtype}"


def versions() -> str:
    import diffusers
    import transformers

    return f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"
