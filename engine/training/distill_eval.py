"""The few-step demo model against its teacher, with the figures of issue 15's targets.

    python -m engine.training.distill_eval --student runs/lcm/distill-01000.ckpt \\
        --seeds calibration --n 200 --steps 2 4 8 --guidance 7.5 [--json PATH]

On n held-out demo-world scenes (scenes A: captions, true attributes, real renders) and a
disjoint reference set (scenes B), as ``evaluate.py`` measures the demo model:

- the teacher: 25-step DDIM at guidance 7.5 (``evaluate.sample_images``);
- the student: multistep LCM sampling (``algorithms.lcm``, Alg. 3) at each step count and ω;
- attribute accuracy (the probe, ``probe.attribute_accuracy``) as a share of the teacher's on
  the same scenes and noise seeds, and the Fréchet distance of probe features to scenes B as a
  multiple of the real-vs-real floor (scenes A's renders against B).

95 % intervals: for the accuracy ratio a percentile bootstrap over scenes (1,000 resamples
of the scenes both models drew); for the Fréchet ratios subsampling (half-samples without
replacement, numerator and floor on the same scenes), because a bootstrap's repeated points
inflate a Fréchet distance (``evaluate_guidance.score``) — a rough interval either way.
Seeds follow ``evaluation.seed_ranges``: calibration while choosing, never final.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..algorithms.common import randn, run_to_end
from ..algorithms.lcm import embedded_guidance, lcm_sample, lcm_timesteps, takes_guidance_embedding
from ..denoiser import Conditioning, Denoiser
from ..evaluation.evaluate import SAMPLE_SEED, SCENES_A, SCENES_B, SPAN, decode_batch, sample_images
from ..evaluation.seed_ranges import NAMED, SeedRange, check_disjoint
from .probe import attribute_accuracy, frechet_distance, load_probe, render_heldout

SIZE = 128


@torch.no_grad()
def lcm_images(bundle, denoiser, prompts, seeds, steps: int, guidance: float, batch: int = 16):
    """Multistep consistency samples (Luo et al. 2023, Alg. 3), sample i from the noise of
    ``Generator().manual_seed(seeds[i])`` alone; uint8 N x 128 x 128 x 3."""
    f, ch = bundle.vae_factor, bundle.latent_channels
    ts = lcm_timesteps(bundle.schedule, steps)
    embeds = takes_guidance_embedding(bundle.unet)
    out = []
    for lo in range(0, len(prompts), batch):
        ps, ss = prompts[lo : lo + batch], seeds[lo : lo + batch]
        gens = [torch.Generator().manual_seed(s) for s in ss]
        x = randn((len(ss), ch, SIZE // f, SIZE // f), gens, bundle.device)
        uncond = None if embeds else denoiser.encode_text("")
        cond = Conditioning(torch.cat([denoiser.encode_text(p) for p in ps]), uncond)
        cfg = 1.0 if embeds else guidance
        if embeds:
            with embedded_guidance(bundle.unet, guidance):
                lat = run_to_end(lcm_sample(denoiser, x, ts, cond, cfg, gens))
        else:
            lat = run_to_end(lcm_sample(denoiser, x, ts, cond, cfg, gens))
        out.append(decode_batch(bundle, lat))
    return np.concatenate(out)


def load_student(spec: str, teacher):
    """A distilled model: an exported folder, or a distillation checkpoint's EMA weights
    placed in the teacher's bundle."""
    from ..models import load_model
    from .distill import build_student

    path = Path(spec)
    if path.is_dir():
        return load_model(str(path), device="cpu", dtype="fp32")
    state = torch.load(path, map_location="cpu")
    unet = build_student(teacher.unet)
    unet.load_state_dict(state["ema"])
    unet = unet.eval().requires_grad_(False)
    return dataclasses.replace(teacher, unet=unet, name=f"{path.name} (step {state['step']})")


