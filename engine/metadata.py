"""Generation parameters in the A1111 ``parameters`` PNG text chunk — the format most tools read.

a red house under a sunset sky
Negative prompt: blurry
Steps: 25, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 128x128, Model: builtin:demo, ...
"""

from __future__ import annotations

import math
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
    "lora_hashes": "Lora hashes",
}
SKIP = {"prompt", "negative_prompt", "loras"}


# A1111's LoRA tag: <lora:name:weight> (the weight may be left out: 1)
LORA_TAG = re.compile(r"\s*<lora:([^:>]+)(?::([-+]?[\d.]+))?>")


def lora_tags(loras) -> str:
    """The loaded LoRAs ({"name", "weight", "hash"} each) as A1111's prompt tags."""
    return " ".join(f"<lora:{x['name']}:{float(x['weight']):g}>" for x in loras)


def format_parameters(params: Mapping[str, Any]) -> str:
    """The A1111 text. LoRAs (``params["loras"]``, engine.lora.describe) are written as A1111
    writes them: ``<lora:name:weight>`` at the end of the prompt and a "Lora hashes" field."""
    loras = list(params.get("loras") or [])
    prompt = str(params.get("prompt", ""))
    if loras:
        prompt = f"{prompt} {lora_tags(loras)}".strip()
        hashes = ", ".join(f"{x['name']}: {x['hash']}" for x in loras if x.get("hash"))
        params = {**params, "lora_hashes": hashes or None}
    lines = [prompt]
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


def _cast(spec, text: str) -> Any:
    if spec.kind is bool:
        if text not in ("True", "False"):
            raise ValueError(text)
        return text == "True"
    value = spec.kind(text)
    if spec.choices and value not in spec.choices:
        # A1111 capitalises its sampler names ("LCM", "DDIM"); ours are lower case
        folded = {str(c).lower(): c for c in spec.choices}
        if str(value).lower() not in folded:
            raise ValueError(text)
        value = folded[str(value).lower()]
    return value


def _accepts(spec) -> str:
    if spec.choices:
        return "one of " + ", ".join(spec.choices)
    if spec.kind is bool:
        return "True or False"
    if spec.kind in (int, float):
        kind = "a whole number" if spec.kind is int else "a number"
        return f"{kind} from {spec.lo:g} to {spec.hi:g}"
    return "text"


def split_lora_tags(prompt: str, hashes: str = "") -> tuple[str, list[dict[str, Any]]]:
    """A1111's ``<lora:name:weight>`` tags taken out of a prompt: (the prompt without them,
    [{"name", "weight", "hash"}] in order; "hash" from a "Lora hashes" field, else "")."""
    known = {}
    for item in hashes.split(","):
        name, _, value = item.rpartition(":")
        if name.strip():
            known[name.strip()] = value.strip()
    loras = [
        {"name": m.group(1), "weight": float(m.group(2) or 1.0), "hash": known.get(m.group(1), "")}
        for m in LORA_TAG.finditer(prompt)
    ]
    return LORA_TAG.sub("", prompt).strip() if loras else prompt, loras


def lora_fields(parsed: Mapping[str, str]) -> list[dict[str, Any]]:
    """The LoRAs an image was made with: [{"name", "weight", "hash"}] from the prompt's tags
    and the "Lora hashes" field (``split_lora_tags``)."""
    return split_lora_tags(parsed.get("prompt", ""), parsed.get("Lora hashes", ""))[1]


