"""LoRA files (diffusers/peft or kohya keys: Lightning, Hyper, LCM, TCD, style LoRAs) on the base model.

Diffusers' ``load_lora_weights`` (with peft) does the loading; this module makes the set of loaded
LoRAs follow the request: each file is loaded once under a name derived from its path and
modification time, files the request no longer names are deleted, and the scales are set per call.
The IP-Adapter lives in the attention processors, LoRAs in the linear layers: they do not meet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files.logs import quiet

PREFIX = "isl_"  # adapter names this module owns; LoRAs loaded by others are left alone


def adapter_name(path: str | Path) -> str:
    """A stable peft adapter name for a file: the same file (path and mtime) is loaded once."""
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


def apply_loras(pipe: Any, loras: Sequence[tuple[str, float]]) -> None:
    """Make exactly ``loras`` (path, scale) active on the pipeline's UNet and text encoders."""
    wanted = {}
    for path, scale in loras:
        check_lora_file(path)
        wanted[adapter_name(path)] = (path, scale)
    if not wanted and not hasattr(pipe, "get_list_adapters"):
        return
    try:
        held = loaded_names(pipe)
    except (ImportError, ValueError):
        held = set()
    stale = sorted(held - set(wanted))
    if stale and not wanted:
        pipe.unload_lora_weights()  # removes peft's wrappers too: the plain model, bit for bit
        return
    if stale:
        pipe.delete_adapters(stale)
    for name, (path, _) in wanted.items():
        if name not in held:
            load_lora(pipe, path, name)
    if wanted:
        pipe.set_adapters(list(wanted), adapter_weights=[scale for _, scale in wanted.values()])


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
