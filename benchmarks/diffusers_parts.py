#!/usr/bin/env python
"""diffusers' own parts against ours where they might do the same job (docs/architecture.md says what stayed ours).

    python benchmarks/diffusers_parts.py [--steps 30] [--out FILE.md]

**Paste-back** (inpainting: the init image put back outside the mask): diffusers' ``VaeImageProcessor.apply_overlay``
against ours (``modes.image.paste_back``: ``Image.composite``) on a binary mask, a soft mask (grey levels) and a
ramp, as the largest difference in levels and the share of pixels that differ.

**Group offload** against the memory budget's moves, in bytes: what is on the device and what moves. Counted on
the CPU (no GPU time, only bytes as each policy accounts them), for one SDXL text-to-image image with a new style
reference, at float16:

- ``budget``: ``loading.memory.Budget``'s rules. The denoiser and the VAE stay on the device; the text encoders come
  for the text phase and the image encoder for the style phase (each moved there and back once per image; the
  embeddings are cached after), when they fit beside the denoiser (the budget ``check_budget`` lets run).
- ``group-block`` / ``group-leaf``: diffusers' ``enable_group_offload`` on the pipeline (block level, one block per
  group; leaf level). Measured by running diffusers' own hooks on the tiny SDXL fixture with the CPU as both devices
  (nothing moves) and counting every group's ``onload_``/``offload_``; the full-size figures are the same groups
  (diffusers' own grouping of the tiny model, matched by module name) with the full-size SDXL's bytes (built on the
  meta device from its public configs, ``common.FULL``).

Peaks are the bytes resident at once (weights only; activations are the same for every policy); "moved" counts
host-to-device bytes per image after loading (the budget places the denoiser and the VAE once, at loading). The
tiny run also checks that group offload leaves the pixels unchanged. Leaf level is counted on the tiny model only
(the full-size model has layers the tiny one has not).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common  # noqa: F401  (sets the environment and the import path first)
import torch
from common import FULL, GiB, md_table

HALF = torch.float16


@dataclass
class Account:
    """Bytes on the device now, the most at once, and moved there so far."""

    now: int = 0
    peak: int = 0
    moved: int = 0

    def bring(self, size: int) -> None:
        self.now += size
        self.moved += size
        self.peak = max(self.peak, self.now)

    def park(self, size: int) -> None:
        self.now -= size


def tensor_bytes(tensors: Iterator[torch.Tensor], dtype: torch.dtype | None = None) -> int:
    """Bytes of tensors (floating ones at ``dtype`` when given)."""
    itemsize = None if dtype is None else torch.empty((), dtype=dtype).element_size()
    return sum(t.numel() * (itemsize if itemsize and t.is_floating_point() else t.element_size()) for t in tensors)


def group_tensors(group: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """A diffusers ``ModuleGroup``'s tensors (its modules' and its own), named within the model."""
    for module in group.modules:
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            yield f"{id(module)}.{name}", tensor
    for tensor in [*group.parameters, *group.buffers]:
        yield str(id(tensor)), tensor


@contextmanager
def recording_groups(events: list[tuple[int, int]]) -> Iterator[None]:
    """Record every group's onload (``(id, 1)``) and offload (``(id, -1)``) while diffusers' hooks run."""
    from diffusers.hooks.group_offloading import ModuleGroup

    onload, offload = ModuleGroup.onload_, ModuleGroup.offload_

    def recorded_onload(group: Any) -> None:
        events.append((id(group), 1))
        onload(group)

    def recorded_offload(group: Any) -> None:
        events.append((id(group), -1))
        offload(group)

    ModuleGroup.onload_, ModuleGroup.offload_ = recorded_onload, recorded_offload  # type: ignore[method-assign]
    try:
        yield
    finally:
        ModuleGroup.onload_, ModuleGroup.offload_ = onload, offload  # type: ignore[method-assign]


def replay(events: list[tuple[int, int]], sizes: dict[int, int], extra: int) -> Account:
    """The bytes of recorded group moves (plus ``extra``: the image encoder, there and back once)."""
    account = Account()
    account.bring(extra)
    account.park(extra)
    for key, sign in events:
        (account.bring if sign > 0 else account.park)(sizes[key])
    return account


def groups_of(pipe: Any) -> dict[int, tuple[str, Any]]:
    """Every ``ModuleGroup`` diffusers made, by id: (component, group)."""
    found: dict[int, tuple[str, Any]] = {}
    for component, model in pipe.components.items():
        if not isinstance(model, torch.nn.Module):
            continue
        for module in model.modules():
            registry = getattr(module, "_diffusers_hook", None)
            hook = registry.get_hook("group_offloading") if registry is not None else None
            if hook is not None:
                found[id(hook.group)] = (component, hook.group)
    return found


def full_size_models() -> dict[str, torch.nn.Module]:
    """The full-size SDXL components (and h94's ViT-bigG image encoder) on the meta device: bytes without memory."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel(**FULL.unet),
            "vae": AutoencoderKL(**FULL.vae),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**FULL.text_encoder)),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**FULL.text_encoder_2)),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**FULL.image_encoder)),
        }


def budget_account(models: dict[str, torch.nn.Module]) -> Account:
    """The budget's rules: denoiser and VAE resident (placed once, at loading: not counted as moved per image); text
    encoders, then the image encoder, there and back once."""
    account = Account()
    account.bring(tensor_bytes(models["unet"].parameters(), HALF) + tensor_bytes(models["vae"].parameters(), HALF))
    account.moved = 0
    for phase in (["text_encoder", "text_encoder_2"], ["image_encoder"]):
        size = sum(tensor_bytes(models[name].parameters(), HALF) for name in phase)
        account.bring(size)
        account.park(size)
    return account  # denoising and decoding move nothing


