"""Measure a model on the demo world: the figures of issue 3's acceptance targets.

    python -m engine.evaluation.evaluate [--model builtin:demo] [--n 200] [--json PATH]

On held-out seeds (``--seeds``, by default from ``probe.HELDOUT_SEED``; never in a training
cache, checked against the model card):

- **VAE reconstruction**: PSNR (dB, mean over images) of ``bundle.decode(bundle.encode(x))``
  on held-out renders.
- **Text-to-image samples** from the captions of held-out scenes (set A), generated with DDIM
  (``--steps`` 25, guidance 7.5; sample i starts from the noise of seed ``SAMPLE_SEED + i``
  whatever the batch size):
  - the attribute probe's accuracy against the true attributes of the scene each caption
    describes (a classification accuracy score in spirit: does the image show what the
    caption says?), next to the probe's accuracy on the real renders of the same scenes; the
    ratio is "sample accuracy as a share of real";
  - the Fréchet distance between probe features of the samples and of a disjoint set B of
    real renders, next to the same distance between real set A and set B (the floor: what
    two finite samples of the real distribution score); the ratio is samples / floor.
- **Speed**: CPU seconds for one 25-step guided generation at 128 px, text encoding and
  decoding included (median of ``--timing-runs`` after a warm-up, ``torch.set_num_threads(2)``);
  the load average is recorded beside it since other processes slow it down.

Each section is a function of an :class:`EvalContext`; ``SECTIONS`` lists them in order and
``--edits`` appends :func:`edit_metrics`, the hook for issue 4's edit figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..imageops import psnr
from ..training.probe import (
    HELDOUT_SEED,
    AttributeProbe,
    attribute_accuracy,
    frechet_distance,
    load_probe,
    render_heldout,
)
from ..world.scene import ATTRIBUTE_NAMES

# offsets from the evaluation's first seed (``--seeds``, default ``HELDOUT_SEED``)
SCENES_A = 100_000  # captions for samples; their real renders
SCENES_B = 200_000  # a disjoint real set: the reference for Fréchet distances
RECON_SEED = 300_000  # VAE reconstruction images
EDITS = 400_000  # the edit evaluation's first seed (--edits; it spans evaluate_edits.SPAN)
SPAN = 800_000
SAMPLE_SEED = 7_000  # sample i starts from torch.Generator().manual_seed(SAMPLE_SEED + i)
TIMING_PROMPT = "a red house beside two pine trees under a sunset sky"
SIZE = 128

# Issue 3's acceptance targets (MODEL_CARD.md reports the measured values next to them).
TARGETS = {
    "vae_psnr_db": 28.0,  # >=
    "accuracy_ratio": 0.85,  # >=
    "frechet_ratio": 3.0,  # <=
    "seconds_per_generation": 3.0,  # <=
}


@dataclass
class EvalConfig:
    model: str = "builtin:demo"
    n: int = 200  # samples (and real renders per set)
    recon_n: int = 200  # VAE reconstruction images
    steps: int = 25
    guidance: float = 7.5
    batch: int = 16  # samples per UNet batch
    timing_steps: int = 25
    timing_runs: int = 3
    timing_threads: int = 2
    threads: int | None = None  # torch threads for everything but timing (None: leave as is)
    probe: str | None = None  # probe weights; None: the shipped assets/probe
    edit_n: int = 20  # scenes per edit section (--edits)
    seed_start: int = HELDOUT_SEED  # every scene comes from seed_start .. seed_start + SPAN

    def at(self, offset: int) -> int:
        return self.seed_start + offset


@dataclass
class EvalContext:
    """What the sections share; built once by :func:`evaluate`, filled in as sections run."""

    config: EvalConfig
    bundle: object  # engine.models.ModelBundle
    probe: AttributeProbe
    real_a: np.ndarray  # uint8 N x 128 x 128 x 3: renders of scenes A
    attrs_a: np.ndarray  # int N x 13: their true attributes
    captions_a: list[str]
    real_b: np.ndarray  # uint8 N x 128 x 128 x 3: renders of scenes B
    samples: np.ndarray | None = None  # uint8 N x 128 x 128 x 3, set by sample_metrics
    log: Callable[[str], None] = print
    extra: dict = field(default_factory=dict)

    @property
    def denoiser(self):
        from engine.denoiser import Denoiser

        if "denoiser" not in self.extra:
            self.extra["denoiser"] = Denoiser(self.bundle)
        return self.extra["denoiser"]


# --------------------------------------------------------------------------- helpers


@torch.no_grad()
def decode_batch(bundle, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents N x C x h x w → uint8 N x H x W x 3 (``bundle.decode`` for a batch)."""
    x = bundle.vae.decode(latents.to(bundle.device, bundle.dtype) / bundle.vae_scale).sample
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def sample_images(
    bundle,
    denoiser,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float,
    size: int = SIZE,
    batch: int = 16,
    negative: str = "",
    eta: float = 0.0,
) -> np.ndarray:
    """DDIM text-to-image for each (prompt, seed), batched; uint8 N x size x size x 3.

    Sample i's initial noise comes from ``torch.Generator().manual_seed(seeds[i])`` alone, so
    at η = 0 a sample does not depend on the batch it ran in (at η > 0 the step noise is
    drawn per batch, from the batch's first seed)."""
    from engine.algorithms.common import randn, run_to_end
    from engine.algorithms.sampling import ddim_sample
    from engine.denoiser import Conditioning

    f, ch = bundle.vae_factor, bundle.latent_channels
    timesteps = denoiser.schedule.timesteps(steps)
    out = []
    for lo in range(0, len(prompts), batch):
        ps, ss = prompts[lo : lo + batch], seeds[lo : lo + batch]
        x = torch.cat(
            [
                randn(
                    (1, ch, size // f, size // f), torch.Generator().manual_seed(s), bundle.device
                )
                for s in ss
            ]
        )
        cond = Conditioning(
            torch.cat([denoiser.encode_text(p) for p in ps]),
            denoiser.encode_text(negative) if guidance != 1.0 else None,
        )
        gen = torch.Generator().manual_seed(ss[0])  # the step noise at eta > 0
        lat = run_to_end(ddim_sample(denoiser, x, timesteps, cond, guidance, gen, eta))
        out.append(decode_batch(bundle, lat))
    return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)


