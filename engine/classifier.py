"""A noise-aware classifier of latents: p_φ(y | x_t, t) for classifier guidance.

Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image Synthesis", §4 and App. F)
guide a diffusion model with the gradient of a classifier trained on noisy inputs x_t
across all timesteps, with t as an input; their classifier is the downsampling half of the
UNet with an attention-pool head at 8x8. Ours follows that recipe at the scale of the demo
model's 16x16 latents: residual blocks whose normalisation is modulated by the timestep
embedding (scale and shift, as in the UNet), two downsamplings to 4x4, an attention pool,
and one linear head per attribute of the demo world (``engine.world.scene.ATTRIBUTE_SPEC``,
the attributes the probe reads: time of day, ground, object counts, colours, ...).

A model folder may hold one in ``classifier/`` (``classifier.safetensors``, its
architecture and attribute names in the file's metadata); ``engine.models`` loads it into
``bundle.classifier``. Targets are written in words (``parse_targets``): "night, snow
ground" is {time_of_day: night, ground: snow}.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

WEIGHTS_NAME = "classifier.safetensors"


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, as in the DDPM UNet)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], 1)


class _ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, then a timestep-modulated GroupNorm → SiLU → conv, plus skip."""

    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, 1)
        h = self.norm2(h) * (1 + scale) + shift  # the UNet's "scale-shift norm"
        return self.skip(x) + self.conv2(F.silu(h))


class _AttentionPool(nn.Module):
    """Pool a feature map to one vector: the mean token attends over all positions (the
    attention-pool head of Dhariwal & Nichol's classifier, from CLIP's ResNet)."""

    def __init__(self, channels: int, tokens: int, heads: int = 4):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(tokens + 1, channels) / channels**0.5)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(2).transpose(1, 2)  # N x HW x C
        pos = self.pos
        if h.shape[1] != pos.shape[0] - 1:  # another working size: resample the grid's part
            side = int(round((pos.shape[0] - 1) ** 0.5))
            grid = pos[1:].T.reshape(1, -1, side, side)
            grid = F.interpolate(grid, size=x.shape[-2:], mode="bilinear", align_corners=False)
            pos = torch.cat([pos[:1], grid.flatten(2)[0].T])
        h = torch.cat([h.mean(1, keepdim=True), h], 1) + pos
        out, _ = self.attn(h[:, :1], h, h, need_weights=False)
        return out[:, 0]


class LatentClassifier(nn.Module):
    """(x_t, t) → per-attribute logits, for scaled latents x_t at any noise level."""

    def __init__(
        self,
        attributes: list[tuple[str, list[str]]],
        in_channels: int = 4,
        latent_size: int = 16,
        widths: tuple[int, ...] = (64, 96, 128),
        emb_dim: int = 128,
    ):
        super().__init__()
        self.attributes = [(str(n), [str(c) for c in cl]) for n, cl in attributes]
        self.in_channels, self.latent_size = int(in_channels), int(latent_size)
        self.widths, self.emb_dim = tuple(int(w) for w in widths), int(emb_dim)
        self.time = nn.Sequential(
            nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:] + widths[-1:])):
            self.blocks.append(_ResBlock(c_in, c_in, emb_dim))
            last = i == len(widths) - 1
            self.downs.append(nn.Identity() if last else nn.Conv2d(c_in, c_out, 3, 2, 1))
        side = latent_size // 2 ** (len(widths) - 1)
        self.norm = nn.GroupNorm(8, widths[-1])
        self.pool = _AttentionPool(widths[-1], side * side)
        self.heads = nn.Linear(widths[-1], sum(len(c) for _, c in self.attributes))

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.attributes]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """Per-attribute logits (a list of N x classes tensors)."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time(timestep_embedding(t, self.emb_dim))
        h = self.stem(x)
        for block, down in zip(self.blocks, self.downs):
            h = down(block(h, emb))
        logits = self.heads(self.pool(F.silu(self.norm(h))))
        return list(logits.split([len(c) for _, c in self.attributes], dim=1))

    def log_prob(self, x: torch.Tensor, t: torch.Tensor, target: dict) -> torch.Tensor:
        """log p(y | x_t) per sample for a target {attribute index: class index, or one class
        index per sample}: the sum of the attributes' log-softmax (independent heads)."""
        logits = self(x, t)
        out = x.new_zeros(x.shape[0], dtype=torch.float32)
        for a, c in target.items():
            c = torch.as_tensor(c, device=x.device).expand(x.shape[0])
            out = out + F.log_softmax(logits[a].float(), 1).gather(1, c[:, None])[:, 0]
        return out

    def config(self) -> dict:
        return {
            "attributes": self.attributes,
            "in_channels": self.in_channels,
            "latent_size": self.latent_size,
            "widths": list(self.widths),
            "emb_dim": self.emb_dim,
        }


