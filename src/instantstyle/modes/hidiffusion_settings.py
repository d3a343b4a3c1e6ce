"""Where and when HiDiffusion acts in one family's UNet: the data a family gives as ``features["hidiffusion"]``,
RAU-Net's switching schedule computed from it, and the one-line refusal of a family without them.

Plain data and arithmetic, no torch, so the family modules can declare their settings without loading it;
the hooks that act on a UNet are in ``hidiffusion``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..families import Family, all_families, family_named

#: The key of HiDiffusion's settings in ``Family.features``; a family without it is one HiDiffusion refuses.
FEATURE = "hidiffusion"

#: The aggressive variant's RAD phase: the first 8 of 50 steps, scaled to the steps run.
AGGRESSIVE_FRACTION = 8 / 50


@dataclass(frozen=True)
class Phases:
    """When RAU-Net acts in one resolution range, as fractions of the denoising steps (the paper's T1, T2).

    ``pool``: the pooled phase runs for the first ``int(steps * pool)`` steps; ``dilate``: RAD for the
    first ``int(steps * dilate)``. ``aggressive`` (SDXL): RAD for the first ``int(8 / 50 * steps)`` steps,
    then the pooled phase until ``int(steps * pool)``; ``dilate`` is then unused.
    """

    pool: float
    dilate: float
    aggressive: bool = False


@dataclass(frozen=True)
class HiDiffusionSettings:
    """Where HiDiffusion acts in one model family's UNet, and when (the authors' settings for that family)."""

    dilated_conv: str  # the downsampler convolution RAD strides by 4 and dilates by 2
    pooled_block: str  # the down block average-pooled after its first layer in the pooled phase
    restored_block: str  # its mirror among the up blocks: bicubic back to size after its second layer
    window_blocks: tuple[str, ...]  # attention blocks whose transformer layers use MSW-MSA
    large_latent: int  # latent side (both sides) from which ``large`` applies instead of ``normal``
    normal: Phases
    large: Phases
    inpaint: Phases | None = None  # ``normal`` for inpainting, where it differs
    text_controlnet: Phases | None = None  # ``normal`` with a ControlNet in text-to-image, where it differs


@dataclass(frozen=True)
class Schedule:
    """The UNet calls (0-based, one per denoising step) at which RAD and the pooled phase act."""

    dilate: range
    pool: range

    def phase(self, call: int) -> str:
        """``dilate``, ``pool``, ``dilate+pool`` or ``plain``: what RAU-Net does at a call."""
        parts = [name for name, steps in (("dilate", self.dilate), ("pool", self.pool)) if call in steps]
        return "+".join(parts) or "plain"


def switching_schedule(
    settings: HiDiffusionSettings,
    latent_size: tuple[int, int],
    steps: int,
    *,
    inpaint: bool = False,
    text_controlnet: bool = False,
) -> Schedule:
    """RAU-Net's switching steps (T1, T2 of the paper) for ``steps`` UNet calls at a latent (height, width)."""
    phases = settings.normal
    if min(latent_size) >= settings.large_latent:
        phases = settings.large
    elif inpaint and settings.inpaint is not None:
        phases = settings.inpaint
    elif text_controlnet and settings.text_controlnet is not None:
        phases = settings.text_controlnet
    if phases.aggressive:
        start = int(AGGRESSIVE_FRACTION * steps)
        return Schedule(dilate=range(start), pool=range(start, int(steps * phases.pool)))
    return Schedule(dilate=range(int(steps * phases.dilate)), pool=range(int(steps * phases.pool)))


def settings_of(family: str | Family | HiDiffusionSettings) -> HiDiffusionSettings:
    """A family's HiDiffusion settings (its ``features["hidiffusion"]``); one clear line for a family without."""
    if isinstance(family, HiDiffusionSettings):
        return family
    found = family_named(family)
    settings = found.features.get(FEATURE)
    if not isinstance(settings, HiDiffusionSettings):
        able = ", ".join(f.name for f in all_families() if FEATURE in f.features)
        raise UserError(f"--hidiffusion works on the UNet models it has settings for ({able}), not on {found.name}: "
                        "its RAU-Net and MSW-MSA change a UNet's down and up blocks, set per model")
    return settings
