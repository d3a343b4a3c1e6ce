"""Where the weights live while images are made: the image encoder only while it encodes, model
offload, a memory budget, how the VAE decodes, and a compiled denoiser.

The image encoder (ViT-bigG for SDXL: 1.8 B parameters; SigLIP so400m for SD3.5) is needed once per new style image and
never while denoising. With ``low_memory`` it stays off the device between uses: parked in CPU
memory when the device is a GPU, its weights freed (and read again from its folder when the next
new image comes) when the device is the CPU. ``low_memory=None`` decides from the free memory.

A memory budget (``Budget``) keeps the denoiser and the VAE on the GPU and every encoder off it except while it
encodes (the text encoders and the image encoder run before denoising, see ``pipeline``), moves the denoiser off
while an encoder would not fit beside it, and decodes in tiles only when a whole-image decode would not fit
(``decode_plan``).
"""

from __future__ import annotations

import ctypes
import gc
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.embeddings import ImageEncoder
from ..errors import UserError
from .runtime import COMPILE_BACKENDS, OFFLOAD_MODES

GiB = 2**30


def free_memory(device: torch.device) -> tuple[int, int]:
    """(free, total) bytes of the device's memory (system RAM for the CPU)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.available), int(vm.total)


def return_freed_memory() -> None:
    """Hand freed heap memory back to the OS: glibc keeps large freed blocks otherwise, and the process
    would still hold (RSS) the adapter layers it pruned and the encoder it released."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def pin_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at its default (128 KiB) for the rest of the process.

    glibc raises the threshold each time a large block is freed (loading and pruning free many);
    tensors allocated after that come from the heap, and freeing them no longer gives the memory
    back: on the CPU a low-memory run would then hold a GiB of dead activations while denoising.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        except (OSError, AttributeError):
            pass


def encoder_bytes(encoder: ImageEncoder, dtype: torch.dtype) -> int:
    """Memory the encoder's weights take at ``dtype`` (works for released, meta-device weights too)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() for p in encoder.model.parameters()) * itemsize


def memory_is_tight(device: torch.device, encoder: ImageEncoder, dtype: torch.dtype) -> bool:
    """Tight when, with the model loaded, less than four encoders' worth of memory is free: the
    encoder would then crowd out the activations of denoising (8-16 GB GPUs with SDXL)."""
    free, _ = free_memory(device)
    return free < 4 * encoder_bytes(encoder, dtype)


def is_released(encoder: ImageEncoder) -> bool:
    """True when the encoder's weights were freed (meta device)."""
    return next(encoder.model.parameters()).device.type == "meta"


def release_encoder(encoder: ImageEncoder, device: torch.device) -> None:
    """Take the encoder off the device: to CPU memory from a GPU; freed on the CPU when its folder
    can give the weights back."""
    model = encoder.model
    if device.type != "cpu":
        model.to("cpu")  # type: ignore[arg-type]  # transformers types .to loosely
        if device.type == "cuda":
            torch.cuda.empty_cache()
    elif not is_released(encoder) and Path(encoder.identity).is_dir():
        for module in model.modules():  # buffers (position ids) are tiny and not all in the files
            for name, param in module.named_parameters(recurse=False):
                module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)
        return_freed_memory()


def ready_encoder(encoder: ImageEncoder, device: torch.device, dtype: torch.dtype) -> None:
    """Put the encoder's weights on the device, reading them from its folder if they were freed."""
    model = encoder.model
    if is_released(encoder):
        fresh = type(model).from_pretrained(encoder.identity, dtype=dtype)
        model.load_state_dict(fresh.state_dict(), assign=True)  # same module object: hooks survive
        del fresh
    model.to(device)  # type: ignore[arg-type]  # transformers types .to loosely


@contextmanager
def encoder_in_use(
    encoder: ImageEncoder, device: torch.device, dtype: torch.dtype, low_memory: bool,
    make_room: Callable[[int], None] | None = None,
) -> Iterator[ImageEncoder]:
    """The encoder on the device for the block; with ``low_memory`` taken off it afterwards. ``make_room(bytes)``
    (a ``Budget``'s) is asked first for the room the encoder's weights take."""
    if make_room is not None:
        make_room(encoder_bytes(encoder, dtype))
    ready_encoder(encoder, device, dtype)
    try:
        yield encoder
    finally:
        if low_memory:
            release_encoder(encoder, device)


