"""Classifier guidance against classifier-free guidance on the demo world: the fidelity and
diversity each buys, measured as Dhariwal & Nichol 2021 do (their Table 4 and Figs. 4-5).

    python -m engine.evaluation.evaluate_guidance --seeds calibration [--n 48]
        [--json PATH] [--plot PATH]

The guided label is a scene's (time of day, ground) pair, 12 classes. Labels and captions
come from n real scenes (scenes A), so the label mix is the world's; a second n real scenes
(scenes B) are the reference set. Rows, all 25-step DDIM (η = 0, Algorithm 2) at 128 px:

- "unconditional + CG s": the empty prompt (the model's unconditional branch, which caption
  dropout trained), no classifier-free guidance, classifier scale s;
- "conditional + CG s": scene A's full caption, w = 1, scale s. The conditional model is given
  the whole caption, not only the label: the world's captions are complete, so a prompt naming
  only "a snowy field at night" asks for a scene with nothing else in it (seen on calibration
  scenes: recall near 0), which is not p(x | y);
- "CFG w": the caption with classifier-free guidance w, no classifier;
- "unconditional + CG s, ancestral": Algorithm 1 (the DDPM step's mean shifted), s = 0 and 4.

Per row: the probe's accuracy on the guided label (both attributes right; each alone), the
Fréchet distance of probe features against scenes B, precision and recall (Kynkäänniemi et
al. 2019: k-NN balls, k = 3, in the probe's feature space) against scenes B, and seconds per
sample (batched, on this machine, as loaded as it was). Accuracy, precision and recall come
with 95 % Wilson intervals; the Fréchet distance has none (see ``score``): the "real" row,
scenes A against B at the same n, is its floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..algorithms.classifier_guidance import ClassifierGuided, classifier_log_prob
from ..training.probe import frechet_distance, load_probe, render_heldout
from ..world.scene import ATTRIBUTE_NAMES
from .evaluate import sample_images
from .evaluate_edits import rate_ci
from .seed_ranges import NAMED, SeedRange, SeedRangeError, check_evaluation

STEPS = 25
CG_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0)
CFG_SCALES = (1.0, 1.5, 3.0, 5.0, 7.5, 10.0)
ANCESTRAL_SCALES = (0.0, 4.0)
GUIDED = ("time_of_day", "ground")
NOISE_SEED = 9_000  # sample i of every row starts from this + i: rows differ only in guidance
SPAN = 100_000  # seeds one evaluation may touch from its start


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[np.ndarray, ...]:
    """Kynkäänniemi et al. 2019: each set's manifold is the union of balls around its points
    reaching their k-th nearest neighbour (self excluded). Returns the per-sample hits:
    fake samples inside the real manifold (precision) and real ones inside the fake
    manifold (recall); their means are the two figures."""

    def dists(a, b):
        d = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T
        return np.sqrt(np.maximum(d, 0.0))

    def radii(a):
        return np.sort(dists(a, a), 1)[:, k]  # column 0 is the point itself

    r_real, r_fake = radii(real), radii(fake)
    precision = (dists(fake, real) <= r_real[None]).any(1)
    recall = (dists(real, fake) <= r_fake[None]).any(1)
    return precision, recall


def score(probe, images: np.ndarray, labels: np.ndarray, ref_feats: np.ndarray) -> dict:
    """Accuracy on the guided label, Fréchet distance, precision and recall against scenes B."""
    pred = probe.predict(images)
    cols = [ATTRIBUTE_NAMES.index(n) for n in GUIDED]
    right = pred[:, cols] == labels
    feats = probe.features(images)
    precision, recall = knn_precision_recall(ref_feats, feats)
    return {
        "accuracy": rate_ci(right.all(1)),
        **{f"accuracy_{n}": rate_ci(right[:, i]) for i, n in enumerate(GUIDED)},
        # no interval: bootstrap resamples repeat points, which inflates this distance by more
        # than its spread (on the final range every basic-bootstrap interval excluded its
        # own estimate); the "real" row at the same n is the yardstick instead
        "frechet": {"value": frechet_distance(feats, ref_feats)},
        "precision": rate_ci(precision),
        "recall": rate_ci(recall),
    }


def rows() -> list[dict]:
    out = [dict(name=f"unconditional + CG {s:g}", prompt=False, w=1.0, s=s) for s in CG_SCALES]
    out += [dict(name=f"conditional + CG {s:g}", prompt=True, w=1.0, s=s) for s in CG_SCALES]
    out += [dict(name=f"CFG {w:g}", prompt=True, w=w, s=0.0) for w in CFG_SCALES[1:]]
    out += [
        dict(name=f"unconditional + CG {s:g}, ancestral", prompt=False, w=1.0, s=s, eta=1.0)
        for s in ANCESTRAL_SCALES
    ]
    return out  # "CFG 1" is "conditional + CG 0"


def sample_row(
    bundle, denoiser, row: dict, labels: np.ndarray, captions: list[str], batch: int
) -> np.ndarray:
    """One row's samples; each batch gets a guided denoiser whose target is, per sample, that
    sample's label."""
    cols = [ATTRIBUTE_NAMES.index(n) for n in GUIDED]
    out = []
    for lo in range(0, len(labels), batch):
        idx = range(lo, min(lo + batch, len(labels)))
        target = {c: torch.as_tensor(labels[idx.start : idx.stop, j]) for j, c in enumerate(cols)}
        den = ClassifierGuided(
            denoiser,
            classifier_log_prob(bundle.classifier, target),
            row["s"],
            "mean" if row.get("eta", 0.0) >= 1.0 else "eps",
        )
        out.append(
            sample_images(
                bundle,
                den,
                [captions[i] if row["prompt"] else "" for i in idx],
                [NOISE_SEED + i for i in idx],
                STEPS,
                row["w"],
                batch=batch,
                eta=row.get("eta", 0.0),
            )
        )
    return np.concatenate(out)


