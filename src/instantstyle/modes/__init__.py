"""Modes beyond text-to-image: img2img, inpainting and ControlNet (``image``, ``control``), HiDiffusion."""
