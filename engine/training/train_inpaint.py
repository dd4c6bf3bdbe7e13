"""Fine-tune the demo UNet into an inpainting model.

The recipe of SD's inpainting checkpoints (Rombach et al. 2022, the sd-v1-5-inpainting
model card) at demo size: the UNet's first convolution takes 9 channels — the noisy latents,
the mask, and the latents of the image with the masked region zeroed — its 5 new input
channels start at zero (so step 0 is exactly the demo model), and it learns ε-prediction on
the world's scenes under random masks of the shapes people paint: strokes, boxes, object
masks from the world's label maps (grown by a few pixels, as painted around an object), and
the whole image (so it still generates from nothing). The text encoder and VAE stay frozen.

With ``--swap-share`` a share of each batch is object swaps instead: a scene's land object
re-rendered as another land kind, the mask the union of both kinds' footprints (what a user
paints to make room for the new object), the target the re-rendered scene under its caption.
With object masks alone the hole has the old object's outline, which tells the model what
was there; a pine asked for in a round tree's hole came out as a faint sliver or another
house the caption named. Tried as a second stage for ``builtin:demo-inpaint``: ahead on
calibration scenes, level on the final ones, so not shipped (its model card).

With ``--object-prompts`` a share of the rows whose mask holds one object (object masks and
swaps) are captioned with that object alone ("a pine tree"), as users prompt an inpainting
model and as the evaluation found works best for the shipped weights (the local text of
SmartBrush, Xie et al. 2023, "SmartBrush: Text and Shape Guided Object Inpainting with
Diffusion Model", sec. 3.1). Tried as a second stage too: 99 of 120 calibration and
development scenes against the shipped weights' 95 after 1,338 steps, not shipped (the model
card).

    python -m engine.training data --out runs/world --n 8000
    python -m engine.training.train_inpaint --data runs/world --run runs/inpaint --n-images 6000 \
        --minutes 92 --threads 2
    python -m engine.training.train_inpaint --run runs/inpaint --export assets/models/demo-inpaint

Shipped as ``builtin:demo-inpaint``; its model card has the run and its figures.

Resumable like ``engine.training.train`` (checkpoint in the run folder, SIGINT/SIGTERM save
and stop, ``--minutes`` fits the cosine to the time), one JSON line per log step in
``<run>/log.jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..loaders import INPAINT_IN_CHANNELS, load_diffusers_folder
from ..models import DEMO_MODEL_DIR
from ..schedule import Schedule
from ..world.captions import NOUNS
from ..world.raster import FIRST_OBJECT_LABEL
from ..world.scene import LAND_KINDS, object_region, redescribe, render, render_seed
from .dataset import WorldCache
from .train import (
    Logger,
    StopFlag,
    _ema_update,
    _save,
    encode_dataset,
    lr_factor,
    noised_batch,
)

# how often each mask shape is drawn (object masks are what the evaluation's inpainting asks
# for, strokes and boxes what the editor's brush and selection make)
MASK_SHAPES = {"object": 0.45, "box": 0.2, "strokes": 0.25, "full": 0.1}


def inpaint_unet(unet):
    """A copy of ``unet`` whose first convolution takes 9 channels; the 5 new input channels
    (mask, masked-image latents) start at zero, so the model starts as ``unet``."""
    from diffusers import UNet2DConditionModel

    config = {**unet.config, "in_channels": INPAINT_IN_CHANNELS}
    new = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    w = state["conv_in.weight"]
    grown = torch.zeros(w.shape[0], INPAINT_IN_CHANNELS, *w.shape[2:], dtype=w.dtype)
    grown[:, : w.shape[1]] = w
    new.load_state_dict({**state, "conv_in.weight": grown})
    return new


def object_phrase(kind: str, rng: np.random.Generator) -> str:
    """One object of ``kind`` in a few words, e.g. "a fir tree" (either of its synonyms)."""
    singular = NOUNS[kind][int(rng.integers(len(NOUNS[kind])))][0]
    return f"a {singular}"


def with_object_prompts(cap, kinds, share, phrase_ids, empty, rng):
    """Token rows ``cap`` with each row whose mask holds one object (``kinds[row]`` not None)
    and whose caption was not dropped for guidance (not ``empty``) recaptioned, with
    probability ``share``, as that object alone (``object_phrase``; ``phrase_ids`` maps each
    phrase to its tokens)."""
    cap = cap.clone()
    for row, kind in enumerate(kinds):
        if kind and rng.random() < share and not torch.equal(cap[row], empty):
            cap[row] = phrase_ids[object_phrase(kind, rng)]
    return cap


def object_swaps(seeds, rng: np.random.Generator, least: int = 32):
    """(images, regions, captions, new kinds) of object swaps in the scenes ``seeds``: one
    land object of at least ``least`` pixels per scene (scenes without one are skipped)
    re-rendered as another land kind; the region is both footprints and every pixel the swap
    changed."""
    images, regions, captions, kinds = [], [], [], []
    for seed in seeds:
        before = render_seed(int(seed))
        names = [
            o.name
            for o in before.scene.objects
            if o.kind in LAND_KINDS and before.masks[o.name].sum() >= least
        ]
        if not names:
            continue
        name = names[int(rng.integers(len(names)))]
        old = before.scene.object(name).kind
        new = rng.choice([k for k in LAND_KINDS if k != old])
        after = render(redescribe(before.scene, name, str(new))[0])
        regions.append(object_region(before, after, name))
        images.append(after.image)
        captions.append(after.caption)
        kinds.append(str(new))
    return np.stack(images), np.stack(regions), captions, kinds


def grown(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``region`` grown by 1–6 px, as a mask painted loosely around it (float HxW)."""
    grow = int(rng.integers(1, 7))
    t = torch.from_numpy(region.astype(np.float32))[None, None]
    return F.max_pool2d(t, 2 * grow + 1, stride=1, padding=grow)[0, 0].numpy()