def evaluate_guidance(
    bundle, probe, start: int, n: int, batch: int = 16, log=print, only: list[str] | None = None
) -> dict:
    """Every row of ``rows()`` (or the ``only`` named ones) scored against scenes B."""
    from engine.denoiser import Denoiser

    if bundle.classifier is None:
        raise ValueError(f"{bundle.name} has no classifier to guide with")
    real_a, attrs_a, captions_a = render_heldout(n, start)
    real_b, _, _ = render_heldout(n, start + n)
    cols = [ATTRIBUTE_NAMES.index(n) for n in GUIDED]
    labels = attrs_a[:, cols]
    ref = probe.features(real_b)
    results = {"real": score(probe, real_a, labels, ref)}
    denoiser = Denoiser(bundle)
    for row in rows():
        if only is not None and row["name"] not in only:
            continue
        t0 = time.perf_counter()
        images = sample_row(bundle, denoiser, row, labels, captions_a, batch)
        secs = (time.perf_counter() - t0) / n
        results[row["name"]] = {**score(probe, images, labels, ref), "seconds_per_sample": secs}
        r = results[row["name"]]
        log(
            f"{row['name']:<38} acc {r['accuracy']['rate']:.3f} FD {r['frechet']['value']:.2f} "
            f"P {r['precision']['rate']:.3f} R {r['recall']['rate']:.3f} {secs:.2f} s/sample"
        )
    return {
        "scenes_a": [start, start + n - 1],
        "scenes_b": [start + n, start + 2 * n - 1],
        "n": n,
        "steps": STEPS,
        "guided": list(GUIDED),
        "rows": results,
    }


def _ci(x: dict, digits: int = 2) -> str:
    v = x.get("rate", x.get("value"))
    lo, hi = x["ci95"]
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def format_table(r: dict) -> str:
    lines = [
        f"scenes {r['scenes_a'][0]:,}+ (labels) and {r['scenes_b'][0]:,}+ (reference), "
        f"n = {r['n']} per row, {r['steps']} steps; 95 % intervals in brackets",
        "| row | accuracy (time & ground) | Fréchet | precision | recall | s/sample |",
        "|---|---|---|---|---|---|",
    ]
    for name, x in r["rows"].items():
        secs = f"{x['seconds_per_sample']:.2f}" if "seconds_per_sample" in x else "–"
        lines.append(
            f"| {name} | {_ci(x['accuracy'])} | {x['frechet']['value']:.1f} | "
            f"{_ci(x['precision'])} | {_ci(x['recall'])} | {secs} |"
        )
    return "\n".join(lines)


