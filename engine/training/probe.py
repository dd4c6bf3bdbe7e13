"""The attribute probe: a small CNN that reads the demo world's attribute vector off an image.

It is the yardstick of ``evaluate.py``: ``predict`` gives one class per attribute of
``ATTRIBUTE_SPEC`` (time of day, ground, object counts, house colours, ...), so a generated
image can be scored against the caption it was generated from (a classification accuracy
score in spirit: Ravuri & Vinyals 2019), and ``features`` gives the penultimate layer, the
embedding in which ``frechet_distance`` compares sets of images (as FID does with Inception
features, Heusel et al. 2017).

Architecture: a stride-2 4x4 stem at 128 px, four stages of (stride-2 conv, conv) with batch
norm, average and max pooling concatenated (average pooling lets it count objects, max
pooling lets it see a single small sun or rock), a hidden layer (the features), and one
linear classification head per attribute. 268 k parameters (1.1 MB), ~30 M multiply-adds
per image: cheap on a CPU.

Training augments with flips (the attributes are mirror-symmetric), small colour jitter,
blur and noise, so that the probe also reads the smoother, slightly off-colour images a
VAE decodes.

    python -m engine.training.probe train --data CACHE --out RUN1 --steps 1600 --lr 3e-3
    python -m engine.training.probe train --data CACHE --out assets/probe --init RUN1 \
        --steps 1000 --lr 1.5e-3      # how the shipped probe was made (see probe.json)
    python -m engine.training.probe test [--n 2000]       # held-out accuracy of the shipped probe
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..world.scene import ATTRIBUTE_CLASSES, ATTRIBUTE_NAMES, ATTRIBUTE_SPEC, render_seed

PROBE_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "probe"
WEIGHTS_NAME = "probe.safetensors"
REPORT_NAME = "probe.json"
HELDOUT_SEED = 1_000_000  # held-out scenes start here (training caches use seeds < 10^6)
INPUT_SIZE = 128


def _conv(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, padding=(k - 1) // 2 if k % 2 else 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class AttributeProbe(nn.Module):
    """uint8 images → attribute classes (``predict``) and a feature vector (``features``)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 48, 64, 96), feature_dim: int = 64):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.feature_dim = int(feature_dim)
        layers: list[nn.Module] = [_conv(3, widths[0], k=4, stride=2)]  # 128 -> 64
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [_conv(c_in, c_out, stride=2), _conv(c_out, c_out)]
        self.body = nn.Sequential(*layers)  # 64 -> 4 with five widths
        self.hidden = nn.Linear(2 * widths[-1], feature_dim)
        self.heads = nn.Linear(feature_dim, sum(ATTRIBUTE_CLASSES))
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)

    # ---- tensors ---------------------------------------------------------------------------

    @staticmethod
    def to_input(images) -> torch.Tensor:
        """uint8 NxHxWx3 (array or tensor, any size) → float Nx3x128x128 in [-1, 1]."""
        x = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
        if x.ndim == 3:
            x = x[None]
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(
                x,
                size=(INPUT_SIZE, INPUT_SIZE),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation hidden layer (N x feature_dim) for normalised input x."""
        h = self.body(x)
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return self.hidden(h)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-attribute logits (a list of N x classes tensors) for normalised input x."""
        logits = self.heads(F.leaky_relu(self.embed(x), 0.1))
        return list(logits.split(ATTRIBUTE_CLASSES, dim=1))

    # ---- numpy API -------------------------------------------------------------------------

    @torch.no_grad()
    def _batched(self, images, fn, batch: int = 128) -> np.ndarray:
        was = self.training
        self.eval()
        dev = self._device_probe.device
        out = []
        for i in range(0, len(images), batch):
            out.append(fn(self.to_input(images[i : i + batch]).to(dev)).cpu().numpy())
        self.train(was)
        return np.concatenate(out) if out else np.zeros((0,))

    def predict(self, images) -> np.ndarray:
        """uint8 NxHxWx3 → int64 N x len(ATTRIBUTE_SPEC) class indices (as ``attribute_vector``)."""
        return self._batched(
            images, lambda x: torch.stack([z.argmax(1) for z in self(x)], 1)
        ).astype(np.int64)

    def features(self, images) -> np.ndarray:
        """uint8 NxHxWx3 → float64 N x feature_dim penultimate-layer features."""
        return self._batched(images, self.embed).astype(np.float64)

    def config(self) -> dict:
        return {
            "widths": list(self.widths),
            "feature_dim": self.feature_dim,
            "input_size": INPUT_SIZE,
            "attributes": [[n, [str(c) for c in cl]] for n, cl in ATTRIBUTE_SPEC],
        }


# --------------------------------------------------------------------------- save / load


def save_probe(probe: AttributeProbe, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in probe.state_dict().items()}
    path = folder / WEIGHTS_NAME
    save_file(state, str(path), metadata={"config": json.dumps(probe.config())})
    return path


def load_probe(path: str | Path | None = None, device: str = "cpu") -> AttributeProbe:
    """The shipped probe (``assets/probe/probe.safetensors``) or one at ``path`` (file or folder),
    in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else PROBE_DIR
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"No attribute probe at {path}; train one with "
            "`python -m engine.training.probe train --data CACHE --out assets/probe`."
        )
    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    names = [n for n, _ in cfg["attributes"]]
    if tuple(names) != ATTRIBUTE_NAMES:
        raise ValueError(f"probe {path} was trained for attributes {names}, not {ATTRIBUTE_NAMES}")
    probe = AttributeProbe(tuple(cfg["widths"]), cfg["feature_dim"])
    probe.load_state_dict(load_file(str(path)))
    return probe.to(device).eval().requires_grad_(False)


# --------------------------------------------------------------------------- metrics


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N x D) and b (M x D):
    ||μa − μb||² + tr(Σa + Σb − 2 (Σa Σb)^½)  (Dowson & Landau 1982; FID, Heusel et al. 2017).

    tr((Σa Σb)^½) is computed as Σ √λ over the eigenvalues of the symmetric PSD matrix
    Σa^½ Σb Σa^½, which has the same spectrum as Σa Σb - stable without complex sqrtm."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return gaussian_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def gaussian_frechet(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)
    return max(d, 0.0)


def render_heldout(n: int, start: int = HELDOUT_SEED) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Render scenes ``start .. start+n-1``: (uint8 N x 128 x 128 x 3 images, N x 13 attributes,
    captions)."""
    rs = [render_seed(s) for s in range(start, start + n)]
    return (
        np.stack([r.image for r in rs]) if rs else np.zeros((0, 128, 128, 3), np.uint8),
        np.stack([r.attribute_vector for r in rs]) if rs else np.zeros((0, 13), np.int64),
        [r.caption for r in rs],
    )


def attribute_accuracy(pred: np.ndarray, true: np.ndarray) -> dict:
    """{"mean": mean over attributes, "per_attribute": {name: accuracy}} for N x 13 class arrays."""
    per = (np.asarray(pred) == np.asarray(true)).mean(0)
    return {
        "mean": float(per.mean()),
        "per_attribute": {n: float(a) for n, a in zip(ATTRIBUTE_NAMES, per)},
    }


# --------------------------------------------------------------------------- training


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flips, small colour jitter, blur and noise on a normalised batch (N x 3 x H x W)."""
    n = x.shape[0]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(shape or (n, 1, 1), generator=g)

    flip = torch.nonzero(torch.rand(n, generator=g) < 0.5).flatten()
    x = x.index_copy(0, flip, x[flip].flip(3))
    # colour jitter as one affine map per image: brightness a and offset c, contrast k about
    # the image mean m, per-channel gain, saturation s about the grey level
    a, c, k, s = u(0.9, 1.1), u(-0.08, 0.08), u(0.85, 1.15), u(0.85, 1.15)
    m = x.mean((1, 2, 3))[:, None, None]
    eye, grey = torch.eye(3), torch.full((3, 3), 1 / 3)
    sat = s * eye + (1 - s) * grey  # N x 3 x 3
    gain = torch.diag_embed(1 + (torch.rand(n, 3, generator=g) - 0.5) * 0.1)
    mat = sat @ gain
    bias = mat.sum(2, keepdim=True) * (a * m + c - k * a * m)  # N x 3 x 1
    x = torch.baddbmm(bias, k * a * mat, x.flatten(2)).view_as(x)
    # blur about half the batch (decoded images are smoother than renders)
    pick = torch.nonzero(torch.rand(n, generator=g) < 0.5).flatten()
    if len(pick):
        sigma = float(0.4 + 0.8 * torch.rand((), generator=g))
        w = torch.exp(-(torch.arange(-2, 3, dtype=x.dtype) ** 2) / (2 * sigma**2))
        w = w / w.sum()
        b = F.pad(x[pick], (2, 2, 2, 2), mode="replicate")
        b = F.conv2d(b, w.view(1, 1, 1, 5).expand(3, 1, 1, 5), groups=3)
        b = F.conv2d(b, w.view(1, 1, 5, 1).expand(3, 1, 5, 1), groups=3)
        x = x.index_copy(0, pick, b)
    # pixel noise on about a quarter
    pick = torch.nonzero(torch.rand(n, generator=g) < 0.25).flatten()
    if len(pick):
        noise = torch.randn((len(pick),) + x.shape[1:], generator=g) * 0.03
        x = x.index_add(0, pick, noise)
    return x


def train_probe(
    cache_dir: str | Path,
    out: str | Path,
    steps: int = 3000,
    batch: int = 64,
    lr: float = 3e-3,
    minutes: float | None = None,
    eval_n: int = 2000,
    seed: int = 0,
    log_every: int = 100,
    threads: int | None = 1,
    init: str | Path | None = None,
) -> dict:
    """Train a probe on a world cache (see ``dataset.py``), save it to ``out`` with a report of
    its accuracy on ``eval_n`` held-out renders (seeds from ``HELDOUT_SEED``); return the report.

    The LR follows a cosine from ``lr`` after a short warm-up over ``steps``; ``minutes`` stops
    early (the cosine is then cut short, which costs a little accuracy). ``init`` starts from
    a saved probe's weights.

    Each head's loss is weighted by its running loss over the mean one, so that the heads
    that are easy early (time of day, ground) do not leave the hard ones (object counts)
    stuck at their prior."""
    from .dataset import WorldCache

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cache = WorldCache.open(cache_dir)
    attrs = torch.from_numpy(np.asarray(cache.attributes, np.int64))
    n = len(cache)
    probe = load_probe(init).train().requires_grad_(True) if init else AttributeProbe()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 30)

    def lr_at(i):
        return lr * min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))

    t0, cpu0 = time.perf_counter(), time.process_time()
    losses: list[float] = []
    running = None
    done = 0
    for step in range(steps):
        if minutes is not None and time.perf_counter() - t0 > 60 * minutes:
            print(f"stopping at step {step}: {minutes} min budget spent", flush=True)
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        idx = np.sort(rng.choice(n, batch, replace=False))
        x = augment(probe.to_input(cache.images[idx]), g)
        y = attrs[idx]
        logits = probe(x)
        per_head = torch.stack([F.cross_entropy(z, y[:, k]) for k, z in enumerate(logits)])
        running = (
            per_head.detach() if running is None else 0.98 * running + 0.02 * per_head.detach()
        )
        weights = (running / running.mean()).clamp(0.2, 5.0)
        loss = (weights * per_head).sum() / len(logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        done = step + 1
        if done % log_every == 0 or done == steps:
            dt = time.perf_counter() - t0
            print(
                f"step {done}/{steps}  loss {np.mean(losses[-log_every:]):.4f}  "
                f"lr {lr_at(step):.2e}  {dt / done:.3f} s/step  hardest: "
                + ", ".join(
                    f"{ATTRIBUTE_NAMES[k]} {running[k]:.3f}" for k in running.argsort()[-3:].flip(0)
                ),
                flush=True,
            )
    probe.eval()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    images, true, _ = render_heldout(eval_n)
    acc = attribute_accuracy(probe.predict(images), true)
    report = {
        "heldout_seeds": [HELDOUT_SEED, HELDOUT_SEED + eval_n - 1],
        "heldout_accuracy": acc,
        "train": {
            "cache": str(cache_dir),
            "scenes": n,
            "steps": done,
            "batch": batch,
            "lr": lr,
            "init": str(init) if init else None,
            "final_loss": float(np.mean(losses[-log_every:])) if losses else None,
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
            "threads": torch.get_num_threads(),
        },
        "params": sum(p.numel() for p in probe.parameters()),
        "config": probe.config(),
    }
    save_probe(probe, out)
    (Path(out) / REPORT_NAME).write_text(json.dumps(report, indent=1) + "\n")
    print(format_accuracy(acc))
    return report


def format_accuracy(acc: dict) -> str:
    rows = [f"  {n:<14} {a:6.1%}" for n, a in acc["per_attribute"].items()]
    return "\n".join(rows + [f"  {'mean':<14} {acc['mean']:6.1%}"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.training.probe", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a probe on a world cache")
    t.add_argument("--data", required=True, help="world cache folder (dataset.py)")
    t.add_argument("--out", default=str(PROBE_DIR))
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--minutes", type=float, default=None)
    t.add_argument("--eval-n", type=int, default=2000)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--init", default=None, help="start from this probe's weights")
    e = sub.add_parser("test", help="held-out accuracy of a trained probe")
    e.add_argument("--probe", default=str(PROBE_DIR))
    e.add_argument("--n", type=int, default=2000)
    e.add_argument("--start", type=int, default=HELDOUT_SEED)
    a = p.parse_args(argv)
    if a.cmd == "train":
        train_probe(
            a.data,
            a.out,
            a.steps,
            a.batch,
            a.lr,
            a.minutes,
            a.eval_n,
            threads=a.threads,
            init=a.init,
        )
    else:
        images, true, _ = render_heldout(a.n, a.start)
        print(format_accuracy(attribute_accuracy(load_probe(a.probe).predict(images), true)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