def place_pipeline(pipe: Any, device: torch.device, offload: str | None, budget: bool = False) -> None:
    """Move the diffusers pipeline to the device, or let accelerate move each model (``model``) or
    each layer (``sequential``) there only while it runs; with a ``budget``, everything but the text encoders
    (they come to the device only while they encode, see ``Budget``; only for families whose prompts are encoded
    before the call)."""
    if offload not in (None, *OFFLOAD_MODES):
        raise UserError(f"unknown offload mode {offload!r} ({', '.join(OFFLOAD_MODES)})")
    if budget:
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module) and name not in text_encoder_names(pipe):
                module.to(device)
    elif offload is None:
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def compile_denoiser(denoiser: torch.nn.Module, backend: str = "inductor") -> None:
    """``torch.compile`` the denoiser in place (its attention processors included). Shapes and scales
    stay the same from step to step and image to image, so it compiles once per size."""
    if backend not in COMPILE_BACKENDS:
        raise UserError(f"unknown compile backend {backend!r} ({', '.join(COMPILE_BACKENDS)})")
    denoiser.compile(backend=backend, fullgraph=False, dynamic=False)


# --- a memory budget -------------------------------------------------------------------------------------
def module_bytes(module: torch.nn.Module | None, dtype: torch.dtype | None = None) -> int:
    """Bytes of a module's parameters and buffers (at ``dtype`` if given, else as they are)."""
    if module is None:
        return 0
    tensors = [*module.parameters(), *module.buffers()]
    if dtype is None:
        return sum(t.numel() * t.element_size() for t in tensors)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum(t.numel() * (itemsize if t.is_floating_point() else t.element_size()) for t in tensors)


def text_encoder_names(pipe: Any) -> list[str]:
    """The pipeline's text encoders (``text_encoder``, ``text_encoder_2``...), by diffusers' component names."""
    return [name for name, module in pipe.components.items()
            if name.startswith("text_encoder") and isinstance(module, torch.nn.Module)]