# --------------------------------------------------------------------------- sections


def vae_metrics(ctx: EvalContext) -> dict:
    """PSNR of encode → decode on held-out renders (``bundle.encode``/``bundle.decode``)."""
    first = ctx.config.at(RECON_SEED)
    images, _, _ = render_heldout(ctx.config.recon_n, first)
    scores = [psnr(im, ctx.bundle.decode(ctx.bundle.encode(im))) for im in images]
    return {
        "psnr_db": float(np.mean(scores)),
        "psnr_db_min": float(np.min(scores)),
        "n": len(scores),
        "seeds": [first, first + len(scores) - 1],
    }


def sample_metrics(ctx: EvalContext) -> dict:
    """Samples from the captions of scenes A, scored by the probe against those scenes."""
    c = ctx.config
    seeds = [SAMPLE_SEED + i for i in range(len(ctx.captions_a))]
    t0 = time.perf_counter()
    ctx.samples = sample_images(
        ctx.bundle, ctx.denoiser, ctx.captions_a, seeds, c.steps, c.guidance, batch=c.batch
    )
    wall = time.perf_counter() - t0
    real = attribute_accuracy(ctx.probe.predict(ctx.real_a), ctx.attrs_a)
    samp = attribute_accuracy(ctx.probe.predict(ctx.samples), ctx.attrs_a)
    return {
        "n": len(seeds),
        "steps": c.steps,
        "guidance": c.guidance,
        "scene_seeds": [c.at(SCENES_A), c.at(SCENES_A) + len(seeds) - 1],
        "noise_seeds": [SAMPLE_SEED, SAMPLE_SEED + len(seeds) - 1],
        "probe_accuracy_real": real,
        "probe_accuracy_samples": samp,
        "accuracy_ratio": samp["mean"] / max(real["mean"], 1e-12),
        "sampling_wall_s": round(wall, 1),
    }


