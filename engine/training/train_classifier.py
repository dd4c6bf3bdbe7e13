"""Train the noise-aware latent classifier that classifier guidance uses (``engine.classifier``).

Dhariwal & Nichol 2021, §4.1 and App. F: the classifier sees x_t ~ q(x_t | x_0) at a
timestep drawn uniformly from the whole schedule, with t as an input, and is trained with
cross-entropy on the clean image's labels. Here x_0 are the demo model's VAE latents of
demo-world renders (scaled to unit variance as the UNet sees them), the labels the scenes'
attribute vectors, one cross-entropy per attribute, summed. The attributes are
mirror-symmetric, so latents are flipped left-right at random.

    python -m engine.training.dataset --n 24000 --out CACHE          # training seeds 0+
    python -m engine.training.train_classifier --data CACHE --run RUN --steps 4000
    python -m engine.training.train_classifier --data CACHE --run RUN --export \
        assets/models/demo/classifier                      # accuracy against t, then export

The run folder keeps the encoded latents (``latents.pt``) and a checkpoint (``classifier.ckpt``),
so a stopped run resumes. Accuracy is measured on calibration-range scenes (never on
training seeds) at a grid of timesteps, and written beside the weights (``report.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..classifier import LatentClassifier, load_classifier, save_classifier
from ..evaluation.seed_ranges import CALIBRATION
from ..world.scene import ATTRIBUTE_SPEC, render_seed
from .dataset import WorldCache
from .train import _ema_update, encode_dataset, lr_factor

EVAL_SEED = CALIBRATION.start + 300_000  # 800,000+: a calibration slice no one else used
T_GRID = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)


def attributes_list() -> list[tuple[str, list[str]]]:
    return [(n, [str(c) for c in cl]) for n, cl in ATTRIBUTE_SPEC]


def _latents(bundle, cache: WorldCache, run: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    path = run / "latents.pt"
    if not path.exists():
        n = min(n, len(cache))
        lat = encode_dataset(bundle.vae, cache.images[:n], bundle.device)
        attrs = torch.from_numpy(np.array(cache.attributes[:n], dtype=np.int64))
        torch.save({"latents": lat, "attributes": attrs, "start_seed": cache.start_seed}, path)
    state = torch.load(path)
    return state["latents"], state["attributes"]


def train_classifier(
    data: Path, run: Path, steps: int, batch: int = 256, lr: float = 1e-3, n_images: int = 24_000
) -> Path:
    """Cross-entropy on q(x_t | x_0) at uniform t; AdamW, linear warm-up then cosine decay,
    an EMA of the weights (decay 0.999) is what gets exported."""
    from ..models import load_model

    run.mkdir(parents=True, exist_ok=True)
    bundle = load_model("builtin:demo", device="cpu")
    lat, attrs = _latents(bundle, WorldCache.open(data), run, n_images)
    mean, std = lat[:, :4].float(), lat[:, 4:].float()
    scale, sched = bundle.vae_scale, bundle.schedule
    ac = torch.tensor(sched.alphas_cumprod, dtype=torch.float32)
    model = LatentClassifier(attributes_list(), latent_size=mean.shape[-1])
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    ckpt, step = run / "classifier.ckpt", 0
    if ckpt.exists():
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    g = torch.Generator().manual_seed(2000 + step)
    sizes = [len(c) for _, c in ATTRIBUTE_SPEC]
    t0, seen = time.time(), 0
    while step < steps:
        idx = torch.randint(0, len(mean), (batch,), generator=g)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        flip = torch.rand(batch, generator=g) < 0.5
        z0[flip] = z0[flip].flip(-1)
        t = torch.randint(0, len(ac), (batch,), generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn(z0.shape, generator=g)
        logits = model(xt, t)
        y = attrs[idx]
        loss = sum(F.cross_entropy(lg, y[:, i]) for i, lg in enumerate(logits)) / len(sizes)
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, steps, warmup=200)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += batch
        _ema_update(ema, model, min(0.999, (1 + step) / (10 + step)))
        if step % 50 == 0:
            rate = seen / (time.time() - t0)
            print(f"step {step}/{steps} loss {loss.item():.4f} ({rate:.0f} latents/s)", flush=True)
        if step % 500 == 0 or step == steps:
            torch.save(
                {
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step,
                    "config": ema.config(),
                },
                ckpt,
            )
    return ckpt


@torch.no_grad()
def accuracy_against_t(model, bundle, n: int = 1000, start: int = EVAL_SEED) -> dict:
    """Accuracy per attribute at each timestep of ``T_GRID`` on renders of seeds
    ``start .. start + n - 1``, with fixed noise (seed 0) so runs compare."""
    renders = [render_seed(start + i, 128) for i in range(n)]
    images = np.stack([r.image for r in renders])
    lat = encode_dataset(bundle.vae, images, bundle.device, log=lambda *_: None)
    z0 = lat[:, :4].float() * bundle.vae_scale
    y = torch.from_numpy(np.stack([r.attribute_vector for r in renders]).astype(np.int64))
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    out: dict[str, dict] = {}
    for t in T_GRID:
        a = bundle.schedule.alpha(t)
        xt = math.sqrt(a) * z0 + math.sqrt(1 - a) * noise
        preds = [
            torch.cat(
                [
                    lg.argmax(1)
                    for lg in [model(xt[i : i + 250], torch.tensor(t))[k] for i in range(0, n, 250)]
                ]
            )
            for k in range(len(ATTRIBUTE_SPEC))
        ]
        out[str(t)] = {
            name: round(float((p == y[:, k]).float().mean()), 4)
            for k, ((name, _), p) in enumerate(zip(ATTRIBUTE_SPEC, preds))
        }
    return {"seeds": [start, start + n - 1], "n": n, "accuracy": out}


def export(run: Path, out: Path, n_eval: int) -> dict:
    from ..models import load_model

    state = torch.load(run / "classifier.ckpt")
    cfg = dict(state["config"], widths=tuple(state["config"]["widths"]))
    model = LatentClassifier(**cfg)
    model.load_state_dict(state["ema"])
    model.eval()
    bundle = load_model("builtin:demo", device="cpu")
    report = {
        "training": {"steps": state["step"], "seeds": "0+ (the training range)"},
        "params": sum(p.numel() for p in model.parameters()),
        **accuracy_against_t(model, bundle, n_eval),
    }
    save_classifier(model, out)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    load_classifier(out)  # what was written loads
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="a world cache (engine.training.dataset)")
    ap.add_argument("--run", type=Path, required=True, help="working folder (resumable)")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-images", type=int, default=24_000)
    ap.add_argument("--export", type=Path, help="measure and write the classifier here")
    ap.add_argument("--n-eval", type=int, default=1000)
    a = ap.parse_args(argv)
    if a.export:
        report = export(a.run, a.export, a.n_eval)
        for t, acc in report["accuracy"].items():
            print(f"t={t:>4}: " + " ".join(f"{k}={v:.2f}" for k, v in acc.items()))
        return 0
    if a.data is None:
        ap.error("--data is required to train")
    train_classifier(a.data, a.run, a.steps, a.batch, a.lr, a.n_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
