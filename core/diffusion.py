"""DDPM and DDIM as schedulers of the same shape as ``core.sampler.TokenScheduler``.

A diffusion model in the pipeline (``core.sampler.generate``) holds the noisy sample x_t as its
state: ``init_state`` draws x_T from each member's generator, ``predict(state, t, cond)`` returns
``{"x": Prediction("epsilon", eps, sample=x_t)}`` for timestep t, and ``add_band`` takes the
scheduler's x_{t-1}. The schedulers own the noise schedule and the update:

* ``DDPMScheduler``: ancestral sampling with the posterior variance beta-tilde (Ho et al. 2020);
  with fewer steps than the training schedule it runs on the respaced schedule.
* ``DDIMScheduler``: the deterministic update (eta = 0, Song et al. 2021).

Both clip the predicted clean sample to [-1, 1] at every step; DDIM recomputes the noise that goes
with the clipped x0 (with the raw guided prediction the state drifts off the schedule whenever the
clip acts, and errors compound). Guidance combines the doubled batch's two noise predictions with
the weight of each step (``core.sampler.Guidance``: a ramp runs from the first, noisiest step).
"""
from __future__ import annotations

import torch

from core.sampler import Guidance, guide


def respaced_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps from T-1 down to 0, evenly spaced."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling steps must be in 1..{timesteps}, got {steps}")
    return torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()


class DDPMScheduler:
    deterministic = False

    def __init__(self, alphas_cumprod: torch.Tensor, steps: int, guidance: Guidance | None = None):
        self.alphas_cumprod = alphas_cumprod
        self.steps = int(steps)
        self.guidance = guidance or Guidance()
        self.timesteps = respaced_timesteps(len(alphas_cumprod), self.steps)
        self.weights: list[float] = []

    @property
    def guided(self) -> bool:
        return self.guidance.guided

    def set_scales(self, num_scales: int):
        if num_scales != self.steps:
            raise ValueError(f"the model runs {num_scales} steps but the scheduler was set for {self.steps}")
        self.weights = self.guidance.weights(self.steps)

    def _x0(self, pred, k: int):
        eps = guide(pred.value, self.weights[k]) if self.guided else pred.value
        x = pred.sample[: len(eps)]
        t = self.timesteps[k]
        abar = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[self.timesteps[k + 1]] if k + 1 < self.steps else abar.new_tensor(1.0)
        x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
        return x, eps, x0, abar, abar_prev

    def step(self, predictions: dict, k: int, generators: list[torch.Generator], condition_fn=None) -> dict:
        x, _, x0, abar, abar_prev = self._x0(predictions["x"], k)
        beta = 1 - abar / abar_prev  # the (respaced) step's beta
        x = (abar_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - abar_prev) * x) / (1 - abar)
        if k + 1 < self.steps:
            noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x)
            x = x + (beta * (1 - abar_prev) / (1 - abar)).sqrt() * noise
        else:
            x = x.clamp(-1, 1)
        return {"x": x}


class DDIMScheduler(DDPMScheduler):
    deterministic = True

    def step(self, predictions: dict, k: int, generators: list[torch.Generator], condition_fn=None) -> dict:
        x, _, x0, abar, abar_prev = self._x0(predictions["x"], k)
        eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
        if k + 1 == self.steps:
            x = x.clamp(-1, 1)
        return {"x": x}
