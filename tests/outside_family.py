"""A model family defined outside instantstyle, as another package would: SD1.5's family, under another name, for the
UNets that upcast attention (stabilityai/stable-diffusion-2-1's UNet config says ``upcast_attention``). It refines
``sd15`` (whose matcher takes every UNet without SDXL's conditioning), so where both match, it is taken."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from instantstyle.families import never, sd15


def matches(class_name: str, config: Mapping[str, Any]) -> bool:
    return sd15.matches(class_name, config) and bool(config.get("upcast_attention"))


FAMILY = replace(sd15.FAMILY, name="sd21", matches=matches, matches_checkpoint=never, known_models=(), refines="sd15")
