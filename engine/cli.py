"""Headless use: ``python -m engine generate|sdedit|… [options]``, ``python -m engine methods``
and ``python -m engine bench``.

Every method declared in ``engine.methods`` gets a sub-command with the common options and one
flag per method option (``--jump-length 5``), each with the declared default and bounds in its
``--help``; ``--option key=value`` (repeatable) sets any option too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np

from .errors import EngineError, FileError, InputError
from .fast import ENV_FAST
from .metadata import save_png
from .methods import COMMON, METHODS, OptionSpec, describe_all


class UsageError(InputError):
    """The command line itself is malformed (unknown flag, missing value, bad number)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is a UsageError (one line, exit code 2) instead of usage text
    and ``sys.exit`` in the middle of ``main``."""

    def error(self, message: str):
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _parse_value(text: str):
    """An option value: JSON when it parses (numbers, true/false, null), else the text."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text


def _help(spec: OptionSpec, default=True) -> str:
    """A flag's help from its declaration: the sentence, what it accepts, its default."""
    text = spec.help.replace("%", "%%")
    if spec.choices:
        text += f" One of: {', '.join(spec.choices)}."
    elif spec.lo is not None and spec.hi - spec.lo < 1e6:
        text += f" From {spec.lo:g} to {spec.hi:g}."
    if default and spec.default not in (None, ""):
        text += f" Default: {spec.default}."
    if spec.requires:
        text += f" Only for models that ship a {spec.requires} (the demo model does)."
    return text


def _common(p: argparse.ArgumentParser, name: str, *flags: str) -> None:
    spec = COMMON[name]
    flags = flags or (f"--{name}",)
    # None when not given (the request then takes the declared default): Edit prompt reads
    # what was not given from the picture's parameters
    p.add_argument(*flags, dest=name, type=spec.kind, default=None, help=_help(spec))


def add_common(p: argparse.ArgumentParser, method: str | None = None) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="builtin:demo (default), builtin:tiny, builtin:tiny-xl, a diffusers folder or a "
        ".safetensors file (SD 1.x, 2.x, SDXL)",
    )
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    p.add_argument("--dtype", default=None, help="fp16, fp32 or bf16 (default: per device)")
    p.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction"),
        help="override for SD 2.x single files, whose weights do not say",
    )
    p.add_argument("--prompt", "-p", default="")
    p.add_argument("--negative-prompt", "-n", default=None)
    p.add_argument("--image", "-i", help="input image (PNG, JPEG, …)")
    p.add_argument("--strokes", help="RGBA stroke layer composited over the image")
    p.add_argument("--mask", help="greyscale mask, white = edit")
    _common(p, "strength")
    _common(p, "steps")
    _common(p, "guidance", "--guidance", "--cfg")
    _common(p, "seed")
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
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:WEIGHT]",
        help="a LoRA .safetensors fused into the model at WEIGHT (default 1); repeatable",
    )
    p.add_argument("--output", "-o", help="output PNG (default: METHOD.png, e.g. sdedit.png)")
    p.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the UNet and VAE decoder first and run compiled (engine.fast; minutes "
        "on a CPU the first time, seconds once cached); pays for long jobs only. Default: "
        "off for one command unless DIFFUSION_EDITOR_FAST=1",
    )
    if method is not None:
        add_options(p, method)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_options(p: argparse.ArgumentParser, method: str) -> None:
    """One flag per declared option. Values stay as typed (JSON numbers, true/false, text) so
    the engine's validation gives the one error message for every bad value."""
    group = p.add_argument_group(f"{method} options")
    for name, spec in METHODS[method].options.items():
        text = spec.kind in (str, None)
        group.add_argument(
            _flag(name),
            dest=f"option_{name}",
            type=str if text else _parse_value,
            default=None,
            metavar=name.upper(),
            help=_help(spec),
        )


def parse_options(items: list[str], a: argparse.Namespace | None = None) -> dict:
    """``-O KEY=VALUE`` items and the option flags set in ``a`` → a dict; names and values
    are checked by the engine's request validation (``engine.jobs.base.validate``)."""
    options = {}
    for key, value in (vars(a) if a is not None else {}).items():
        if key.startswith("option_") and value is not None:
            options[key[len("option_") :]] = value
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option needs KEY=VALUE, got {item!r}.")
        if key.strip() in options:
            raise UsageError(f"The option {key.strip()!r} is given twice.")
        options[key.strip()] = _parse_value(value)
    return options


