"""Where the weights live while images are made: the image encoder only while it encodes, model
offload, and a compiled denoiser.

The image encoder (ViT-bigG for SDXL: 1.8 B parameters; SigLIP so400m for SD3.5) is needed once per new style image and
never while denoising. With ``low_memory`` it stays off the device between uses: parked in CPU
memory when the device is a GPU, its weights freed (and read again from its folder when the next
new image comes) when the device is the CPU. ``low_memory=None`` decides from the free memory.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .embeddings import ImageEncoder
from .errors import UserError
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
    encoder: ImageEncoder, device: torch.device, dtype: torch.dtype, low_memory: bool
) -> Iterator[ImageEncoder]:
    """The encoder on the device for the block; with ``low_memory`` taken off it afterwards."""
    ready_encoder(encoder, device, dtype)
    try:
        yield encoder
    finally:
        if low_memory:
            release_encoder(encoder, device)


def place_pipeline(pipe: Any, device: torch.device, offload: str | None) -> None:
    """Move the diffusers pipeline to the device, or let accelerate move each model (``model``) or
    each layer (``sequential``) there only while it runs."""
    if offload not in (None, *OFFLOAD_MODES):
        raise UserError(f"unknown offload mode {offload!r} ({', '.join(OFFLOAD_MODES)})")
    if offload is None:
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
