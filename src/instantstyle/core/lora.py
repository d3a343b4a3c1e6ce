"""LoRA files (diffusers/peft or kohya keys: Lightning, Hyper, LCM, TCD, style LoRAs) on the base model.

Diffusers' ``load_lora_weights`` (with peft) does the loading; ``loras_applied`` loads a request's LoRAs for its
call (each under a name derived from its path and modification time), sets their scales, and after the call
leaves the pipeline exactly as it was. The IP-Adapter lives in the attention processors, LoRAs in the linear
layers: they do not meet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files.logs import quiet

PREFIX = "isl_"  # adapter names this module owns; LoRAs loaded by others are left alone


def adapter_name(path: str | Path) -> str:
    """A stable peft adapter name for a file (its path and modification time)."""
    path = Path(path).expanduser().resolve()
    stamp = f"{path}\0{path.stat().st_mtime_ns}"
    return PREFIX + hashlib.sha256(stamp.encode()).hexdigest()[:16]


def loaded_names(pipe: Any) -> set[str]:
    """Names of the LoRAs this module has loaded into the pipeline."""
    names: set[str] = set()
    for adapters in pipe.get_list_adapters().values():
        names.update(n for n in adapters if n.startswith(PREFIX))
    return names


def check_lora_file(path: str) -> None:
    """A LoRA must be an existing ``.safetensors`` file (pickled ``.bin`` LoRAs are not loaded)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"LoRA {path}: no such file")
    if file.suffix != ".safetensors":
        raise UserError(f"LoRA {path}: must be a .safetensors file")


@contextmanager
def loras_applied(pipe: Any, loras: Sequence[tuple[str, float]]) -> Iterator[None]:
    """Exactly ``loras`` (path, scale) active on the pipeline's UNet and text encoders for the block; after it the
    pipeline is as before: our LoRAs deleted (peft's wrappers removed when no other LoRA is left) and every
    parameter's ``requires_grad`` as it was. peft turns ``requires_grad`` off for every weight of a model it wraps,
    and diffusers' unloading leaves it off; torch's matmul picks its kernel by it (a 3-D input that is not
    contiguous is multiplied as one matrix when the weight requires grad, as a batch of matrices otherwise), so a
    LoRA once loaded would move every later image by a rounding step."""
    wanted = {}
    for path, scale in loras:
        check_lora_file(path)
        wanted[adapter_name(path)] = (path, scale)
    if not wanted:
        yield
        return
    import torch

    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    grads = [(p, p.requires_grad) for module in modules for p in module.parameters()]
    loaded: list[str] = []
    try:
        for name, (path, _) in wanted.items():
            load_lora(pipe, path, name)
            loaded.append(name)
        pipe.set_adapters(list(wanted), adapter_weights=[scale for _, scale in wanted.values()])
        yield
    finally:
        if loaded:
            others = {n for names in pipe.get_list_adapters().values() for n in names} - set(loaded)
            if others:
                pipe.delete_adapters(loaded)
            else:
                pipe.unload_lora_weights()  # removes peft's wrappers too: the plain model, bit for bit
        for param, grad in grads:
            param.requires_grad_(grad)


def load_lora(pipe: Any, path: str, name: str) -> None:
    """Load one LoRA file under ``name``; a file that fits no layer of the model is a ``UserError``."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise UserError("--lora needs the peft package (pip install peft)") from None
    try:
        with quiet("diffusers.loaders"):
            pipe.load_lora_weights(str(Path(path).expanduser()), adapter_name=name)
    except UserError:
        raise
    except Exception as err:  # safetensors, peft and the key converters raise many types
        raise UserError(f"LoRA {path}: cannot be loaded into this model ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
    if name not in loaded_names(pipe):
        raise UserError(f"LoRA {path}: none of its weights match a layer of this model")