def save_plot(r: dict, path: Path) -> None:
    """Accuracy, precision and recall against the scale, one panel per family (drawn with
    Pillow: the project has no plotting dependency)."""
    from PIL import Image, ImageDraw

    fams = {
        "unconditional + CG (s)": [(s, f"unconditional + CG {s:g}") for s in CG_SCALES],
        "conditional + CG (s)": [(s, f"conditional + CG {s:g}") for s in CG_SCALES],
        "classifier-free (w)": [
            (w, "conditional + CG 0" if w == 1.0 else f"CFG {w:g}") for w in CFG_SCALES
        ],
    }
    metrics = {"accuracy": (200, 40, 40), "precision": (40, 110, 200), "recall": (40, 160, 70)}
    pw, ph, m = 300, 220, 36  # panel size and margin
    img = Image.new("RGB", (3 * pw + 20, ph + 70), "white")
    d = ImageDraw.Draw(img)
    for k, (title, pts) in enumerate(fams.items()):
        x0, y0 = 10 + k * pw + m, 30
        w, h = pw - m - 10, ph - 40
        d.rectangle([x0, y0, x0 + w, y0 + h], outline=(120, 120, 120))
        d.text((x0, 10), title, fill="black")
        hi = max(x for x, _ in pts)
        for v in (0.0, 0.5, 1.0):
            y = y0 + h - v * h
            d.line([x0 - 4, y, x0, y], fill="black")
            d.text((x0 - 30, y - 6), f"{v:.1f}", fill="black")
        last = -100.0
        for x, _ in pts:
            if x0 + x / hi * w - last >= 18:  # labels too close together would overlap
                last = x0 + x / hi * w
                d.text((last - 6, y0 + h + 4), f"{x:g}", fill="black")
        for metric, colour in metrics.items():
            xy = [(x0 + x / hi * w, y0 + h - r["rows"][key][metric]["rate"] * h) for x, key in pts]
            d.line(xy, fill=colour, width=2)
            for px, py in xy:
                d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
    for i, (metric, colour) in enumerate(metrics.items()):
        d.line([20 + i * 120, ph + 45, 40 + i * 120, ph + 45], fill=colour, width=3)
        d.text((45 + i * 120, ph + 39), metric, fill="black")
    d.text(
        (400, ph + 39), f"x: scale; n = {r['n']} per point, {r['steps']} DDIM steps", fill="black"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.evaluation.evaluate_guidance", description=__doc__.split("\n")[0]
    )
    p.add_argument("--n", type=int, default=48, help="samples per row (and real scenes per set)")
    p.add_argument("--seeds", default="calibration", help="calibration / development / final / N")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--probe", default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument(
        "--part",
        default="1/1",
        help="i/k: every k-th row from the i-th, to split the rows over processes",
    )
    p.add_argument("--merge", type=Path, nargs="*", help="join the JSONs of a split run")
    a = p.parse_args(argv)
    if a.merge:
        parts = [json.loads(f.read_text()) for f in a.merge]
        r = {**parts[0], "rows": {k: v for part in parts for k, v in part["rows"].items()}}
        order = ["real"] + [row["name"] for row in rows()]
        r["rows"] = {k: r["rows"][k] for k in order if k in r["rows"]}
        return _report(r, a.json, a.plot)
    from engine.models import load_model

    start = NAMED[a.seeds].start if a.seeds in NAMED else int(a.seeds.replace(",", ""))
    try:
        check_evaluation(SeedRange(start, start + SPAN), "builtin:demo", a.probe)
    except SeedRangeError as e:
        print(f"evaluate_guidance: {e}", file=sys.stderr)
        return 2
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    torch.manual_seed(0)
    i, k = (int(v) for v in a.part.split("/"))
    only = [row["name"] for n, row in enumerate(rows()) if n % k == i - 1]
    bundle = load_model("builtin:demo", device="cpu")
    r = evaluate_guidance(bundle, load_probe(a.probe), start, a.n, a.batch, log, only)
    r["part"], r["threads"] = a.part, torch.get_num_threads()
    return _report(r, a.json, a.plot if k == 1 else None)


def _report(r: dict, json_path: Path | None, plot: Path | None) -> int:
    print(format_table(r))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(r, indent=1) + "\n")
    if plot:
        save_plot(r, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