def same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` is ``cuda:0`` when that is the current GPU (``torch.device`` equality says they differ)."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        current = torch.cuda.current_device() if a.type == "cuda" else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


def on_device(module: torch.nn.Module, device: torch.device) -> bool:
    """Whether any of the module's parameters is on ``device``."""
    return any(same_device(p.device, device) for p in module.parameters())


@dataclass
class Budget:
    """A device memory budget (bytes of ``torch.cuda.max_memory_allocated``): the denoiser and the VAE stay on the
    GPU, an encoder comes there only while it encodes, and the denoiser steps aside (to CPU memory) while an
    encoder would not fit beside it. Nothing moves on the CPU, where every model already is in the memory it
    would be moved to."""

    device: torch.device
    limit: int
    #: What steps aside, in order, when an encoder needs room (the denoiser).
    residents: list[torch.nn.Module] = field(default_factory=list)

    @property
    def moves(self) -> bool:
        return self.device.type == "cuda"

    def make_room(self, need: int, residents: Iterable[torch.nn.Module] | None = None) -> None:
        """Move ``residents`` (default: the budget's own), in order, off the device until ``need`` more bytes fit
        under the limit."""
        if not self.moves:
            return
        for module in self.residents if residents is None else residents:
            if torch.cuda.memory_allocated(self.device) + need <= self.limit:
                return
            if on_device(module, self.device):
                module.to("cpu")
                torch.cuda.empty_cache()

    def bring(self, modules: Iterable[torch.nn.Module | None]) -> None:
        """Put ``modules`` on the device (those already there stay)."""
        if self.moves:
            for module in modules:
                if module is not None and not on_device(module, self.device):
                    module.to(self.device)

    def park(self, modules: Iterable[torch.nn.Module | None]) -> None:
        """Take ``modules`` off the device, to CPU memory."""
        if self.moves:
            for module in modules:
                if module is not None and on_device(module, self.device):
                    module.to("cpu")
            torch.cuda.empty_cache()

    @contextmanager
    def using(self, modules: list[torch.nn.Module], residents: Iterable[torch.nn.Module] | None = None
              ) -> Iterator[None]:
        """``modules`` on the device for the block (room made by moving ``residents`` off, default the budget's
        own), parked after it."""
        self.make_room(sum(module_bytes(m) for m in modules if not on_device(m, self.device)), residents)
        self.bring(modules)
        try:
            yield
        finally:
            self.park(modules)


def check_budget(budget_gib: float, residents: Iterable[torch.nn.Module],
                 what: str = "the denoiser and the VAE") -> None:
    """A ``UserError`` when the models that stay on the device (``what``: denoiser, VAE) leave no room to work in."""
    need = sum(module_bytes(m) for m in residents) + DECODE_RESERVE
    if need > budget_gib * GiB:
        raise UserError(f"--memory-budget {budget_gib:g}: {what} alone need {need / GiB:.2f} GiB "
                        "on the device (with the room to decode in); raise the budget or use --offload sequential")


@contextmanager
def nothing() -> Iterator[None]:
    """A context that does nothing (no budget)."""
    yield


# --- how the VAE decodes ----------------------------------------------------------------------------------
#: Without a budget or ``vae_tiling``, images wider or taller than this decode in the VAE's own tiles.
VAE_TILING_ABOVE = 1024
#: Decode working memory per output pixel and channel of the decoder's widest full-resolution stage, in values:
#: a whole-image decode of SDXL's VAE peaks at 3.1-3.3 KiB per pixel in float32 (measured by live-tensor
#: tracking; three activations of 256 channels), so 4 is an upper estimate with margin.
DECODE_VALUES_PER_CHANNEL = 4
#: What else is on the device while decoding (latents, embeddings, convolution workspace, allocator rounding).
DECODE_RESERVE = GiB // 2
TILE_STEP = 64


@dataclass(frozen=True)
class Decode:
    """How the VAE decodes: in tiles of ``tile`` px (``None``: whole images) and, with ``slicing``, one image of a
    batch at a time (less memory; pixels within a rounding step of the batch decode: the convolutions round
    differently by batch size)."""

    tile: int | None = None
    slicing: bool = False


def vae_decode_dtype(vae: Any, dtype: torch.dtype) -> torch.dtype:
    """The precision diffusers decodes in: float32 for a float16 VAE that asks to be upcast (SDXL's)."""
    return torch.float32 if dtype == torch.float16 and getattr(vae.config, "force_upcast", False) else dtype


def decode_bytes(vae: Any, width: int, height: int, dtype: torch.dtype) -> int:
    """An upper estimate of one image's whole decode working memory: ``DECODE_VALUES_PER_CHANNEL`` values per
    pixel and channel of the decoder's widest stage at full resolution (the last but one, upsampled, or the last)."""
    channels = max(vae.config.block_out_channels[:2])
    itemsize = torch.empty((), dtype=vae_decode_dtype(vae, dtype)).element_size()
    return DECODE_VALUES_PER_CHANNEL * channels * width * height * itemsize


def decode_plan(vae: Any, width: int, height: int, dtype: torch.dtype, room: int, images: int = 1) -> Decode:
    """Within ``room`` bytes, a call's ``images``: the whole batch at once when it fits (exactly the default decode,
    so the pixels of no budget), else one image at a time when one fits, else the largest square tiles that fit
    (``TILE_STEP`` px steps, at least 2 steps), one image at a time."""
    one = decode_bytes(vae, width, height, dtype)
    if one * images <= room:
        return Decode(None)
    if one <= room:
        return Decode(None, slicing=True)
    per_px = decode_bytes(vae, 1, 1, dtype)
    side = int(math.isqrt(max(room, 0) // per_px)) // TILE_STEP * TILE_STEP
    if side < 2 * TILE_STEP:
        raise UserError(f"the memory budget leaves {room / GiB:.2f} GiB to decode in: too little even for "
                        f"{2 * TILE_STEP} px tiles; raise --memory-budget")
    return Decode(side, slicing=True)


def vae_factor(vae: Any) -> int:
    """Output pixels per latent pixel (8 for the SD VAEs)."""
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def own_tile(vae: Any) -> int:
    """The VAE's own tile side (its config's sample size; 1024 px for SDXL's)."""
    sample = vae.config.sample_size
    return int(sample[0] if isinstance(sample, (list, tuple)) else sample)


@contextmanager
def decode_applied(vae: Any, decode: Decode) -> Iterator[None]:
    """The VAE's tiling and slicing as ``decode`` says for the block (tiles of its own size when not tiling), and as
    before after it. Tile sizes are the VAE's attributes (diffusers' ``enable_tiling`` takes none)."""
    if not hasattr(vae, "use_tiling"):
        yield
        return
    names = ("tile_sample_min_size", "tile_latent_min_size", "use_tiling", "use_slicing")
    before = {name: getattr(vae, name) for name in names}
    vae.tile_sample_min_size = decode.tile or vae.config.sample_size
    vae.tile_latent_min_size = int((decode.tile or own_tile(vae)) / vae_factor(vae))
    vae.enable_tiling() if decode.tile is not None else vae.disable_tiling()
    vae.enable_slicing() if decode.slicing else vae.disable_slicing()
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(vae, name, value)
