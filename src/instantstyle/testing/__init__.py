"""Test support: tiny offline stand-ins for the models InstantStyle loads from the hub."""

from instantstyle.testing.dit import TinyDiTModels, build_tiny_dit_models, tiny_dit_models
from instantstyle.testing.fixtures import (
    FIXTURE_VERSION,
    TinyModels,
    build_tiny_models,
    make_style_image,
    tiny_models,
)

__all__ = [
    "FIXTURE_VERSION",
    "TinyDiTModels",
    "TinyModels",
    "build_tiny_dit_models",
    "build_tiny_models",
    "make_style_image",
    "tiny_dit_models",
    "tiny_models",
]
