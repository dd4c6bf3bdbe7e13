"""The denoiser: UNet + text conditioning + classifier-free guidance → (ε̂, x̂₀).

Algorithms see only this object: they never touch the UNet, the tokenizer or the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import ModelBundle


@dataclass(frozen=True)
class Conditioning:
    """Text embeddings for one job. ``uncond`` is None when guidance is off."""

    cond: torch.Tensor  # 1 x L x D
    uncond: torch.Tensor | None = None


@dataclass(frozen=True)
class Prediction:
    eps: torch.Tensor
    x0: torch.Tensor


class Denoiser:
    """Wraps a ``ModelBundle`` for the sampling loops.

    ``predict`` batches the conditional and unconditional passes into one UNet call and
    applies classifier-free guidance (Ho & Salimans 2022, eq. 6):
    ε̃ = ε(x, ∅) + w · (ε(x, c) − ε(x, ∅)); w = 1 skips the unconditional pass.
    """

    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.schedule = bundle.schedule
        self.device = bundle.device
        self.dtype = bundle.dtype
        self._cache: dict[str, torch.Tensor] = {}
        self.unet_calls = 0  # counted per sample in the batch that a user asked for

    # ---- text ---------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """CLIP last hidden state for a prompt, padded to the tokenizer's max length (cached)."""
        if text not in self._cache:
            tok = self.bundle.tokenizer
            ids = tok(
                text,
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            emb = self.bundle.text_encoder(ids)[0]
            self._cache[text] = emb.to(self.dtype)
        return self._cache[text]

    def condition(self, prompt: str, negative_prompt: str = "", guidance: float = 1.0):
        """Embeddings for a prompt; the negative prompt becomes the unconditional branch."""
        cond = self.encode_text(prompt)
        uncond = self.encode_text(negative_prompt) if guidance != 1.0 else None
        return Conditioning(cond, uncond)

    # ---- one model call -----------------------------------------------------------------

    def model_output(self, x: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
        """Raw UNet output for a batch (broadcasting a single embedding over it)."""
        if emb.shape[0] != x.shape[0]:
            emb = emb.expand(x.shape[0], -1, -1)
        tt = torch.full((x.shape[0],), int(t), device=self.device, dtype=torch.long)
        out = self.bundle.unet(x.to(self.dtype), tt, encoder_hidden_states=emb.to(self.dtype))
        return out.sample.to(x.dtype)

    def predict(
        self,
        x: torch.Tensor,
        t: int,
        cond: Conditioning | torch.Tensor,
        guidance: float = 1.0,
        uncond: torch.Tensor | None = None,
    ) -> Prediction:
        """Guided ε̂ and x̂₀ at timestep t for latents x (N x C x h x w).

        ``cond`` may be a Conditioning or a raw embedding (then ``uncond`` gives the
        unconditional embedding, e.g. the optimised one of null-text inversion)."""
        if isinstance(cond, Conditioning):
            cond, uncond = cond.cond, cond.uncond if uncond is None else uncond
        n = x.shape[0]
        if guidance == 1.0 or uncond is None:
            out = self.model_output(x, t, cond)
        else:
            e_c = cond.expand(n, -1, -1) if cond.shape[0] != n else cond
            e_u = uncond.expand(n, -1, -1) if uncond.shape[0] != n else uncond
            both = self.model_output(torch.cat([x, x]), t, torch.cat([e_u, e_c]))
            out_u, out_c = both.chunk(2)
            # guidance mixes network outputs; for v-prediction this is equivalent to mixing ε
            # because ε is affine in v at fixed x_t and t
            out = out_u + guidance * (out_c - out_u)
        self.unet_calls += 1
        eps, x0 = self.schedule.eps_x0(out, x, t)
        return Prediction(eps, x0)