def build_request(method: str, a: argparse.Namespace):
    """Read every input through engine.images and validate the request, without a model."""
    from .images import load_image, load_mask, load_strokes
    from .jobs.base import validate
    from .jobs.edits import load_inversion
    from .types import EditRequest

    options = parse_options(a.option, a)
    if METHODS[method].image and not a.image:
        raise UsageError(f"{method} needs an input image: give it with --image FILE.")
    image = load_image(a.image) if a.image else None
    size = None if image is None else image.shape[:2]
    if method == "reedit" and isinstance(options.get("inversion"), str):
        options["inversion"] = load_inversion(options["inversion"])
    given = {
        k: getattr(a, k)
        for k in ("negative_prompt", "width", "height", "steps", "guidance", "strength", "seed")
        if getattr(a, k) is not None
    }
    if method == "edit_generated" and a.image:
        given, options = replayed(a.image, given, options)
    request = EditRequest(
        method=method,
        prompt=a.prompt,
        image=image,
        strokes=load_strokes(a.strokes, size) if a.strokes else None,
        mask=load_mask(a.mask, size) if a.mask else None,
        options=options,
        **given,
    )
    validate(request)
    return request


def replayed(picture: str, given: dict, options: dict) -> tuple[dict, dict]:
    """Edit prompt of a picture this program generated: what the command does not give
    (the source prompt, seed, steps, guidance, negative prompt, size, η) comes from the
    picture's parameters, as the editor reads them, and a note says what was taken."""
    from .metadata import NotReplayable, describe_parameters, read_png_parameters, replay_of

    try:
        parsed = read_png_parameters(picture)
    except (OSError, ValueError, SyntaxError):
        parsed = None
    if not parsed:
        return given, options  # no parameters: the command must say it all
    try:
        replay = replay_of(describe_parameters(parsed))
    except NotReplayable as e:
        if options.get("source_prompt"):
            return given, options  # the user says how it was made
        raise InputError(
            f"{picture} cannot be replayed: {e}. Edit prompt needs a picture generated "
            "here (or give its --source-prompt, --seed, --steps and --guidance); for a photo, "
            "use invert and reedit."
        ) from None
    read = {"source_prompt": replay.pop("prompt"), "eta": replay.pop("eta")}
    read = {k: v for k, v in read.items() if k not in options}
    taken = {k: v for k, v in replay.items() if k not in given}
    said = [f"{k.replace('_', ' ')} {v!r}" for k, v in {**read, **taken}.items() if v != ""]
    if said:
        print(f"note: from {picture}'s parameters: {', '.join(said)}", file=sys.stderr)
    return {**taken, **given}, {**options, **read}


def plan_outputs(method: str, a: argparse.Namespace) -> dict[str, Path]:
    """Every file the command will write, checked before any work: none may replace an input
    (or another output), and each folder must exist and be writable."""
    from .images import check_output

    inputs = [a.image, a.mask, a.strokes]
    options = parse_options(a.option, a)
    if method == "reedit" and isinstance(options.get("inversion"), str):
        inputs.append(options["inversion"])  # a re-edit's inversion file is an input too
    out = Path(a.output or f"{method}.png")
    plan = {"image": check_output(out, inputs)}
    if out.suffix.lower() != ".png":  # the picture is written as a PNG whatever its name
        hint = " (the inversion itself: --save FILE)" if method == "invert" else ""
        raise FileError(f"The output {out} is written as a PNG picture; give it a .png name{hint}.")
    n = options.get("batch_size", 1)
    for k in range(2, n + 1 if isinstance(n, int) else 0):  # a batch: sdedit-2.png, …
        taken = [*inputs, *plan.values()]
        plan[f"image{k}"] = check_output(out.with_name(f"{out.stem}-{k}{out.suffix}"), taken)
    if method in ("diffedit_mask", "diffedit"):
        mask = out.with_name(out.stem + "-mask.png")
        plan["mask"] = check_output(mask, [*inputs, out], what="mask output")
    save = options.get("save") if method == "invert" else None
    if isinstance(save, str) and save:
        plan["inversion"] = check_output(save, [*inputs, *plan.values()], what="inversion file")
    return plan


def _save_mask(mask: np.ndarray, path: Path) -> None:
    from PIL import Image

    from .images import atomic_write

    atomic_write(path, lambda f: Image.fromarray(mask).save(f, format="PNG"))


# Failed events of these kinds are the user's input; others (memory, NaN) are runtime failures
INPUT_KINDS = ("InputError", "FileError", "ModelLoadError", "UsageError")


def lora_argument(text: str) -> tuple[str, float]:
    """``FILE[:WEIGHT]`` → (file, weight); a colon not followed by a number is the path's."""
    path, _, weight = text.rpartition(":")
    try:
        return (path, float(weight)) if path else (text, 1.0)
    except ValueError:
        return text, 1.0