def request_fields(parsed: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Parsed A1111 fields → the request fields and method options they hold, each read
    through its declaration in ``engine.methods`` (type, bounds, choices), and a sentence for
    each value that does not fit its declaration (that value is left out). LoRA tags are taken
    out of the prompt: they are the model's state, read by ``lora_fields``."""
    from .methods import COMMON, METHODS

    prompt, _ = split_lora_tags(parsed.get("prompt", ""))
    out: dict[str, Any] = {"prompt": prompt}
    if "Negative prompt" in parsed:
        out["negative_prompt"] = parsed["Negative prompt"]
    method = parsed.get("Method")
    if method in METHODS:
        out["method"] = method
    declared = {LABELS.get(k, k.capitalize()): (k, s) for k, s in COMMON.items()}
    options = METHODS[method].options if method in METHODS else {}
    declared.update({k.replace("_", " ").capitalize(): (k, s) for k, s in options.items()})
    problems, opts = [], {}
    for label, (key, spec) in declared.items():
        if label not in parsed or spec.kind is None:
            continue
        if key == "sampler" and parsed[label] == "DDIM":
            continue  # the A1111 default every image gets, not RePaint's option
        try:
            value = _cast(spec, parsed[label])
            if spec.lo is not None and not spec.lo <= value <= spec.hi:
                raise ValueError(value)
        except ValueError:
            problems.append(f"{label} is {parsed[label]!r}; it must be {_accepts(spec)}.")
            continue
        (out if key in COMMON else opts)[key] = value
    if opts:
        out["options"] = opts
    return out, problems


def _field_keys() -> dict[str, str]:
    """Label → key for every field ``format_parameters`` writes: ``LABELS`` and the label
    made from each declared option's key ("Source prompt" → source_prompt, "Eta" → eta)."""
    from .methods import COMMON, METHODS

    keys = {label: key for key, label in LABELS.items()}
    for declared in (COMMON, *(m.options for m in METHODS.values())):
        for key in declared:
            keys.setdefault(key.replace("_", " ").capitalize(), key)
    return keys


def describe_parameters(parsed: Mapping[str, str]) -> dict[str, Any]:
    """A picture's parsed parameters under the keys the engine writes them from: ``prompt``
    (LoRA tags taken out), ``loras`` (when there are any), ``negative_prompt`` and every
    other field (text, as written; a label this version does not declare stays as it is)."""
    prompt, loras = split_lora_tags(parsed.get("prompt", ""))
    out: dict[str, Any] = {"prompt": prompt, **({"loras": loras} if loras else {})}
    if parsed.get("Negative prompt"):
        out["negative_prompt"] = parsed["Negative prompt"]
    keys = _field_keys()
    for label, value in parsed.items():
        if label not in ("prompt", "Negative prompt", "Lora hashes"):
            out[keys.get(label, label)] = value
    return out


class NotReplayable(ValueError):
    """A picture whose parameters do not replay a generation; the message says why."""


def replay_of(p: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields that replay the text-to-image generation a picture's parameters
    record (``p`` under the engine's keys, from a result or ``describe_parameters``):
    ``prompt``, ``negative_prompt``, ``steps``, ``guidance``, ``seed``, ``width``,
    ``height`` and ``eta`` (the ddpm sampler is η = 1). A result of Edit prompt replays the
    generation it edited. Raises ``NotReplayable`` saying what is missing."""
    keys = _field_keys()  # descriptions kept by earlier versions have some labels ("Eta")
    p = {keys.get(k, k): v for k, v in p.items()}
    method = p.get("method", "generate")
    if method not in ("generate", "edit_generated"):
        raise NotReplayable(f"it was made by {method}, not generated")
    prompt = p.get("source_prompt") if method == "edit_generated" else p.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise NotReplayable("its parameters have no prompt")
    try:
        out = {
            "prompt": prompt,
            "negative_prompt": str(p.get("negative_prompt", "")),
            "steps": _number(p["steps"], int),
            "guidance": _number(p["guidance"], float),
            "seed": _number(p["seed"], int),
        }
        w, h = (int(x) for x in str(p["size"]).lower().split("x"))
    except (KeyError, ValueError, TypeError) as e:
        raise NotReplayable(f"its parameters lack {e}") from None
    eta = 0.0
    if str(p.get("sampler", "")).lower() == "ddpm":
        eta = 1.0
    else:
        try:
            eta = _number(p.get("eta", 0.0), float)
        except (TypeError, ValueError):
            pass
    return {**out, "width": w, "height": h, "eta": eta if 0.0 <= eta <= 1.0 else 0.0}


def _number(v: Any, kind: type) -> Any:
    """A number from parameters (a PNG's are text)."""
    if isinstance(v, bool):
        raise ValueError(v)
    x = kind(float(v)) if kind is int and isinstance(v, str) else kind(v)
    if kind is float and not math.isfinite(x):
        raise ValueError(v)
    return x


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
