"""ReNoise inversion (Garibi et al. 2024, "ReNoise: Real Image Inversion Through Iterative Noising"), as
InstantStyle-Plus runs it: a photo's latent carried up the DDIM timesteps to the noise that denoises back to it.

Each step inverts DDIM from ``z_{t-1}`` to ``z_t``: the noise prediction needed for the DDIM step is taken at the
unknown ``z_t`` itself, approximated by renoising: predict at the current estimate, invert with that prediction,
repeat (``renoise_steps`` times). Below ``t = 250`` the predictions of the first renoise iterations are averaged
and every prediction is regularised (pix2pix-zero's noise regularisation: a patch-wise KL divergence to the
prediction at the forward-noised latent, and auto-correlation at random shifts) before it is used. Settings are the
original's defaults (``RenoiseSettings``); its noise correction is off in InstantStyle-Plus and is not here.
Randomness comes from one CPU generator, in the original's order: the VAE's sample, the forward noise, then the
auto-correlation's shifts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: A noise prediction: (latents (n, 4, h, w), timestep) -> epsilon of the same shape.
Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RenoiseSettings:
    """ReNoise's defaults (the original's ``RunConfig``) for a DDIM inversion of an SD model."""

    first_steps_below: int = 250  # timesteps below this are the "first steps": averaged and regularised
    max_renoise_first: int = 5  # at most this many renoise iterations there
    average_first: tuple[int, int] = (0, 5)  # iterations averaged in the first steps, [lo, hi)
    average_rest: tuple[int, int] = (8, 10)  # and in the others (never reached with fewer renoise iterations)
    lambda_ac: float = 20.0
    lambda_kl: float = 0.065
    regularisation_steps: int = 4
    ac_rolls: int = 5


def ddim_inverse_step(scheduler: object, eps: torch.Tensor, t: torch.Tensor, z_prev: torch.Tensor,
                      num_steps: int) -> torch.Tensor:
    """DDIM (eta 0) solved for ``z_t`` given ``z_{t-1}`` and the noise prediction (DDIM paper, eq. 12, inverted):
    ``z_t = sqrt(a_t / a_prev) * (z_prev - sqrt(1 - a_prev) * eps) + sqrt(1 - a_t) * eps``, in the original's order
    of operations."""
    alphas = scheduler.alphas_cumprod  # type: ignore[attr-defined]
    prev = t - scheduler.config.num_train_timesteps // num_steps  # type: ignore[attr-defined]
    a_t = alphas[t]
    a_prev = alphas[prev] if prev >= 0 else scheduler.final_alpha_cumprod  # type: ignore[attr-defined]
    b_t = 1 - a_t
    direction = (1 - a_prev) ** 0.5 * eps
    return (a_t**0.5 * z_prev) / a_prev**0.5 + (a_prev**0.5 * b_t**0.5 * eps) / a_prev**0.5 - (
        a_t**0.5 * direction) / a_prev**0.5


def patch_kl(x: torch.Tensor, y: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Sum over 4x4x4 patches of |KL| between Gaussians fitted to ``x``'s and ``y``'s patch values (pix2pix-zero)."""
    def patches(t: torch.Tensor) -> torch.Tensor:
        p = t.unfold(1, patch, patch).unfold(2, patch, patch).unfold(3, patch, patch)
        return p.contiguous().view(-1, t.shape[1], patch * patch)

    eps = 1e-6
    a, b = patches(x), patches(y)
    mu_a, mu_b, var_a, var_b = a.mean(-1), b.mean(-1), a.var(-1), b.var(-1)
    kl = torch.log((var_b + eps) / (var_a + eps)) + (var_a + (mu_a - mu_b) ** 2) / (var_b + eps) - 1
    return kl.abs().sum(-1).sum()