def frechet_metrics(ctx: EvalContext) -> dict:
    """Fréchet distance in probe-feature space: samples vs real B, and real A vs real B."""
    if ctx.samples is None:
        raise RuntimeError("frechet_metrics needs sample_metrics to have run first")
    fb = ctx.probe.features(ctx.real_b)
    fd_samples = frechet_distance(ctx.probe.features(ctx.samples), fb)
    fd_floor = frechet_distance(ctx.probe.features(ctx.real_a), fb)
    return {
        "samples_vs_real": fd_samples,
        "real_vs_real": fd_floor,
        "ratio": fd_samples / max(fd_floor, 1e-12),
        "n": len(ctx.samples),
        "reference_seeds": [ctx.config.at(SCENES_B), ctx.config.at(SCENES_B) + len(ctx.real_b) - 1],
        "feature_dim": ctx.probe.feature_dim,
    }


def timing_metrics(ctx: EvalContext) -> dict:
    """Seconds for one guided generation at 128 px: text encoding, sampling and decoding."""
    from engine.denoiser import Denoiser

    c = ctx.config
    threads = torch.get_num_threads()
    torch.set_num_threads(c.timing_threads)
    try:
        times, cpu = [], []
        for run in range(c.timing_runs + 1):  # run 0 warms up
            t0, p0 = time.perf_counter(), time.process_time()
            den = Denoiser(ctx.bundle)  # fresh: no cached text embeddings
            sample_images(
                ctx.bundle, den, [TIMING_PROMPT], [SAMPLE_SEED], c.timing_steps, c.guidance
            )
            if run:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - p0)
    finally:
        torch.set_num_threads(threads)
    return {
        "seconds_median": statistics.median(times),
        "seconds": [round(t, 3) for t in times],
        "cpu_seconds_median": statistics.median(cpu),
        "steps": c.timing_steps,
        "guidance": c.guidance,
        "size": SIZE,
        "threads": c.timing_threads,
        "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
    }


def edit_metrics(ctx: EvalContext) -> dict:
    """Issue 4's edit figures (``--edits``): see :mod:`engine.evaluation.evaluate_edits`."""
    from .evaluate_edits import edit_metrics as measure

    c = ctx.config
    return measure(ctx.bundle, ctx.probe, c.edit_n, log=ctx.log, start=c.at(EDITS))


SECTIONS: list[tuple[str, Callable[[EvalContext], dict]]] = [
    ("vae", vae_metrics),
    ("samples", sample_metrics),
    ("frechet", frechet_metrics),
    ("timing", timing_metrics),
]


# --------------------------------------------------------------------------- driver


def evaluate(config: EvalConfig | None = None, edits: bool = False, log=print) -> dict:
    """Run every section on ``config.model``; returns the results dict (see module docstring)."""
    from engine.models import load_model

    c = config or EvalConfig()
    if c.threads:
        torch.set_num_threads(c.threads)
    t0 = time.perf_counter()
    bundle = load_model(c.model, device="cpu")
    real_a, attrs_a, captions_a = render_heldout(c.n, c.at(SCENES_A))
    real_b, _, _ = render_heldout(c.n, c.at(SCENES_B))
    ctx = EvalContext(c, bundle, load_probe(c.probe), real_a, attrs_a, captions_a, real_b, log=log)
    results: dict = {"model": c.model, "config": dict(vars(c))}
    sections = SECTIONS + ([("edits", edit_metrics)] if edits else [])
    for name, fn in sections:
        t = time.perf_counter()
        results[name] = fn(ctx)
        log(f"[{name}] done in {time.perf_counter() - t:.1f} s")
    results["targets"] = check_targets(results)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    return results


