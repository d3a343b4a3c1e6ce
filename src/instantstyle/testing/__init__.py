"""Test support: tiny offline stand-ins for the models InstantStyle loads from the hub."""

from instantstyle.testing.fixtures import (
    FIXTURE_VERSION,
    TinyModels,
    build_tiny_models,
    make_style_image,
    tiny_models,
)

__all__ = ["FIXTURE_VERSION", "TinyModels", "build_tiny_models", "make_style_image", "tiny_models"]