def run_method(method: str, a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import imageops
    from .engine import Engine
    from .models import DEFAULT_MODEL
    from .types import Failed, Finished, ModelLoaded, Step

    plan = plan_outputs(method, a)
    request = build_request(method, a)
    # one command ends before a background compile could pay: compile first, or not at all
    fast = a.fast if a.fast is not None else os.environ.get(ENV_FAST, "") in ("1", "on")
    engine = Engine(fast=fast)
    try:
        load = engine.wait(
            engine.load_model(a.model or DEFAULT_MODEL, a.device, a.dtype, a.prediction_type)
        )
        if not isinstance(load, ModelLoaded):
            print(f"error: {_one_line(load.message)}", file=sys.stderr)
            return 2
        info = load.info
        print(f"model {info.name} on {info.device} ({info.dtype})", file=sys.stderr)
        if engine.fast is not None:
            print("compiling the fast path (cached for later runs)…", file=sys.stderr)
            engine.fast.wait()
        for item in a.lora:
            path, weight = lora_argument(item)
            done = engine.wait(engine.add_lora(path, weight))
            if isinstance(done, Failed):
                print(f"error: {_one_line(done.message)}", file=sys.stderr)
                return 2
            print(f"LoRA {done.info.loras[-1][0]} at {weight:g}", file=sys.stderr)
        bar = tqdm(total=None, desc=method, unit="step", file=sys.stderr)

        def on_event(ev):
            if isinstance(ev, Step):
                bar.total = ev.n
                bar.set_postfix_str(ev.label or f"t={ev.timestep}", refresh=False)
                bar.update(ev.i - bar.n)

        result = engine.run(request, on_event)
        bar.close()
        if isinstance(result, Failed):
            print(f"error: {_one_line(result.message)}", file=sys.stderr)
            return 2 if result.kind in INPUT_KINDS else 1
        assert isinstance(result, Finished)
        if result.extras.get("notice"):
            print(f"note: {result.extras['notice']}", file=sys.stderr)
        if result.image is not None and not request.options.get("only_masked"):
            resized = imageops.resize_note(result.image.shape[:2], info.native_size)
            if resized:  # (the editor says it under the canvas and on the result)
                print(
                    f"note: the model works at about {info.native_size}x{info.native_size} "
                    f"pixels; the result was {resized}"
                    + (", so it is softer" if resized.startswith("up") else ""),
                    file=sys.stderr,
                )
        writes = []
        if result.image is not None:
            writes.append((plan["image"], lambda p: save_png(result.image, p, result.parameters)))
        for k, more in enumerate(result.extras.get("batch", ()), start=2):
            params = {**result.parameters, "seed": more["seed"]}
            writes.append((plan[f"image{k}"], partial(save_png, more["image"], params=params)))
        if result.extras.get("mask") is not None and "mask" in plan:
            writes.append((plan["mask"], lambda p: _save_mask(result.extras["mask"], p)))
        for path, write in writes:
            try:
                write(path)
            except OSError as e:
                raise FileError(f"Could not write {path}: {e.strerror or e}.") from None
            print(f"wrote {path}", file=sys.stderr)
        if "inversion" in plan:
            print(f"wrote {plan['inversion']}", file=sys.stderr)
        return 0
    finally:
        engine.shutdown()


def make_parser() -> argparse.ArgumentParser:
    from . import bench

    parser = _Parser(prog="python -m engine", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for method in sorted(METHODS):
        spec = METHODS[method]
        add_common(sub.add_parser(method, help=spec.help, description=spec.help), method)
    listing = sub.add_parser("methods", help="list every method with its inputs and options")
    listing.add_argument("--json", action="store_true", help="print JSON")
    bench.add_parser(sub)
    return parser


def print_methods(as_json: bool) -> int:
    described = describe_all()
    if as_json:
        print(json.dumps(described, indent=2, ensure_ascii=False))
        return 0
    for name, m in described["methods"].items():
        needs = [f"{k}={v}" for k, v in m["inputs"].items() if v and v != "unused"]
        print(f"{name}: {m['help']}")
        print(f"  inputs: {', '.join(needs) or 'none'}")
        for key, o in m["options"].items():
            print(f"  {_flag(key)}: {o['help']} (default: {o['default']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code (0 done, 1 the job failed, 2 bad input) and never
    exits the process itself. Bad input is one line on stderr, never a traceback."""
    from . import bench

    try:
        a = make_parser().parse_args(argv)
        if a.command == "bench":
            return bench.run(a)
        if a.command == "methods":
            return print_methods(a.json)
        return run_method(a.command, a)
    except SystemExit as e:  # --help and --version exit through argparse
        return e.code if isinstance(e.code, int) else 0
    except EngineError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
