"""Sampler names users type (``euler-a``, ``dpm++ 2m karras``, ``lcm``) as diffusers schedulers.

A scheduler is built from the model's own scheduler config, so the noise schedule the model was
trained with (betas, prediction type, timestep spacing) carries over; only the sampler changes. It is the
pipeline's scheduler for one call only (``scheduler_applied``).
Few-step LoRAs need theirs: Lightning/Hyper ``euler-trailing``, LCM-LoRA ``lcm``, TCD-LoRA ``tcd``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import UserError, shown

#: name -> (diffusers class, config overrides). Plain data: validating a name needs no diffusers import.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddim-trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    "dpm++-2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++-2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++-2m-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++-2m-sde-karras": (
        "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}
    ),
    "dpm++-2s": ("DPMSolverSinglestepScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}

_ALIASES = {"euler-ancestral": "euler-a", "dpmpp-2m": "dpm++-2m", "dpmpp-2m-karras": "dpm++-2m-karras"}


def canonical_name(name: str) -> str:
    """``DPM++ 2M Karras`` -> ``dpm++-2m-karras``; a ``UserError`` listing the names for an unknown one."""
    key = "-".join(str(name).lower().replace("_", " ").split())
    key = _ALIASES.get(key, key)
    if key not in SCHEDULERS:
        raise UserError(f"unknown scheduler {shown(name)} (one of: {', '.join(SCHEDULERS)})")
    return key


def make_scheduler(name: str, base: Any) -> Any:
    """A scheduler called ``name`` configured from the model's own scheduler ``base``."""
    import diffusers

    cls_name, overrides = SCHEDULERS[canonical_name(name)]
    return getattr(diffusers, cls_name).from_config(base.config, **overrides)


@contextmanager
def scheduler_applied(pipe: Any, name: str | None) -> Iterator[Any]:
    """The pipeline's scheduler for the block: ``name``'s, configured from the pipeline's own (``None``: its own);
    its own put back after it. Yields the scheduler the block runs with."""
    own = pipe.scheduler
    if name is None:
        yield own
        return
    pipe.scheduler = make_scheduler(name, own)
    try:
        yield pipe.scheduler
    finally:
        pipe.scheduler = own
