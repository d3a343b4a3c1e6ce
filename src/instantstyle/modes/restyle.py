"""Restyle a photo and keep what is in it: InstantStyle-Plus (Wang et al. 2024, arXiv 2407.00788), the authors'
``infer_style.py`` at commit 2beaef4, on the one loaded pipeline.

The recipe, step by step (each step a function or a line of the pipeline's hook):

1. **Invert the photo** (``invert``): the photo's VAE latent carried up every DDIM timestep by ReNoise inversion
   (``renoise``) with its prompt, as a plain model pass (no adapters, no ControlNet, no guidance). The inverted
   latent is the denoising's start, as it is: no noise added, every timestep kept (the original's
   ``denoising_start=0.0001``; the same call as img2img at strength 1 from given latents).
2. **Two adapter slots from one adapter file** (``routing.slot_scales``, ``styles.slot_embeds``): first a global
   slot fed the photo (every layer at ``restyle_content_scale``, 0.3: "high semantic content decreases the style
   effect"), then InstantStyle's style block fed the style references (``blocks`` at ``scale``), in the original's
   order. Both share the adapter's weights: no second copy, no second pipeline.
3. **A ControlNet on the photo's structure**: canny edges (OpenCV 100/200, ``control.canny``) at 0.6, or the photo
   itself for a tile ControlNet.
4. **DDIM, guidance 5 and the recipe's negative prompt** (``RECIPE``), each unless the request says otherwise.
5. **Optional CSD guidance** (``csd_guidance``): each step's noise prediction pushed along the gradient of the CSD
   style similarity to the references (``style_guidance``) and of the CSD content similarity to the photo
   (``content_guidance``), taken through the model, the VAE and CSD as the original takes it.

What it costs once per photo is cached (``InversionCache``; the photo's CLIP embedding is cached with the style
embeddings), so a sweep over the scales inverts once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from ..files.images import MAX_PIXELS, load_image
from .renoise import renoise_inversion

if TYPE_CHECKING:
    from ..core.request import Request
    from ..families import Family
    from ..scores.csd import CsdModel

#: The family feature that says restyling works there (SDXL and SD1.5: UNets predicting noise, DDIM-invertible).
FEATURE = "restyle"
RECIPE_NEGATIVE = "lowres, low quality, worst quality, deformed, noisy, blurry"
#: The recipe's values for what a restyle request leaves unset (``None``).
RECIPE: dict[str, Any] = {"scheduler": "ddim", "control": "canny", "control_scale": 0.6,
                          "negative_prompt": RECIPE_NEGATIVE}
#: The authors' later tile recipe, documented for ``--control tile`` (docs/restyle.md).
TILE_RECIPE = {"control_scale": 0.4, "restyle_content_scale": 0.2, "scale": 1.2}
#: CSD's input side and CLIP's normalisation (the original's ``transforms.Resize(224)`` and ``Normalize``).
CSD_SIDE = 224


def check_family(family: Family) -> None:
    """Restyling needs a family that has it: SD3.5 and FLUX do not (one line saying what differs)."""
    if not family.features.get(FEATURE):
        why = ("a flow-matching transformer: its inversion is not DDIM's, it has no UNet style block and no canny "
               "ControlNet img2img path, so the recipe would not be the same") if family.denoiser != "unet" else (
               "a UNet the recipe was not made for (diffusers has no ControlNet img2img pipeline with an IP-Adapter "
               "for it)")
        raise UserError(f"--restyle is InstantStyle-Plus, made for UNet models (SDXL, SD1.5); {family.name} is {why}")


def recipe_fields(request: Request) -> dict[str, Any]:
    """What a restyle request leaves unset, filled with the recipe's values (none for other requests)."""
    if request.restyle is None:
        return {}
    changes = {name: value for name, value in RECIPE.items() if getattr(request, name) is None}
    if request.inversion_steps is None:
        changes["inversion_steps"] = request.steps
    return changes


