"""Shared by the attention-control tests (SD and SDXL): a controller for a prompt pair and a
Prompt-to-Prompt re-edit replayed over an inversion."""

from engine.algorithms.common import run_to_end
from engine.algorithms.prompt_to_prompt import AttentionControl, align_tokens, prompt_to_prompt
from engine.prompts import token_weights


def control_for(a: str, b: str, tokenizer, **kw) -> AttentionControl:
    """The controller that edits prompt ``a`` into ``b`` (one step; ``kw``: its τ and blend)."""
    ids = [token_weights(tokenizer, p).ids for p in (a, b)]
    return AttentionControl(align_tokens(*ids, tokenizer.model_max_length - 2), steps=1, **kw)


def p2p_over(d, inv, target: str, control: AttentionControl):
    """The final latents of ``inv``'s picture re-edited towards ``target`` under ``control``;
    the source branch follows the inversion's trajectory (corrected onto it for direct)."""
    return run_to_end(
        prompt_to_prompt(
            d,
            inv.trajectory[0],
            inv.timesteps,
            d.encode_text(inv.prompt),
            d.encode_text(target),
            inv.guidance,
            inv.null_embeddings,
            control,
            anchor=inv.trajectory,
            correct=inv.method == "direct",
        )
    )