def bootstrap(fn, n: int, draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of ``fn(indices)`` over resamples of n scenes."""
    rng = np.random.default_rng(seed)
    vals = [fn(rng.integers(0, n, n)) for _ in range(draws)]
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def subsample_interval(fn, n: int, point: float, draws: int = 300, seed: int = 0):
    """A 95 % interval for a statistic that repeated points would bias (the Fréchet
    distance): half-samples drawn without replacement (subsampling, Politis & Romano 1994),
    their spread around its centre scaled by √(m/n) and placed around ``point``."""
    rng = np.random.default_rng(seed)
    m = n // 2
    vals = np.array([fn(rng.choice(n, m, replace=False)) for _ in range(draws)])
    dev = (vals - np.median(vals)) * np.sqrt(m / n)
    return float(point - np.percentile(dev, 97.5)), float(point - np.percentile(dev, 2.5))


def compare(probe, teacher_imgs, student_imgs, real_a, attrs_a, real_b) -> dict:
    """Accuracy ratio (student / teacher) and Fréchet ratios, each with its 95 % interval."""
    right_t = probe.predict(teacher_imgs) == attrs_a  # N x 13
    right_s = probe.predict(student_imgs) == attrs_a
    fa, fb = probe.features(real_a), probe.features(real_b)
    ft, fs = probe.features(teacher_imgs), probe.features(student_imgs)
    n = len(attrs_a)

    def acc_ratio(i):
        return right_s[i].mean() / max(right_t[i].mean(), 1e-12)

    def fd_ratio(feats):
        return lambda i: frechet_distance(feats[i], fb[i]) / frechet_distance(fa[i], fb[i])

    floor = frechet_distance(fa, fb)
    return {
        "accuracy_student": attribute_accuracy(probe.predict(student_imgs), attrs_a),
        "accuracy_teacher": float(right_t.mean()),
        "accuracy_ratio": float(acc_ratio(np.arange(n))),
        "accuracy_ratio_ci95": bootstrap(acc_ratio, n),
        "frechet_student": frechet_distance(fs, fb),
        "frechet_floor": floor,
        "frechet_ratio": (rs := frechet_distance(fs, fb) / floor),
        "frechet_ratio_ci95": subsample_interval(fd_ratio(fs), n, rs),
        "frechet_ratio_teacher": (rt := frechet_distance(ft, fb) / floor),
        "frechet_ratio_teacher_ci95": subsample_interval(fd_ratio(ft), n, rt),
    }


def run(
    student_spec: str,
    seed_start: int,
    n: int,
    steps_list: list[int],
    guidances: list[float],
    teacher_spec: str = "builtin:demo",
    teacher_steps: int = 25,
    teacher_guidance: float = 7.5,
    ddim_baseline: bool = False,
    cache_dir: Path | None = None,
    log=print,
) -> dict:
    from ..models import load_model

    teacher = load_model(teacher_spec, device="cpu", dtype="fp32")
    student = load_student(student_spec, teacher)
    probe = load_probe()
    real_a, attrs_a, captions = render_heldout(n, seed_start + SCENES_A)
    real_b, _, _ = render_heldout(n, seed_start + SCENES_B)
    seeds = [SAMPLE_SEED + i for i in range(n)]
    t0 = time.perf_counter()
    cached = None
    if cache_dir is not None:
        key = f"{teacher_spec}-{seed_start}-{n}-{teacher_steps}-{teacher_guidance:g}"
        cached = Path(cache_dir) / f"teacher-{key.replace(':', '_')}.npy"
    if cached is not None and cached.is_file():
        teacher_imgs = np.load(cached)  # the same samples: deterministic DDIM, fixed seeds
    else:
        teacher_imgs = sample_images(
            teacher, Denoiser(teacher), captions, seeds, teacher_steps, teacher_guidance
        )
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, teacher_imgs)
    log(f"teacher: {time.perf_counter() - t0:.0f} s")
    rows = []
    den = Denoiser(student)

    def add(sampler: str, steps: int, g: float, t0: float, imgs: np.ndarray) -> None:
        row = {"sampler": sampler, "steps": steps, "guidance": g}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        row.update(compare(probe, teacher_imgs, imgs, real_a, attrs_a, real_b))
        log(format_row(row))
        rows.append(row)

    for steps in steps_list:
        for g in guidances:
            t0 = time.perf_counter()
            add("lcm", steps, g, t0, lcm_images(student, den, captions, seeds, steps, g))
        if ddim_baseline:  # the teacher itself at as few steps
            t0, tg = time.perf_counter(), teacher_guidance
            imgs = sample_images(teacher, Denoiser(teacher), captions, seeds, steps, tg)
            add("ddim (teacher)", steps, tg, t0, imgs)
    return {
        "student": student.name,
        "teacher": f"{teacher_spec}, {teacher_steps}-step DDIM, guidance {teacher_guidance}",
        "n": n,
        "scene_seeds_a": [seed_start + SCENES_A, seed_start + SCENES_A + n - 1],
        "scene_seeds_b": [seed_start + SCENES_B, seed_start + SCENES_B + n - 1],
        "noise_seeds": [seeds[0], seeds[-1]],
        "rows": rows,
    }


def format_row(r: dict) -> str:
    a, f = r["accuracy_ratio_ci95"], r["frechet_ratio_ci95"]
    ft = r["frechet_ratio_teacher_ci95"]
    acc = r["accuracy_student"]["mean"]
    return (
        f"{r['sampler']} {r['steps']} steps, guidance {r['guidance']:g}: accuracy {acc:.3f}"
        f" (teacher {r['accuracy_teacher']:.3f}), ratio {r['accuracy_ratio']:.3f} "
        f"[{a[0]:.3f}, {a[1]:.3f}]; Fréchet ratio {r['frechet_ratio']:.2f} [{f[0]:.2f}, {f[1]:.2f}]"
        f" (teacher {r['frechet_ratio_teacher']:.2f} [{ft[0]:.2f}, {ft[1]:.2f}]); {r['wall_s']} s"
    )


def sample_sheet(student_spec: str, path: Path, n: int = 6, seed_start: int = 500_000) -> Path:
    """A figure for the model card: captions of n calibration scenes (columns), rows: the
    real render, the teacher (25 and 4 DDIM steps, guidance 7.5) and the student with the
    LCM sampler at 1, 2, 4 and 8 steps (ω-embedded guidance 7.5); same noise per column."""
    from PIL import Image, ImageDraw

    from ..models import load_model

    teacher = load_model("builtin:demo", device="cpu", dtype="fp32")
    student = load_student(student_spec, teacher)
    real, _, captions = render_heldout(n, seed_start + SCENES_A)
    seeds = [SAMPLE_SEED + i for i in range(n)]
    tden, sden = Denoiser(teacher), Denoiser(student)
    rows = [("real render", real)]
    for steps in (25, 4):
        imgs = sample_images(teacher, tden, captions, seeds, steps, 7.5)
        rows.append((f"demo, DDIM {steps}", imgs))
    for steps in (1, 2, 4, 8):
        rows.append(
            (f"demo-lcm, LCM {steps}", lcm_images(student, sden, captions, seeds, steps, 7.5))
        )
    label_w, pad = 150, 4
    sheet = Image.new("RGB", (label_w + n * (SIZE + pad), len(rows) * (SIZE + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, imgs) in enumerate(rows):
        y = r * (SIZE + pad)
        draw.text((6, y + SIZE // 2 - 6), label, fill="black")
        for c in range(n):
            sheet.paste(Image.fromarray(imgs[c]), (label_w + c * (SIZE + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def sdedit_timing(runs: int = 7, strength: float = 0.6) -> list[dict]:
    """Seconds per SDEdit job through the Engine (encode, sampling, decode, previews) on a
    128 px calibration render: the teacher at 25 DDIM steps with guidance 7.5 against
    demo-lcm at 4 LCM steps, and the teacher at 8 DDIM steps (what Live mode uses on a model
    without a few-step variant); median of ``runs`` after a warm-up, alternating models."""
    import os
    import statistics

    from ..engine import Engine
    from ..types import EditRequest, Finished, ModelLoaded

    image = render_heldout(1, 500_000 + SCENES_A)[0][0]
    prompt = render_heldout(1, 500_000 + SCENES_B)[2][0]  # another scene's caption: an edit
    setups = [
        ("builtin:demo", "ddim", 25),
        ("builtin:demo", "ddim", 8),
        ("builtin:demo-lcm", "lcm", 4),
    ]
    engines = {}
    for model, _, _ in setups:
        if model not in engines:  # one load at a time
            engines[model] = Engine()
            loaded = engines[model].wait(engines[model].load_model(model, "cpu"), 300)
            if not isinstance(loaded, ModelLoaded):
                raise RuntimeError(f"{model}: {loaded}")
    times: dict[tuple, list[float]] = {s: [] for s in setups}
    try:
        for run in range(runs + 1):  # run 0 warms up
            for model, sampler, steps in setups:
                req = EditRequest(
                    "sdedit", prompt, image=image, steps=steps, strength=strength,
                    guidance=7.5, options={"sampler": sampler},
                )  # fmt: skip
                t0 = time.perf_counter()
                ev = engines[model].run(req, timeout=600)
                if not isinstance(ev, Finished):
                    raise RuntimeError(f"{model}: {ev}")
                if run:
                    times[(model, sampler, steps)].append(time.perf_counter() - t0)
    finally:
        for e in engines.values():
            e.shutdown()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return [
        {
            "model": m,
            "sampler": smp,
            "steps": st,
            "median_s": statistics.median(ts),
            "runs_s": [round(t, 3) for t in ts],
            "threads": torch.get_num_threads(),
            "loadavg_1min": load,
        }
        for (m, smp, st), ts in times.items()
    ]


def main(argv: list[str] | None = None) -> int:
    from ..models import DEMO_MODEL_DIR

    p = argparse.ArgumentParser(prog="python -m engine.training.distill_eval", description=__doc__)
    p.add_argument("--student", default="", help="a distill checkpoint or a model folder")
    p.add_argument("--seeds", default="calibration", help="calibration, development or a seed")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, nargs="+", default=[4])
    p.add_argument("--guidance", type=float, nargs="+", default=[7.5])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--ddim-baseline", action="store_true", help="also the teacher's DDIM rows")
    p.add_argument("--cache", type=Path, default=None, help="keep the teacher's samples here")
    p.add_argument("--sheet", type=Path, default=None, help="only draw the sample figure")
    p.add_argument(
        "--timing", action="store_true", help="only time SDEdit jobs (see sdedit_timing)"
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.sheet:
        sample_sheet(a.student, a.sheet)
        return 0
    if a.timing:
        for row in sdedit_timing():
            print(json.dumps(row), flush=True)
        return 0
    if not a.student:
        p.error("--student is needed (a distill checkpoint or a model folder)")
    if a.seeds == "final":
        print("distill_eval: the final range is for reports only; use calibration", file=sys.stderr)
        return 2
    start = NAMED[a.seeds].start if a.seeds in NAMED else int(a.seeds)
    used = SeedRange(start, start + SPAN)
    if NAMED["final"].overlaps(used):
        print("distill_eval: that range reaches into the final seeds", file=sys.stderr)
        return 2
    check_disjoint(used, DEMO_MODEL_DIR, None)
    result = run(
        a.student,
        start,
        a.n,
        a.steps,
        a.guidance,
        ddim_baseline=a.ddim_baseline,
        cache_dir=a.cache,
        log=lambda m: print(m, flush=True),
    )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