def random_mask(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """One float HxW mask (1 = generate) of a shape people paint, for a scene's label map."""
    return random_mask_of(rng, labels)[0]


def random_mask_of(rng: np.random.Generator, labels: np.ndarray) -> tuple[np.ndarray, int | None]:
    """``random_mask``, and the label of the object it masks (None for other shapes)."""
    size = labels.shape[0]
    shape = rng.choice(list(MASK_SHAPES), p=list(MASK_SHAPES.values()))
    objects = np.unique(labels[labels >= FIRST_OBJECT_LABEL])
    if shape == "object" and len(objects):
        label = int(rng.choice(objects))
        return grown(labels == label, rng), label
    if shape == "full":
        return np.ones((size, size), np.float32), None
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    if shape == "strokes":
        for _ in range(int(rng.integers(1, 4))):
            points = [tuple(rng.integers(0, size, 2).tolist())]
            for _ in range(int(rng.integers(1, 5))):
                step = rng.normal(0, size / 5, 2)
                points.append(tuple(np.clip(np.add(points[-1], step), 0, size - 1).tolist()))
            width = int(rng.integers(6, 22))
            draw.line(points, fill=255, width=width, joint="curve")
            for p in points:  # round ends, as a brush leaves them
                r = width / 2
                draw.ellipse((p[0] - r, p[1] - r, p[0] + r, p[1] + r), fill=255)
    else:  # a box (also the fallback for a scene with no object)
        w, h = rng.integers(size // 8, size * 5 // 8, 2)
        x, y = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
        draw.rectangle((int(x), int(y), int(x + w - 1), int(y + h - 1)), fill=255)
    return np.asarray(img, dtype=np.float32) / 255, None


@torch.no_grad()
def conditioning(vae, scale: float, images: torch.Tensor, masks: torch.Tensor):
    """The inpainting UNet's extra inputs for a batch, as ``engine.denoiser.inpaint_inputs``
    builds them at inference (and diffusers' pipeline does): binary mask at latent size by
    nearest interpolation, and the posterior-mean latents of ``images * (mask < 0.5)``."""
    m = (masks >= 0.5).float()
    # bf16 halves the frozen encoder's share of a CPU step; its error (a few per cent of the
    # latents' range at most) is far below the noise the UNet is trained under
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        z = vae.encode(images * (m < 0.5)).latent_dist.mean.float() * scale
    return torch.cat([F.interpolate(m, size=z.shape[-2:]), z], dim=1)


def train_inpaint(
    data: Path,
    run: Path,
    steps: int = 100_000,
    batch: int = 32,
    lr: float = 2e-4,
    dropout: float = 0.1,
    ema_decay: float = 0.998,
    min_snr_gamma: float = 5.0,
    warmup: int = 100,
    minutes: float | None = None,
    log_every: int = 20,
    ckpt_every: int = 100,
    base: Path = DEMO_MODEL_DIR,
    n_images: int | None = None,
    init: Path | None = None,
    swap_share: float = 0.0,
    n_swaps: int = 4000,
    object_prompts: float = 0.0,
) -> Path:
    """ε-prediction with Min-SNR-γ weights (as ``train.train_unet``) on the 9-channel UNet,
    from ``base``'s weights, or from the inpainting UNet of the folder ``init`` (a second
    stage: a fresh optimiser and cosine on an earlier run's export); only the UNet learns.
    ``swap_share`` of each batch (on average) comes from ``n_swaps`` object swaps
    (``object_swaps``) of the cache's first scenes. ``object_prompts``: the share of rows
    masking one object (not dropped for guidance) captioned with that object alone
    (``object_phrase``). CPU or CUDA (``pick_device``'s choice)."""
    from ..models import pick_device

    dev, _ = pick_device("auto", "fp32")
    run.mkdir(parents=True, exist_ok=True)
    parts = load_diffusers_folder(base)
    vae, text, tok = parts["vae"].to(dev), parts["text_encoder"].to(dev), parts["tokenizer"]
    scale = float(parts["vae_scale"])
    if init is None:
        unet = inpaint_unet(parts["unet"])
    else:
        unet = load_diffusers_folder(init)["unet"].float()
        if unet.config.in_channels != INPAINT_IN_CHANNELS:
            raise SystemExit(
                f"{init} is not an inpainting model (its UNet takes "
                f"{unet.config.in_channels} channels, not {INPAINT_IN_CHANNELS})"
            )
    unet = unet.to(dev).train()
    cache = WorldCache.open(data)
    latents_path = run / "latents.pt"
    if not latents_path.exists():
        n = min(n_images or len(cache), len(cache))  # encoding is a CPU run's first cost
        _save(latents_path, {"latents": encode_dataset(vae, cache.images[:n], dev)})
    lat = torch.load(latents_path)["latents"]
    captions = list(cache.captions[: len(lat)])
    n_plain = len(lat)
    swaps_path = run / "swaps.pt"
    if swap_share > 0 and not swaps_path.exists():
        seeds = cache.start_seed + np.arange(min(n_swaps, len(cache)))
        images, regions, caps, kinds = object_swaps(seeds, np.random.default_rng(4000))
        lat_swaps = encode_dataset(vae, images, dev)
        _save(
            swaps_path,
            {
                "images": images,
                "regions": regions,
                "captions": caps,
                "kinds": kinds,
                "latents": lat_swaps,
            },
        )
    swaps = torch.load(swaps_path, weights_only=False) if swap_share > 0 else None
    if swaps is not None:
        lat = torch.cat([lat, swaps["latents"]])
        captions += swaps["captions"]
    mean, std = lat[:, :4].float().to(dev), lat[:, 4:].float().to(dev)
    ids = tok(
        captions + [""],
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(dev)
    ids, empty = ids[:-1], ids[-1]
    phrases = sorted({f"a {pair[0]}" for syns in NOUNS.values() for pair in syns})
    pad = dict(padding="max_length", max_length=ids.shape[1], truncation=True)
    phrase_ids = dict(zip(phrases, tok(phrases, return_tensors="pt", **pad).input_ids.to(dev)))
    ema = copy.deepcopy(unet).eval()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    ckpt, step = run / "inpaint.ckpt", 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=dev)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema_unet"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    for group in opt.param_groups:
        group.setdefault("base_lr", group["lr"])
    sched = Schedule.from_config(parts["scheduler_config"])
    ac = torch.tensor(sched.alphas_cumprod, dtype=torch.float32, device=dev)
    snr = ac / (1 - ac)
    weight = snr.clamp(max=min_snr_gamma) / snr
    gen = torch.Generator(dev).manual_seed(2000 + step)
    rng = np.random.default_rng(3000 + step)
    stop, log = StopFlag(), Logger(run, "inpaint", dev)
    deadline = time.time() + 60 * minutes if minutes else math.inf
    fit_from, fit_to = step + 10, step + 50  # steps timed to fit the cosine to ``minutes``

    def example_image(i: int) -> np.ndarray:
        return cache.images[i] if i < n_plain else swaps["images"][i - n_plain]

    def example_mask(i: int) -> tuple[np.ndarray, str | None]:
        """A mask for example ``i`` and the kind of the one object it masks, if it does."""
        if i >= n_plain:
            j = i - n_plain
            kinds = swaps.get("kinds")  # absent in swaps saved before object prompts
            return grown(swaps["regions"][j], rng), kinds[j] if kinds else None
        mask, label = random_mask_of(rng, np.asarray(cache.labels[i]))
        if label is None:
            return mask, None
        return mask, cache.label_names[i][label].rsplit("_", 1)[0]  # names are kind_index

    def state():
        return {
            "unet": unet.state_dict(),
            "ema_unet": ema.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "vae_scale": scale,
        }

    while step < steps and not stop.set and time.time() < deadline:
        if minutes and step == fit_from:
            t_fit = time.time()
        if minutes and step == fit_to:
            rate = (fit_to - fit_from) / (time.time() - t_fit)
            steps = min(steps, step + int(rate * (deadline - time.time())))
            log(step, 0, planned_steps=steps, steps_per_s=rate)
        idx = rng.integers(0, n_plain, batch)
        if swaps is not None:  # some rows become swaps, indexed after the plain scenes
            swap = rng.random(batch) < swap_share
            idx[swap] = n_plain + rng.integers(0, len(swaps["captions"]), int(swap.sum()))
        images = torch.from_numpy(np.stack([example_image(i) for i in idx])).to(dev)
        images = images.permute(0, 3, 1, 2).float() / 127.5 - 1
        masks, kinds = zip(*(example_mask(i) for i in idx))
        masks = np.stack(masks)
        extra = conditioning(vae, scale, images, torch.from_numpy(masks)[:, None].to(dev))
        ti = torch.from_numpy(idx).to(dev)
        kw = dict(generator=gen, device=dev)
        zt, t, noise, cap = noised_batch(mean, std, ids, ti, scale, ac, empty, dropout, kw)
        if object_prompts:
            cap = with_object_prompts(cap, kinds, object_prompts, phrase_ids, empty, rng)
        with torch.no_grad():
            emb = text(cap)[0]
        pred = unet(torch.cat([zt, extra], 1), t, encoder_hidden_states=emb).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (weight[t] * per_sample).mean()
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, steps, warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        step += 1
        _ema_update(ema, unet, min(ema_decay, (1 + step) / (10 + step)))
        if step % log_every == 0:
            log(step, batch * log_every, loss=loss.item(), mse=per_sample.mean().item())
        if step % ckpt_every == 0:
            _save(ckpt, state())
    _save(ckpt, state())
    return ckpt


def export_inpaint(run: Path, out: Path, base: Path = DEMO_MODEL_DIR) -> Path:
    """The EMA UNet (fp16 safetensors) beside ``base``'s VAE, text encoder, tokenizer and
    scheduler, as a diffusers folder; written to a temporary folder first. A MODEL_CARD.md
    already in ``out`` is kept (it is written by hand from the logs); else a short one that
    records the training seeds, which evaluations check their scenes against."""
    state = torch.load(run / "inpaint.ckpt", map_location="cpu")
    unet = inpaint_unet(load_diffusers_folder(base)["unet"])
    unet.load_state_dict(state["ema_unet"])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("unet", "classifier", "*.md"))
    unet.half().save_pretrained(tmp / "unet", safe_serialization=True)
    index = json.loads((tmp / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInpaintPipeline"  # what diffusers calls this kind
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    card = out / "MODEL_CARD.md"
    if card.exists():
        shutil.copy(card, tmp / "MODEL_CARD.md")
    else:
        (tmp / "MODEL_CARD.md").write_text(
            f"# The demo model fine-tuned to inpaint (step {state['step']})\n\n"
            "Made by `python -m engine.training.train_inpaint` from the demo model on its own "
            "training scenes.\n\nTraining scene seeds: 0–99,999\n",
            encoding="utf-8",
        )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"exported {run} step {state['step']} to {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.training.train_inpaint", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", type=Path, help="a world cache (python -m engine.training data)")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--n-images", type=int, default=None, help="train on the first N scenes")
    p.add_argument("--export", type=Path, default=None, help="write the run to this folder")
    p.add_argument("--init", type=Path, default=None, help="start from this inpainting folder")
    p.add_argument(
        "--swap-share",
        type=float,
        default=0.0,
        help="share of each batch drawn from object swaps (another kind in an object's place)",
    )
    p.add_argument("--n-swaps", type=int, default=4000, help="scenes to draw the swaps from")
    p.add_argument(
        "--object-prompts",
        type=float,
        default=0.0,
        help="share of rows masking one object captioned with that object alone",
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.export is not None:
        export_inpaint(a.run, a.export)
        return 0
    if a.data is None:
        p.error("--data is required for training")
    train_inpaint(
        a.data,
        a.run,
        a.steps,
        a.batch,
        a.lr,
        minutes=a.minutes,
        n_images=a.n_images,
        init=a.init,
        swap_share=a.swap_share,
        n_swaps=a.n_swaps,
        object_prompts=a.object_prompts,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