def load_photo(request: Request, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """The photo at the request's size (the inversion's and the content slot's input), LANCZOS as init images are."""
    assert request.restyle is not None and request.width is not None and request.height is not None
    photo = load_image(request.restyle, "photo to restyle", max_pixels)
    return photo.resize((request.width, request.height), Image.Resampling.LANCZOS)


# --- 1. the inversion ----------------------------------------------------------------------------------
def encode_photo(pipe: Any, photo: Image.Image, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """The photo's VAE latent, a sample of its posterior drawn from ``generator`` (the inversion's first draw), in
    float32 for a VAE that asks to be upcast, as diffusers' img2img encodes."""
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(photo).to(vae.device, dtype)
    upcast = bool(getattr(vae.config, "force_upcast", False)) and vae.dtype == torch.float16
    if upcast:
        vae.to(dtype=torch.float32)
        pixels = pixels.float()
    try:
        with torch.no_grad():
            latent = vae.encode(pixels).latent_dist.sample(generator).to(dtype)
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latent)
        return (latent - mean) * vae.config.scaling_factor / torch.tensor(std).view(1, -1, 1, 1).to(latent)
    return vae.config.scaling_factor * latent


def plain_predictor(unet: Any, text: dict[str, Any], size: tuple[int, int],
                    image_embeds: Sequence[torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The model's noise prediction with the prompt alone (no guidance): the inversion's pass. The adapters' scales
    are 0 meanwhile (``processors.scales_off``), so their image attention is skipped; ``image_embeds`` only satisfy the
    UNet's input check. SDXL's added conditioning: the pooled prompt and the size ids (original size, crop (0, 0),
    target size)."""
    embeds = text["prompt_embeds"]
    pooled = text.get("pooled_prompt_embeds")
    width, height = size

    def predict(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        added: dict[str, Any] = {"image_embeds": [e[-1:] for e in image_embeds]} if image_embeds else {}
        if pooled is not None:
            ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=embeds.dtype, device=z.device)
            added.update(text_embeds=torch.cat([pooled] * n), time_ids=torch.cat([ids] * n))
        return unet(z, t, encoder_hidden_states=torch.cat([embeds] * n), timestep_cond=None,
                    added_cond_kwargs=added or None, return_dict=False)[0]

    return predict


def invert(pipe: Any, scheduler: Any, text: dict[str, Any], image_embeds: Sequence[torch.Tensor],
           photo: Image.Image, request: Request, dtype: torch.dtype) -> torch.Tensor:
    """Step 1: the photo's latent, ReNoise-inverted over ``inversion_steps`` DDIM timesteps; one CPU generator
    seeded with the request's seed gives the VAE's sample, the forward noise and the regulariser's shifts."""
    assert request.seed is not None and request.inversion_steps is not None
    generator = torch.Generator("cpu").manual_seed(request.seed)
    z0 = encode_photo(pipe, photo, generator, dtype)
    predict = plain_predictor(pipe.unet, text, photo.size, image_embeds)
    return renoise_inversion(predict, scheduler, z0, request.inversion_steps, request.renoise_steps, generator)


def inversion_key(request: Request, photo_hash: str, model: str, dtype: torch.dtype) -> tuple[Any, ...]:
    """Everything the inverted latent depends on: the photo's content, the model (and its LoRAs), the prompt, the
    size, the steps and the seed (the scales, the style, the ControlNet do not enter the inversion)."""
    return (photo_hash, model, tuple(request.lora), request.prompt, request.width, request.height,
            request.inversion_steps, request.renoise_steps, request.seed, str(dtype))


@dataclass
class InversionCache:
    """Inverted latents by ``inversion_key``, the most recent ``size`` kept (on the CPU, 64 KB each at 1024 px in
    float32), so a sweep over scales or styles inverts its photo once. ``seconds``: what the last request's
    inversion cost (0 when it came from here)."""

    size: int = 16
    seconds: float = 0.0
    inverted: int = 0  # inversions run (not taken from here)

    def __post_init__(self) -> None:
        self.latents: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()

    def get(self, key: tuple[Any, ...], make: Callable[[], torch.Tensor]) -> torch.Tensor:
        import time

        if key in self.latents:
            self.latents.move_to_end(key)
            self.seconds = 0.0
            return self.latents[key]
        start = time.perf_counter()
        latent = make().detach().cpu()
        self.seconds = time.perf_counter() - start
        self.inverted += 1
        self.latents[key] = latent
        while len(self.latents) > self.size:
            self.latents.popitem(last=False)
        return latent


def call_kwargs(latent: torch.Tensor, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The denoising call from the inverted latent, as it is and through every timestep: diffusers' ControlNet
    img2img at strength 1 from given ``latents`` (no noise added, the VAE not run) is the original's
    ``image=inv_latent, denoising_start=0.0001``."""
    start = latent.to(device, dtype)
    return {"image": start, "latents": start, "strength": 1.0}


# --- 5. CSD guidance ----------------------------------------------------------------------------------------
def csd_resize(image: torch.Tensor, side: int = CSD_SIDE) -> torch.Tensor:
    """torchvision's ``Resize(side)`` of a tensor: the short side to ``side`` (the long one truncated), bilinear
    with antialiasing, as the original resizes the decoded image for CSD; then the centre ``side`` square (a no-op
    for the square images the original handles)."""
    height, width = image.shape[-2:]
    short, long = min(height, width), max(height, width)
    size = (side, int(side * long / short)) if height <= width else (int(side * long / short), side)
    resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (resized.shape[-2] - side) // 2, (resized.shape[-1] - side) // 2
    return resized[..., top : top + side, left : left + side]


@dataclass
class Guidance:
    """What CSD guidance pushes towards: the references' CSD style embedding and the photo's CSD content embedding
    (each (1, dim), unit length), with their scales."""

    csd: CsdModel
    style_target: torch.Tensor | None
    content_target: torch.Tensor | None
    style_scale: float
    content_scale: float

    def loss(self, image: torch.Tensor) -> torch.Tensor:
        """The original's loss on an image in [0, 1]: minus the scaled dot products of its CSD style and content
        embeddings with the targets (its ``spherical_dist_loss`` is ``-x @ y.T``), in float32 as the targets are (a
        half-precision CSD's embeddings are cast up: on a GPU in float16 the product would mix dtypes)."""
        from ..scores.csd import CSD_MEAN, CSD_STD, embed_pixels

        mean = torch.tensor(CSD_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CSD_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        style, content = embed_pixels((csd_resize(image) - mean) / std, self.csd)
        loss = image.new_zeros(())
        if self.style_scale and self.style_target is not None:
            loss = loss - (style.float() @ self.style_target.T).mean() * self.style_scale
        if self.content_scale and self.content_target is not None and content is not None:
            loss = loss - (content.float() @ self.content_target.T).mean() * self.content_scale
        return loss


def first_half(value: Any) -> Any:
    """The first row of the CFG batch (the negative half; the only one with one image and no CFG) of every
    tensor in a UNet call's arguments."""
    if isinstance(value, torch.Tensor):
        return value[:1]
    if isinstance(value, (list, tuple)):
        return type(value)(first_half(v) for v in value)
    if isinstance(value, dict):
        return {k: first_half(v) for k, v in value.items()}
    return value


def guided_noise(unet: Any, vae: Any, scheduler: Any, guidance: Guidance, eps: torch.Tensor, t: torch.Tensor,
                 latents: torch.Tensor, unet_kwargs: dict[str, Any]) -> torch.Tensor:
    """The step's noise prediction moved against the gradient of the CSD loss (the original's ``cond_fn``): the
    model is run again on the step's latents with the first row of its conditioning, its prediction of the clean
    latent blended with the latents by ``sqrt(1 - alpha_t)``, decoded, and CSD's loss differentiated back to the
    latents. The original runs that pass on the whole CFG batch and uses only the first image's gradient; this
    computes only that image."""
    with torch.enable_grad():
        z = latents.detach().requires_grad_(True)
        noise = unet(scheduler.scale_model_input(z, t), t, **first_half(unet_kwargs), return_dict=False)[0]
        alpha = scheduler.alphas_cumprod[t]
        beta = 1 - alpha
        x0 = (z - beta**0.5 * noise) / alpha**0.5
        fac = torch.sqrt(beta)
        sample = (x0 * fac + z * (1 - fac)) / vae.config.scaling_factor
        image = vae.decode(sample.to(vae.dtype)).sample
        image = (image.float() / 2 + 0.5).clamp(0, 1)
        loss = guidance.loss(image[0:1]).to(z.dtype)
        grads = -torch.autograd.grad(loss, z)[0]
    return (eps - torch.sqrt(beta) * grads).detach()


@contextmanager
def csd_guidance(pipe: Any, guidance: Guidance, checkpointing: bool = False) -> Iterator[None]:
    """Around the denoising call: every scheduler step takes the CSD-guided noise prediction. The UNet's
    conditioning of the step (prompt, adapters' embeddings, ControlNet residuals) is read from its own call; with
    ``checkpointing`` the UNet and the VAE's decoder recompute their activations in the backward pass (a memory
    budget)."""
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    seen: dict[str, Any] = {}
    guiding: list[bool] = []

    def capture(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not guiding:
            seen.update(kwargs)

    def step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        guiding.append(True)
        try:
            eps = guided_noise(unet, vae, scheduler, guidance, model_output, timestep, sample,
                               {k: v for k, v in seen.items() if k != "return_dict"})
        finally:
            guiding.clear()
        return type(scheduler).step(scheduler, eps, timestep, sample, *args, **kwargs)

    handle = unet.register_forward_pre_hook(capture, with_kwargs=True)
    scheduler.step = step
    toggled = [m for m in (unet, vae) if checkpointing and not getattr(m, "is_gradient_checkpointing", False)]
    for module in toggled:
        module.enable_gradient_checkpointing()
    try:
        yield
    finally:
        handle.remove()
        del scheduler.step
        for module in toggled:
            module.disable_gradient_checkpointing()


def csd_guidance_for(csd: CsdModel, request: Request, max_pixels: int | None = MAX_PIXELS) -> Guidance:
    """The request's CSD guidance: towards the references' CSD style embeddings blended by weight (with style
    guidance) and the photo's CSD content embedding (with content guidance), each through CSD's evaluation
    transform as the original computes them (the reference and the photo at their own resolution)."""
    from ..scores.csd import embed_images

    assert request.restyle is not None
    style = content = None
    if request.style_guidance:
        images = [load_image(ref.path, "style image", max_pixels) for ref in request.style]
        styles = torch.cat([embed_images([image], csd)[0] for image in images])
        total = sum(ref.weight for ref in request.style)
        weights = torch.tensor([ref.weight / total for ref in request.style], dtype=styles.dtype)[:, None]
        style = (styles * weights).sum(0, keepdim=True)
        style = F.normalize(style, dim=-1) if len(images) > 1 else style
    if request.content_guidance:
        if csd.content_head is None:
            raise UserError(f"CSD checkpoint {csd.identity} has no content head (last_layer_content) for "
                            "--content-guidance")
        content = embed_images([load_image(request.restyle, "photo to restyle", max_pixels)], csd)[1]
    return Guidance(csd, style, content, request.style_guidance, request.content_guidance)

