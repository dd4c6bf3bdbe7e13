"""Headless use: ``python -m engine generate|sdedit|… [options]`` and ``python -m engine bench``.

Every method the engine registers gets a sub-command with the same common options;
method-specific parameters go in ``--option key=value`` (repeatable).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .errors import EngineError
from .metadata import save_png


def _load_rgb(path: str) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise EngineError(f"Cannot read the image {path}: {e}") from e


def _load_rgba(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA"))


def _load_mask(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="builtin:demo (default), builtin:tiny, a diffusers folder or a .safetensors file",
    )
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--dtype", default=None, help="fp16, fp32 or bf16 (default: per device)")
    p.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction"),
        help="override for SD 2.x single files, whose weights do not say",
    )
    p.add_argument("--prompt", "-p", default="")
    p.add_argument("--negative-prompt", "-n", default="")
    p.add_argument("--image", "-i", help="input image (PNG, JPEG, …)")
    p.add_argument("--strokes", help="RGBA stroke layer composited over the image")
    p.add_argument("--mask", help="greyscale mask, white = edit")
    p.add_argument("--strength", type=float, default=0.6)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", "--cfg", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument(
        "--option",
        "-O",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method-specific parameter, e.g. -O jump_length=5",
    )
    p.add_argument("--output", "-o", help="output PNG (default: METHOD.png, e.g. sdedit.png)")


def build_request(method: str, a: argparse.Namespace):
    from .types import EditRequest

    options = {}
    for item in a.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise EngineError(f"--option needs KEY=VALUE, got {item!r}")
        options[key.strip()] = _parse_value(value)
    return EditRequest(
        method=method,
        prompt=a.prompt,
        negative_prompt=a.negative_prompt,
        image=_load_rgb(a.image) if a.image else None,
        strokes=_load_rgba(a.strokes) if a.strokes else None,
        mask=_load_mask(a.mask) if a.mask else None,
        width=a.width,
        height=a.height,
        steps=a.steps,
        guidance=a.guidance,
        strength=a.strength,
        seed=a.seed,
        options=options,
    )


def run_method(method: str, a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .engine import Engine
    from .models import DEFAULT_MODEL
    from .types import Failed, Finished, ModelLoaded, Step

    out = Path(a.output or f"{method}.png")
    if a.image and out.resolve() == Path(a.image).resolve():
        # a result written over its input would lose the user's picture
        print(f"error: {out} is the input image; choose another --output", file=sys.stderr)
        return 2
    request = build_request(method, a)
    engine = Engine()
    try:
        load = engine.wait(
            engine.load_model(a.model or DEFAULT_MODEL, a.device, a.dtype, a.prediction_type)
        )
        if not isinstance(load, ModelLoaded):
            print(f"error: {load.message}", file=sys.stderr)
            return 2
        info = load.info
        print(f"model {info.name} on {info.device} ({info.dtype})", file=sys.stderr)
        bar = tqdm(total=None, desc=method, unit="step", file=sys.stderr)

        def on_event(ev):
            if isinstance(ev, Step):
                bar.total = ev.n
                bar.set_postfix_str(ev.label or f"t={ev.timestep}", refresh=False)
                bar.update(ev.i - bar.n)

        result = engine.run(request, on_event)
        bar.close()
        if isinstance(result, Failed):
            print(f"error: {result.message}", file=sys.stderr)
            return 1
        assert isinstance(result, Finished)
        if result.image is not None:
            save_png(result.image, out, result.parameters)
            print(f"wrote {out}", file=sys.stderr)
        extra_mask = result.extras.get("mask")
        if extra_mask is not None:
            from PIL import Image

            mask_path = out.with_name(out.stem + "-mask.png")
            Image.fromarray(extra_mask).save(mask_path)
            print(f"wrote {mask_path}", file=sys.stderr)
        return 0
    finally:
        engine.shutdown()


def main(argv: list[str] | None = None) -> int:
    from .jobs import JOB_RUNNERS

    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for method in sorted(JOB_RUNNERS):
        add_common(sub.add_parser(method, help=f"run {method}"))
    from . import bench

    bench.add_parser(sub)
    a = parser.parse_args(argv)
    try:
        if a.command == "bench":
            return bench.run(a)
        return run_method(a.command, a)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