def auto_correlation(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Squared auto-correlation of each channel with itself shifted by a random amount, over an average-pooled
    pyramid down to 8 px (pix2pix-zero); one shift is drawn per channel and level."""
    loss = x.new_zeros(())
    for channel in x[0]:
        noise = channel[None, None]
        while True:
            shift = int(torch.randint(0, noise.shape[2] // 2, (1,), generator=generator).item())
            loss = loss + (noise * torch.roll(noise, shifts=shift, dims=2)).mean() ** 2
            loss = loss + (noise * torch.roll(noise, shifts=shift, dims=3)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return loss


@torch.enable_grad()
def regularise(eps: torch.Tensor, optimal: torch.Tensor, s: RenoiseSettings,
               generator: torch.Generator | None) -> torch.Tensor:
    """ReNoise's noise regularisation: gradient steps pulling ``eps`` towards the patch statistics of ``optimal``
    (the prediction at the forward-noised latent) and away from spatial auto-correlation."""
    for _ in range(s.regularisation_steps):
        if s.lambda_kl > 0:
            var = eps.detach().clone().requires_grad_(True)
            grad = torch.autograd.grad(patch_kl(var, optimal), var)[0]
            eps = eps - s.lambda_kl * torch.clip(grad, -100, 100)
        if s.lambda_ac > 0:
            for _ in range(s.ac_rolls):
                var = eps.detach().clone().requires_grad_(True)
                grad = torch.autograd.grad(auto_correlation(var, generator), var)[0]
                eps = eps - s.lambda_ac * (grad / s.ac_rolls)
        eps = eps.detach()
    return eps


def renoise_step(predict: Predict, scheduler: object, z_prev: torch.Tensor, z_forward: torch.Tensor, t: torch.Tensor,
                 num_steps: int, renoise_steps: int, generator: torch.Generator | None,
                 s: RenoiseSettings) -> torch.Tensor:
    """One inversion step ``z_{t-1} -> z_t`` by renoising; ``z_forward`` is the photo's latent noised to ``t`` by
    the forward process (the regularisation's target)."""
    first = int(t) < s.first_steps_below
    lo, hi = s.average_first if first else s.average_rest
    iterations = min(s.max_renoise_first, renoise_steps) if first else renoise_steps
    regularised = s.regularisation_steps > 0 and iterations >= lo  # else the target is never needed
    estimate, mean, optimal = z_prev, None, None
    for i in range(iterations + 1):
        with torch.no_grad():
            if i == 0 and regularised:  # the target's prediction rides along in the first pass
                optimal, eps = predict(torch.cat([z_forward, estimate]), t).chunk(2)
            else:
                eps = predict(estimate, t)
        if lo <= i < hi:
            j = i - lo
            mean = eps.clone() if mean is None else j * mean / (j + 1) + eps / (j + 1)
        if i >= lo:
            assert optimal is not None
            eps = regularise(eps, optimal, s, generator)
        estimate = ddim_inverse_step(scheduler, eps, t, z_prev, num_steps).detach()
    if mean is not None:  # the averaged prediction makes the step
        assert optimal is not None
        estimate = ddim_inverse_step(scheduler, regularise(mean, optimal, s, generator), t, z_prev, num_steps)
    return estimate.detach()


def renoise_inversion(predict: Predict, scheduler: object, z0: torch.Tensor, num_steps: int, renoise_steps: int,
                      generator: torch.Generator | None, s: RenoiseSettings | None = None) -> torch.Tensor:
    """The photo's latent ``z0`` inverted over ``num_steps`` DDIM timesteps, ascending (the last one is the noise
    the denoising starts from). The forward noise is drawn from ``generator`` first."""
    from diffusers.utils.torch_utils import randn_tensor

    s = s or RenoiseSettings()
    scheduler.set_timesteps(num_steps, device=z0.device)  # type: ignore[attr-defined]
    noise = randn_tensor(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    z = z0
    for t in reversed(scheduler.timesteps):  # type: ignore[attr-defined]
        z_forward = scheduler.add_noise(z0, noise, t.view(1)).detach()  # type: ignore[attr-defined]
        z = renoise_step(predict, scheduler, z, z_forward, t, num_steps, renoise_steps, generator, s)
    return z
