"""Recognising few-step models and choosing their sampling defaults.

Few-step checkpoints are ordinary SD models that want another sampler and other defaults
(DESIGN.md): latent consistency models (Luo et al. 2023) announce themselves by an
``LCMScheduler`` config or a UNet that embeds the guidance scale (``time_cond_proj_dim``);
TCD models (Zheng et al. 2024) by a ``TCDScheduler``; SD-Turbo and Hyper-SD by their names
(their scheduler configs are plain Euler/DDIM ones). LoRA variants (LCM-LoRA, Hyper-SD LoRAs,
TCD LoRAs) are recognised by their file names once loaded (``engine.lora``).

``sampling_defaults`` returns the kind and the defaults the editor should put in its form;
every one of these models runs with the ``lcm`` sampler (Algorithm 3: predict x̂₀, re-noise).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# kind → (steps, guidance). Guidance is classifier-free guidance on each call, except for
# an LCM that embeds ω, where it is the embedded scale (the teacher's usual 7.5)
DEFAULTS = {
    # Luo et al. 2023 report 2-4 steps; their pipelines default to 4 and w = 8 (ω-embedded)
    "lcm": (4, 7.5),
    # LCM-LoRA (Luo et al. 2023b): 4 steps, CFG 1-2 (1 switches the negative prompt off)
    "lcm-lora": (4, 1.5),
    # SD-Turbo / SDXL-Turbo (Sauer et al. 2023): 1 step, no classifier-free guidance
    "turbo": (1, 1.0),
    # Hyper-SD (Ren et al. 2024): the step count its name gives, no CFG
    "hyper": (4, 1.0),
    # TCD (Zheng et al. 2024): 4 steps, no CFG
    "tcd": (4, 1.0),
}
KIND_SCHEDULERS = {"LCMScheduler": "lcm", "TCDScheduler": "tcd"}
_STEPS_IN_NAME = re.compile(r"(\d+)[-_ ]?steps?", re.IGNORECASE)


@dataclass(frozen=True)
class FewStep:
    """A model's few-step kind ("" for an ordinary model) and its form defaults."""

    kind: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)


def kind_from_name(name: str) -> str:
    """The kind a file or folder name says ("lcm", "turbo", "hyper", "tcd"), else ""."""
    low = name.lower()
    for kind in ("hyper", "turbo", "tcd", "lcm"):
        if kind in low:
            return kind
    return ""


def sampling_defaults(
    scheduler_config: Mapping[str, Any],
    unet_config: Mapping[str, Any],
    name: str = "",
    lora_names: Iterable[str] = (),
) -> FewStep:
    """The few-step kind of a loaded model (with its LoRAs) and its defaults:
    ``{"sampler": "lcm", "steps": n, "guidance": g}``; an ordinary model gets ``FewStep()``."""
    kind = KIND_SCHEDULERS.get(str(scheduler_config.get("_class_name", "")), "")
    embeds_w = bool(unet_config.get("time_cond_proj_dim"))
    if embeds_w:
        kind = "lcm"
    kind = kind or kind_from_name(name)
    labels = [name]
    if not kind:
        for lora in lora_names:
            kind = kind_from_name(lora)
            if kind:
                kind = "lcm-lora" if kind == "lcm" else kind
                labels = [lora]
                break
    if not kind:
        return FewStep()
    if kind == "lcm" and not embeds_w:
        kind = "lcm-lora"  # LCMScheduler on weights without ω input: a fused LCM-LoRA
    steps, guidance = DEFAULTS[kind]
    if kind == "hyper":
        found = _STEPS_IN_NAME.search(" ".join(labels))
        steps = int(found.group(1)) if found else steps
    return FewStep(kind, {"sampler": "lcm", "steps": steps, "guidance": guidance})
