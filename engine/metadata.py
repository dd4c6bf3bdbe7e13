"""Generation parameters in the A1111 ``parameters`` PNG text chunk — the format most tools read.

a red house under a sunset sky
Negative prompt: blurry
Steps: 25, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 128x128, Model: builtin:demo, ...
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from .images import atomic_write

# our parameter names → A1111's labels (others are written with their own names)
LABELS = {
    "steps": "Steps",
    "sampler": "Sampler",
    "guidance": "CFG scale",
    "seed": "Seed",
    "size": "Size",
    "model": "Model",
    "strength": "Denoising strength",
    "method": "Method",
}
SKIP = {"prompt", "negative_prompt"}


def format_parameters(params: Mapping[str, Any]) -> str:
    lines = [str(params.get("prompt", ""))]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    order = ["steps", "sampler", "guidance", "seed", "size", "model", "strength"]
    merged = {"sampler": "DDIM", **params}
    fields = {k: merged[k] for k in order if k in merged}
    fields.update({k: v for k, v in merged.items() if k not in fields})
    items = []
    for key, value in fields.items():
        if key in SKIP or value is None or isinstance(value, (np.ndarray, bytes)):
            continue
        if not isinstance(value, (str, int, float, bool)):
            continue  # opaque objects (an inversion) have no text form
        label = LABELS.get(key, key.replace("_", " ").capitalize())
        text = str(value)
        if any(c in text for c in ',:"\n'):
            text = '"' + text.replace('"', "'").replace("\n", " ") + '"'
        items.append(f"{label}: {text}")
    lines.append(", ".join(items))
    return "\n".join(lines)


_FIELD = re.compile(r'\s*([\w \-/]+):\s*("(?:[^"]*)"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, str]:
    """Parse the A1111 text back into {label: value} plus "prompt"/"Negative prompt"."""
    lines = text.rstrip("\n").split("\n")  # an empty prompt is an empty first line
    out: dict[str, str] = {}
    last = lines[-1] if len(lines) > 1 or "Steps:" in lines[-1] else ""
    body = lines[:-1] if last else lines
    prompt, neg, in_neg = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_neg = True
            line = line[len("Negative prompt:") :].strip()
        (neg if in_neg else prompt).append(line)
    out["prompt"] = "\n".join(prompt)
    if neg:
        out["Negative prompt"] = "\n".join(neg)
    for m in _FIELD.finditer(last):
        key, value = m.group(1).strip(), m.group(2).strip()
        if key:
            out[key] = value[1:-1] if value.startswith('"') else value
    return out


def save_png(image: np.ndarray, path: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """Write a PNG with the parameters chunk, atomically (temp file, then rename)."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", format_parameters(params))
    return atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG", pnginfo=info))


def read_png_parameters(path: str | os.PathLike) -> dict[str, str] | None:
    with Image.open(path) as im:
        text = im.info.get("parameters")
    return parse_parameters(text) if text else None