def check_targets(r: dict) -> dict:
    got = {
        "vae_psnr_db": r["vae"]["psnr_db"],
        "accuracy_ratio": r["samples"]["accuracy_ratio"],
        "frechet_ratio": r["frechet"]["ratio"],
        "seconds_per_generation": r["timing"]["seconds_median"],
    }
    out = {}
    for k, v in got.items():
        higher = k in ("vae_psnr_db", "accuracy_ratio")
        ok = v >= TARGETS[k] if higher else v <= TARGETS[k]
        out[k] = {"value": v, "target": (">= " if higher else "<= ") + str(TARGETS[k]), "met": ok}
    return out


def format_table(r: dict) -> str:
    s, f, v, t = r["samples"], r["frechet"], r["vae"], r["timing"]
    lines = [
        f"model {r['model']}  ({s['n']} samples, {s['steps']} steps, guidance {s['guidance']})",
        "",
        f"{'attribute':<15}{'real':>8}{'samples':>9}{'ratio':>8}",
    ]
    pr, ps = s["probe_accuracy_real"], s["probe_accuracy_samples"]
    for name in ATTRIBUTE_NAMES:
        a, b = pr["per_attribute"][name], ps["per_attribute"][name]
        lines.append(f"{name:<15}{a:>8.1%}{b:>9.1%}{b / max(a, 1e-12):>8.2f}")
    lines.append(f"{'mean':<15}{pr['mean']:>8.1%}{ps['mean']:>9.1%}{s['accuracy_ratio']:>8.2f}")
    lines += [
        "",
        f"Fréchet (probe features)  samples vs real {f['samples_vs_real']:.4g}   "
        f"real vs real (floor) {f['real_vs_real']:.4g}   ratio {f['ratio']:.2f}",
        f"VAE reconstruction PSNR   {v['psnr_db']:.2f} dB (min {v['psnr_db_min']:.2f}, "
        f"{v['n']} images)",
        f"generation time           {t['seconds_median']:.2f} s median of {t['seconds']} "
        f"({t['steps']} steps, {t['size']} px, {t['threads']} threads, "
        f"load avg {t['loadavg_1min']} on {t['cpu_count']} CPUs)",
    ]
    if "edits" in r:
        from .evaluate_edits import format_edits

        lines += ["", format_edits(r["edits"])]
    lines += ["", "targets:"]
    for k, x in r["targets"].items():
        lines.append(
            f"  {k:<24}{x['value']:>9.3f}  {x['target']:<8}  {'met' if x['met'] else 'NOT met'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.evaluation.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", default="builtin:demo")
    p.add_argument("--n", type=int, default=200, help="samples, and real renders per set")
    p.add_argument("--recon-n", type=int, default=None, help="VAE images (default max(n, 100))")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--timing-steps", type=int, default=25)
    p.add_argument("--timing-runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads outside the timing")
    p.add_argument("--probe", default=None, help="probe weights (default: assets/probe)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--edits", action="store_true", help="also measure edits (issue 4)")
    p.add_argument("--edit-n", type=int, default=20, help="scenes per edit section")
    p.add_argument(
        "--seeds",
        type=int,
        default=HELDOUT_SEED,
        help=f"first scene seed (default {HELDOUT_SEED:,}); refused if it overlaps a recorded "
        "training range",
    )
    a = p.parse_args(argv)
    from .seed_ranges import SeedRange, SeedRangeError, check_evaluation

    try:
        check_evaluation(SeedRange(a.seeds, a.seeds + SPAN), a.model, a.probe)
    except SeedRangeError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    config = EvalConfig(
        model=a.model,
        n=a.n,
        recon_n=a.recon_n if a.recon_n is not None else max(a.n, 100),
        steps=a.steps,
        guidance=a.guidance,
        batch=a.batch,
        timing_steps=a.timing_steps,
        timing_runs=a.timing_runs,
        threads=a.threads,
        probe=a.probe,
        edit_n=a.edit_n,
        seed_start=a.seeds,
    )
    results = evaluate(config, edits=a.edits, log=lambda m: print(m, file=sys.stderr))
    print(format_table(results))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
