"""Measure the levers of DiffEdit's mask on demo-world scenes: noise samples per map, the
noise level of the map, the cut (fixed or Otsu) and the upsampling (bilinear, guided by the
colour image or by its grey levels, or snapped to the picture's regions after the colour
guide).

    python -m engine.evaluation.diffedit_levers --seeds 560000 --n 40

The maps come from the app's own algorithm (``diffedit_mask``, as the ``diffedit_mask`` job
runs it: 50-step chain, t = 0.5 T, the scene's seed) once per scene and sample count; every
cut and upsampling is then applied to the same map (``jobs.edits.mask_from_map``), so the
variants differ only in what they vary. IoU against the true edited region at image size,
mean with a 95 % interval, on the same interleaved kind / wall-colour cases as
``evaluate_edits``' DiffEdit section.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .evaluate_edits import (
    SPAN,
    find_cases,
    iou,
    mean_ci,
    object_kind_case,
    wall_colour_case,
)
from .seed_ranges import SeedRange, check_evaluation

SAMPLES = (10, 20, 40)
CUTS = (("fixed", 0.5), ("fixed", 0.4), ("fixed", 0.3), ("otsu", None))
UPSAMPLING = (
    ("bilinear", None),
    ("guided", 1e-2),
    ("guided", 1e-3),
    ("guided", 1e-4),
    ("guided-grey", 1e-4),
    ("segments", 1e-4),
)


def diffedit_cases(n: int, start: int):
    """``n`` cases alternating object-kind and wall-colour edits, as ``edit_metrics`` picks
    them for its DiffEdit section (kinds from ``start``, colours from ``start`` + 100,000)."""
    kinds = find_cases(object_kind_case, (n + 1) // 2, start)
    colours = find_cases(wall_colour_case, n // 2, start + 100_000)
    return [c for pair in itertools.zip_longest(kinds, colours) for c in pair if c][:n]


@torch.no_grad()
def maps_for(bundle, case, samples: int, steps: int = 50, strength: float = 0.5):
    """The normalised latent map of ``diffedit_mask`` for the case's edit (as the job), the
    image noised to ``strength`` (the job's ``mask_strength``)."""
    from engine.algorithms.common import run_to_end
    from engine.algorithms.diffedit import diffedit_mask
    from engine.denoiser import Denoiser

    d = Denoiser(bundle)
    latents = bundle.encode(case.before.image).float()
    t = d.schedule.timesteps_for_strength(steps, strength)[0]
    gen = torch.Generator().manual_seed(case.seed)
    q, r = d.encode_text(case.after.caption), d.encode_text(case.before.caption)
    est = run_to_end(diffedit_mask(d, latents, q, r, t, gen, samples, 0.5, 2))
    return est.map[0, 0].cpu().numpy()


def _grey_guide(image, eps):
    """The image as a grey guide: three equal channels, with eps scaled so the colour
    filter reduces exactly to the grey one (aᵀI = cov·I / (var + eps / 3) for I = (g, g, g))."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True)
    return np.repeat(grey, 3, axis=2), eps * 3


def measure(
    bundle,
    cases,
    samples=SAMPLES,
    cuts=CUTS,
    upsampling=UPSAMPLING,
    radii=(None,),
    strengths=(0.5,),
    log=print,
):
    from engine import imageops
    from engine.jobs.edits import _u8, mask_from_map

    f = bundle.vae_factor
    scores: dict[str, list[float]] = {}
    for i, case in enumerate(cases):
        for k, s in itertools.product(samples, strengths):
            m = maps_for(bundle, case, k, strength=s)
            for (mode, thr), (up, eps), r in itertools.product(cuts, upsampling, radii):
                if r is not None and not up.startswith("guided"):
                    continue
                name = f"n{k}{'' if s == 0.5 else f' s{s:g}'} {mode}"
                name += f"{'' if thr is None else f' {thr}'} {up}"
                name += "" if eps is None else f" eps {eps:g}"
                name += "" if r is None else f" r {r}"
                image, kind = case.before.image, up
                if up == "guided-grey":
                    (image, eps), kind = _grey_guide(image, eps), "guided"
                binary = mask_from_map(m, image, f, thr or 0.5, mode, kind, eps, r)
                # as the job hands the mask out: blurred over a quarter cell, 8-bit, ≥ 128
                soft = _u8(imageops.blur(binary, f / 4))
                scores.setdefault(name, []).append(iou(soft >= 128, case.region))
        log(f"  scene {i + 1}/{len(cases)} ({case.what})")
    return {name: {"iou": mean_ci(v), "per_scene": v} for name, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.evaluation.diffedit_levers")
    p.add_argument("--model", default="builtin:demo")
    p.add_argument("--seeds", type=int, required=True, help="first seed")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--samples", type=int, nargs="*", default=list(SAMPLES))
    p.add_argument("--thresholds", type=float, nargs="*", default=None, help="fixed cuts")
    p.add_argument("--eps", type=float, nargs="*", default=None, help="guided filter eps")
    p.add_argument("--radii", type=int, nargs="*", default=None, help="guided filter radii")
    p.add_argument(
        "--strengths", type=float, nargs="*", default=[0.5], help="noise levels of the map"
    )
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    cuts = CUTS if a.thresholds is None else tuple(("fixed", t) for t in a.thresholds)
    ups = (
        UPSAMPLING
        if a.eps is None
        else (("bilinear", None),)
        + tuple((g, e) for e in a.eps for g in ("guided", "guided-grey", "segments"))
    )
    radii = (None,) if a.radii is None else tuple(a.radii)
    check_evaluation(SeedRange(a.seeds, a.seeds + SPAN), a.model, None)
    from engine.models import load_model

    bundle = load_model(a.model, device="cpu")
    cases = diffedit_cases(a.n, a.seeds)
    res = measure(
        bundle,
        cases,
        a.samples,
        cuts,
        ups,
        radii,
        a.strengths,
        log=lambda m: print(m, file=sys.stderr),
    )
    for name, v in sorted(res.items(), key=lambda kv: -kv[1]["iou"]["mean"]):
        ci = v["iou"]
        lo, hi = ci["ci95"]
        print(f"{name:40s} IoU {ci['mean']:.3f} [{lo:.3f}, {hi:.3f}]")
    if a.json:
        out = {"seeds": [cases[0].seed, max(c.seed for c in cases)], "n": len(cases), **res}
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