def save_classifier(model: LatentClassifier, folder: str | Path):
    """Write ``folder/classifier.safetensors`` with the architecture in its metadata."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(model.config())}
    save_file(state, str(folder / WEIGHTS_NAME), metadata=meta)
    return folder / WEIGHTS_NAME


def load_classifier(folder: str | Path, device="cpu") -> LatentClassifier:
    """A classifier saved by ``save_classifier``, fp32, in eval mode and frozen."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder)
    path = path / WEIGHTS_NAME if path.is_dir() else path
    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    cfg["widths"] = tuple(cfg["widths"])
    model = LatentClassifier(**cfg)
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval().requires_grad_(False)


# ---- targets in words -------------------------------------------------------------------

# words for the attributes whose class names alone are ambiguous ("2" trees or houses?)
_SUFFIXES = {
    "ground": ("ground",),
    "house_wall": ("wall", "walls", "house", "houses"),
    "house_roof": ("roof", "roofs"),
}
_NOUNS = {
    "n_pine_tree": ("pine tree", "pine trees", "pines"),
    "n_round_tree": ("round tree", "round trees"),
    "n_house": ("house", "houses"),
    "n_rock": ("rock", "rocks"),
    "n_boat": ("boat", "boats"),
}
_FLAGS = {
    "has_mountains": "mountains",
    "snow_caps": "snow caps",
    "has_sun": "sun",
    "has_moon": "moon",
}


def target_phrases(attributes: list[tuple[str, list[str]]]) -> dict[str, tuple[int, int]]:
    """Every phrase a target may use → (attribute index, class index)."""
    out: dict[str, tuple[int, int]] = {}
    for a, (name, classes) in enumerate(attributes):
        for c, cls in enumerate(classes):
            cls = cls.lower()
            out[f"{name}={cls}"] = (a, c)  # the exact form always works
            if name == "time_of_day":
                out[cls] = (a, c)
            elif name in _SUFFIXES and cls != "none":
                for s in _SUFFIXES[name]:
                    out[f"{cls} {s}"] = (a, c)
            elif name in _NOUNS:
                for noun in _NOUNS[name]:
                    out[f"{cls} {noun}"] = (a, c)
                    if cls == "0":
                        out[f"no {noun}"] = (a, c)
            elif name in _FLAGS:
                out[_FLAGS[name] if cls == "true" else f"no {_FLAGS[name]}"] = (a, c)
    return out


def parse_targets(text: str, attributes: list[tuple[str, list[str]]]) -> dict[int, int]:
    """ "night, snow ground, 2 houses" → {attribute index: class index}; a clear error names
    the phrases it knows when one is not understood or two contradict."""
    phrases = target_phrases(attributes)
    target: dict[int, int] = {}
    for raw in re.split(r"[,;]", text):
        p = " ".join(raw.lower().split())
        if not p:
            continue
        if p not in phrases:
            examples = ", ".join(sorted(k for k in phrases if "=" not in k)[:12])
            raise InputError(
                f"The classifier does not know {raw.strip()!r}. It knows phrases such as: "
                f"{examples}, … (or attribute=class, e.g. time_of_day=night)."
            )
        a, c = phrases[p]
        if target.get(a, c) != c:
            raise InputError(f"The targets ask for two values of {attributes[a][0]}; keep one.")
        target[a] = c
    if not target:
        raise InputError("Name at least one target for classifier guidance, e.g. 'night'.")
    return target
