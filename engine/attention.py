"""Attention hooks on the UNet: see and change attention probabilities, for one job.

``hooked(unet, hook)`` installs ``HookedAttention`` on every attention layer of the UNet for
the duration of a ``with`` block and puts the previous processors back however the block
ends (cancel, error). A layer the hook does not want at this step runs the fused SDPA path,
so a hook costs only the layers it controls or records.

A hook takes over the last ``rows`` rows of the batch at the layers it wants: it gets their
queries, keys and values (rows x heads x positions x channels; for cross-attention the keys
are the prompt's tokens, for self-attention the image's positions) and returns their output;
the rows before them (a guided batch's unconditional passes) still run the fused path.
``probabilities`` writes out the softmax for the hook where it needs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
import torch.nn.functional as F


class AttentionHook(Protocol):
    rows: int  # the last rows of the batch that the hook computes

    def wants(self, name: str, cross: bool, queries: int) -> bool:
        """Whether this layer's attention is the hook's now (else the fused path runs)."""

    def attend(self, query, key, value, scale: float, mask, name: str, cross: bool):
        """The hook's rows of this layer (rows x heads x positions x channels; ``mask``: the
        additive attention mask of those rows, or None) → their attention output."""


def probabilities(query, key, scale: float, mask=None) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) in float32, as the fused path computes it."""
    scores = (query @ key.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    return scores.float().softmax(-1)


class HookedAttention:
    """diffusers attention processor: the SDPA processor's computation (same projections,
    norms, scale), with the hook's rows handed to the hook where it wants the layer."""

    def __init__(self, name: str, hook: AttentionHook):
        self.name = name
        self.hook = hook

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        cross = encoder_hidden_states is not None
        context = encoder_hidden_states if cross else hidden_states
        batch, keys = context.shape[0], context.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, keys, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if self.hook.wants(self.name, cross, query.shape[2]):
            r = self.hook.rows
            mask = None if attention_mask is None else attention_mask[-r:]
            out = self.hook.attend(
                query[-r:], key[-r:], value[-r:], attn.scale, mask, self.name, cross
            )
            if batch > r:  # the rows before the hook's, fused
                free = None if attention_mask is None else attention_mask[:-r]
                rest = F.scaled_dot_product_attention(
                    query[:-r], key[:-r], value[:-r], attn_mask=free
                )
                out = torch.cat([rest, out.to(rest.dtype)])
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if four_d:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def hooked(unet, hook: AttentionHook) -> Iterator[None]:
    """Every attention layer of ``unet`` hands its rows to ``hook`` inside the block;
    the processors that were there before are restored on the way out."""
    before = dict(unet.attn_processors)
    unet.set_attn_processor({name: HookedAttention(name, hook) for name in before})
    try:
        yield
    finally:
        unet.set_attn_processor(before)


def is_hooked(unet) -> bool:
    return any(isinstance(p, HookedAttention) for p in unet.attn_processors.values())