def by_name(model: torch.nn.Module) -> dict[int, str]:
    names = {id(t): f"{module_name}.{name}" for module_name, module in model.named_modules()
             for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]}
    return names


def run(steps: int, out: Path | None = None) -> str:
    import diffusers
    import numpy as np
    import transformers
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPVisionModelWithProjection

    from instantstyle.testing import tiny_models

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    tiny = tiny_models()
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny.sdxl))
    pipe.set_progress_bar_config(disable=True)
    tiny_steps = 2
    call = {"prompt": "a cat", "num_inference_steps": tiny_steps, "width": 64, "height": 64}
    plain = np.asarray(pipe(**call, generator=torch.Generator().manual_seed(7)).images[0])
    encoder = CLIPVisionModelWithProjection.from_pretrained(str(tiny.adapters / "sdxl_models" / "image_encoder"))
    small = {**{n: m for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}, "image_encoder": encoder}
    full = full_size_models()
    rows = [[label, "budget (ours)", f"{a.peak / GiB:.3f}", f"{a.moved / GiB:.3f}"]
            for label, a in (("tiny fixture", budget_account(small)), ("SDXL base, full size", budget_account(full)))]

    for offload_type in ("block_level", "leaf_level"):  # leaf level's full size: more layers than the tiny one
        pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny.sdxl))
        pipe.set_progress_bar_config(disable=True)
        extra = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
        pipe.enable_group_offload(torch.device("cpu"), torch.device("cpu"), offload_type=offload_type, **extra)
        groups = groups_of(pipe)
        events: list[tuple[int, int]] = []
        with recording_groups(events):
            image = np.asarray(pipe(**call, generator=torch.Generator().manual_seed(7)).images[0])
        assert (image == plain).all(), "group offload changed the pixels"
        tiny_sizes = {key: tensor_bytes((t for _, t in group_tensors(g)), HALF) for key, (_, g) in groups.items()}
        measured = replay(events, tiny_sizes, tensor_bytes(encoder.parameters(), HALF))
        rows.append(["tiny fixture", f"group offload, {offload_type}", f"{measured.peak / GiB:.3f}",
                     f"{measured.moved / GiB:.3f}"])
        if offload_type == "leaf_level":
            continue
        # Full size: the same moves with the full-size bytes of the same blocks, the UNet's per call ``steps`` times.
        full_sizes = full_size_groups(pipe, groups, full)
        unet_events = [e for e in events if groups[e[0]][0] == "unet"]
        per_call = unet_events[: len(unet_events) // tiny_steps]
        first, last = events.index(unet_events[0]), len(events) - events[::-1].index(unet_events[-1])
        replayed = events[:first] + per_call * steps + events[last:]
        counted = replay(replayed, full_sizes, tensor_bytes(full["image_encoder"].parameters(), HALF))
        rows.append(["SDXL base, full size", f"group offload, {offload_type}", f"{counted.peak / GiB:.3f}",
                     f"{counted.moved / GiB:.3f}"])

    table = md_table(["model", "policy", "peak weights on the device (GiB)", "moved to the device per image (GiB)"],
                     rows)
    text = (f"One text-to-image image with a new style reference, float16 weights: the tiny fixture ran "
            f"{tiny_steps} steps, the full size is counted for {steps} (one CFG call each).\n\n{table}\n")
    if out is not None:
        out.write_text(text)
    return text


def full_size_groups(pipe: Any, groups: dict[int, tuple[str, Any]], full: dict[str, torch.nn.Module]
                     ) -> dict[int, int]:
    """Each tiny group's bytes in the full-size model: the full-size tensors under the same modules (block level:
    ``down_blocks.0``...; the full model has more layers inside the same blocks), and its own tensors by name."""
    sizes = {}
    for key, (component, group) in groups.items():
        model = pipe.components[component]
        module_names = {id(m): name for name, m in model.named_modules()}
        prefixes = [module_names[id(m)] for m in group.modules if module_names[id(m)]]
        own = {name for name, t in [*model.named_parameters(), *model.named_buffers()]
               if any(t is mine for mine in [*group.parameters, *group.buffers])}
        top = any(module_names[id(m)] == "" for m in group.modules)
        full_tensors = [*full[component].named_parameters(), *full[component].named_buffers()]
        sizes[key] = sum(tensor_bytes(iter([t]), HALF) for n, t in full_tensors
                         if top or n in own or any(n.startswith(prefix + ".") for prefix in prefixes))
    return sizes


def overlay_table() -> str:
    """apply_overlay against Image.composite (ours), on random 64 px images and three masks."""
    import numpy as np
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    rng = np.random.default_rng(0)
    generated, init = (Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2))
    masks = {"binary": (rng.random((64, 64)) > 0.5).astype(np.uint8) * 255,
             "soft (random grey levels)": rng.integers(0, 256, (64, 64), dtype=np.uint8),
             "ramp (a feathered edge)": np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))}
    rows = []
    for name, values in masks.items():
        mask = Image.fromarray(values, "L")
        ours = np.asarray(Image.composite(generated, init, mask)).astype(int)
        theirs = np.asarray(VaeImageProcessor().apply_overlay(mask, init, generated)).astype(int)
        rows.append([name, int(abs(ours - theirs).max()), f"{(ours != theirs).mean():.1%}"])
    return md_table(["mask", "largest difference (levels)", "pixels that differ"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = f"## Paste-back\n\n{overlay_table()}\n\n## Group offload\n\n{run(args.steps, None)}"
    if args.out is not None:
        args.out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
