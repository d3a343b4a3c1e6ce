"""IP-Adapter files: reading h94-format weights, refusing misfits, attaching them with diffusers.

Diffusers' own loader (``load_ip_adapter``) and attention code do the work; this module adds what InstantStyle
needs on top: knowing a file's kind and dimensions before loading, refusing a file that does not fit the model
(the family says what fits), and, right after loading, our processors on the loaded weights with the weights of
every layer no block targets dropped (``processors.take_over``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..families import Family, all_families
from .blocks import Slot
from .csgo import has_csgo_names, is_csgo, read_csgo
from .processors import adapter_parameter_count as adapter_parameter_count  # re-exported: counts live weights
from .processors import adapters_loaded, slots_applied, take_over
from .weights import AdapterKind, AdapterWeights, load_bin, read_weights

__all__ = ["AdapterKind", "AdapterWeights", "adapter_kind", "adapter_parameter_count", "attach_adapters",
           "adapters_applied", "check_adapter_fits", "file_parameter_count", "read_adapter"]


def read_adapter(path: str | Path) -> AdapterWeights:
    """Read an h94 IP-Adapter file (flat ``.safetensors`` or legacy ``.bin``) and classify it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"adapter {path}: no such file")
    state, flat = read_weights(path)
    if is_csgo(state):
        return read_csgo(path, state)
    if not isinstance(state, dict) or not state.get("image_proj") or not state.get("ip_adapter"):
        for family in all_families():  # a format only some family uses (h94's is every UNet family's)
            weights = family.adapter_reader(path, flat) if family.adapter_reader is not None else None
            if weights is not None:
                return weights  # type: ignore[no-any-return]
        raise UserError(f"adapter {path}: not an IP-Adapter file (no image_proj / ip_adapter weights)")
    proj, layers = state["image_proj"], state["ip_adapter"]
    kind: AdapterKind
    if "proj.weight" in proj and "norm.weight" in proj:
        kind, embed_dim = "global", proj["proj.weight"].shape[1]
        cross_dim = proj["proj.weight"].shape[0] // 4
    elif "latents" in proj and "proj_in.weight" in proj:
        kind, embed_dim = "plus", proj["proj_in.weight"].shape[1]
        cross_dim = proj["proj_out.weight"].shape[0]
    else:
        raise UserError(f"adapter {path}: unsupported IP-Adapter kind (only global and plus adapters)")
    num_layers = sum(1 for k in layers if k.endswith(".to_k_ip.weight"))
    return AdapterWeights(str(path), kind, int(embed_dim), int(cross_dim), num_layers, state)


def adapter_kind(path: str | Path) -> str | None:
    """``csgo`` for a CSGO checkpoint, ``None`` for anything else, from the file's names alone (a ``.bin`` is
    memory-mapped, a safetensors header read): cheap enough to check a request before anything loads, and read once
    per file version (every request and every scored image asks)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:  # missing: read_adapter says why, when it loads
        return None
    return _kind_of_file(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _kind_of_file(path: str, mtime_ns: int, size: int) -> str | None:
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                return "csgo" if has_csgo_names(f.keys()) else None
        return "csgo" if is_csgo(load_bin(Path(path))) else None
    except Exception:  # unreadable: read_adapter says why, when it loads
        return None


def check_adapter_fits(adapter: AdapterWeights, family: Family, denoiser: Any) -> None:
    """Refuse an adapter made for another model (an SD1.5 adapter on SDXL, say) with a clear message."""
    misfit = family.adapter_misfit(adapter, denoiser)
    if misfit is not None:
        raise UserError(f"adapter {adapter.path} does not fit this {family.name} model: {misfit}")


def attach_adapters(
    pipe: Any, family: Family, adapters: Sequence[AdapterWeights],
    keep: Sequence[set[str] | frozenset[str]] | None = None,
) -> None:
    """Load adapters into the pipeline's denoiser with diffusers (those loaded before unloaded first), then our
    processors on their weights, one slot per adapter (``processors.take_over``).

    ``keep[i]`` is the set of layers adapter ``i`` may ever be used on; ``None`` keeps every weight
    (re-targeting then needs no reload).
    """
    if adapters_loaded(family.denoiser_of(pipe)):
        pipe.unload_ip_adapter()
    family.load_adapters(pipe, [a.state_dict for a in adapters])
    take_over(family.denoiser_of(pipe), family, keep)


@contextmanager
def adapters_applied(pipe: Any, family: Family, slots: Sequence[Slot], files: Sequence[str] = (),
                     keep: Sequence[set[str] | frozenset[str]] | None = None,
                     rest: set[str] | frozenset[str] | None = None) -> Iterator[None]:
    """``slots`` set for the block. With ``files`` (the main adapter's first), those adapters are loaded for it
    (keeping the weights of ``keep[i]``'s layers; ``None``: all), and after it the main adapter alone is loaded back,
    keeping ``rest`` (``None``: all): the denoiser as it was between requests."""
    try:
        if files:
            attach_adapters(pipe, family, [read_adapter(f) for f in files], None if keep is None else list(keep))
        with slots_applied(family.denoiser_of(pipe), family, slots):
            yield
    finally:
        if files:
            attach_adapters(pipe, family, [read_adapter(files[0])], None if rest is None else [set(rest)])


def file_parameter_count(adapter: AdapterWeights) -> int:
    """Parameters in the adapter file, for the pruned fraction the benchmark reports."""
    return sum(t.numel() for group in adapter.state_dict.values() for t in group.values())
