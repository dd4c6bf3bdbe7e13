"""Training the demo model: a VAE stage, then text encoder + UNet jointly.

Both stages are resumable (a checkpoint in the run folder holds models, optimiser, EMA and
step), stop cleanly on SIGINT/SIGTERM or at ``--minutes``, and append one JSON line per log
step to ``<run>/log.jsonl`` (stage, step, loss, images/s, elapsed seconds, hardware).
"""

from __future__ import annotations

import copy
import json
import math
import platform
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import pick_device
from ..schedule import Schedule
from ..world.raster import FIRST_OBJECT_LABEL
from . import architecture as arch
from .dataset import WorldCache


class StopFlag:
    """Set by SIGINT/SIGTERM so a stage saves its checkpoint before exiting."""

    def __init__(self):
        self.set = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, *_):
        self.set = True


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


class Logger:
    def __init__(self, run: Path, stage: str, device: torch.device):
        self.path, self.stage, self.hw = run / "log.jsonl", stage, hardware(device)
        self.t0, self.seen = time.time(), 0

    def __call__(self, step: int, images: int, **values):
        self.seen += images
        dt = time.time() - self.t0
        rec = {
            "stage": self.stage,
            "step": step,
            "elapsed_s": round(dt, 1),
            "images_per_s": round(self.seen / max(dt, 1e-9), 2),
            "hardware": self.hw,
            **{k: round(float(v), 5) for k, v in values.items()},
        }
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)


def _batch_images(cache: WorldCache, idx: np.ndarray, crop: int, rng, objects: bool = False):
    """Images N x 3 x crop x crop in [-1, 1] (one random crop position per batch); with
    ``objects``, also a float N x 1 x crop x crop map of the object pixels."""
    imgs = np.stack([cache.images[i] for i in idx])
    labels = np.stack([cache.labels[i] for i in idx]) if objects else None
    if crop < cache.size:
        y, x = rng.integers(0, cache.size - crop + 1, 2)
        imgs = imgs[:, y : y + crop, x : x + crop]
        labels = labels[:, y : y + crop, x : x + crop] if objects else None
    t = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    if not objects:
        return t
    return t, torch.from_numpy(labels >= FIRST_OBJECT_LABEL)[:, None].float()


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash never leaves half a checkpoint


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)


def lr_factor(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from 1 down to ``floor`` at
    ``total``; a function of the step alone, so a resumed run continues the same curve."""
    if step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))


# ---- stage 1: VAE ------------------------------------------------------------------------


def train_vae(
    data: Path,
    run: Path,
    steps: int,
    batch: int = 16,
    crop: int = 64,
    lr: float = 4e-4,
    kl_weight: float = 1e-6,
    object_weight: float = 4.0,
    warmup: int = 100,
    device: str = "auto",
    minutes: float | None = None,
    log_every: int = 20,
    ckpt_every: int = 200,
) -> Path:
    """Reconstruction (L1 + MSE) plus a small KL term, as SD's KL-f8 autoencoder minus the
    perceptual and adversarial losses. Trains on random crops: the VAE is convolutional.

    Object pixels (trees, houses, rocks, boats; known from the world's label maps) weigh
    1 + ``object_weight`` in the reconstruction loss: they cover a few percent of an image,
    so a plain per-pixel loss spends the small latent on sky and ground and blurs away the
    very things the editing algorithms are about. The learning rate follows ``lr_factor``."""
    dev, _ = pick_device(device, "fp32")
    run.mkdir(parents=True, exist_ok=True)
    cache = WorldCache.open(data)
    vae = arch.build_vae().to(dev).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    ckpt, step = run / "vae.ckpt", 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=dev)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    rng = np.random.default_rng(step)
    stop, log = StopFlag(), Logger(run, "vae", dev)
    deadline = time.time() + 60 * minutes if minutes else math.inf
    for group in opt.param_groups:
        group.setdefault("base_lr", group["lr"])
    while step < steps and not stop.set and time.time() < deadline:
        x, obj = _batch_images(cache, rng.integers(0, len(cache), batch), crop, rng, True)
        x, w = x.to(dev), (1 + object_weight * obj).to(dev)
        post = vae.encode(x).latent_dist
        y = vae.decode(post.sample()).sample
        err = y - x
        rec = (w * (err.abs() + err.square())).mean() / w.mean()
        loss = rec + kl_weight * post.kl().mean()
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, steps, warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % log_every == 0:
            mse = F.mse_loss(y.clamp(-1, 1), x).item()
            log(step, batch * log_every, loss=loss.item(), psnr=10 * math.log10(4 / mse))
        if step % ckpt_every == 0:
            _save(ckpt, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step})
    _save(ckpt, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step})
    return ckpt


def load_vae(run: Path, device="cpu"):
    vae = arch.build_vae()
    vae.load_state_dict(torch.load(run / "vae.ckpt", map_location="cpu")["model"])
    return vae.to(device).eval().requires_grad_(False)


# ---- stage 2: text encoder + UNet ------------------------------------------------------


@torch.no_grad()
def encode_dataset(vae, images: np.ndarray, dev, batch: int = 64, log=None) -> torch.Tensor:
    """Posterior mean and std of uint8 N x H x W x 3 images (a cache's memmap or an array),
    N x 8 x h x w, fp16 (sampled later)."""
    out = []
    for lo in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[lo : lo + batch])).permute(0, 3, 1, 2)
        d = vae.encode(x.float().to(dev) / 127.5 - 1.0).latent_dist
        out.append(torch.cat([d.mean, d.std], 1).half().cpu())
        if lo // batch % 20 == 0:
            msg = f"encoded {lo + len(x)}/{len(images)}"
            if log is None:
                print(msg, flush=True)  # training logs are read while they run
            else:
                log(msg)
    return torch.cat(out)


def noised_batch(mean, std, ids, idx, scale, ac, empty, dropout, kw):
    """A training batch for scenes ``idx``: latents drawn from their cached VAE posteriors
    (``mean``, ``std``), noised to random timesteps by q(x_t | x_0) (Ho et al. 2020, eq. 4),
    and their captions, each replaced by the ``empty`` one with probability ``dropout`` (so
    the model learns the unconditional branch of classifier-free guidance). ``kw``: the
    generator and device. Returns (x_t, t, the noise, the captions)."""
    z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, **kw)) * scale
    t = torch.randint(0, len(ac), (len(idx),), **kw)
    noise = torch.randn(z0.shape, **kw)
    a = ac[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    cap = ids[idx].clone()
    cap[torch.rand(len(idx), **kw) < dropout] = empty
    return zt, t, noise, cap


def train_unet(
    data: Path,
    run: Path,
    steps: int,
    batch: int = 32,
    lr: float = 3e-4,
    text_lr: float | None = None,
    dropout: float = 0.1,
    ema_decay: float = 0.999,
    min_snr_gamma: float | None = 5.0,
    warmup: int = 200,
    device: str = "auto",
    minutes: float | None = None,
    log_every: int = 20,
    ckpt_every: int = 200,
    n_images: int | None = None,
    init: Path | None = None,
) -> Path:
    """ε-prediction on VAE latents with SD 1.5's noise schedule (Rombach et al. 2022, eq. 2);
    ``dropout`` of captions are emptied so the model also learns the unconditional branch
    that classifier-free guidance needs (Ho & Salimans 2022, Alg. 1).

    The per-sample loss is weighted by min(SNR_t, γ)/SNR_t (Min-SNR-γ, Hang et al. 2023,
    eq. 9 for ε-prediction, γ = 5): low-noise steps, whose targets are nearly free, stop
    dominating the gradient, which the paper measures as ~3× faster convergence; this is
    what makes a CPU-only budget enough. The learning rate warms up linearly for ``warmup``
    steps and then decays along a cosine to 10% at ``steps``; the text encoder, trained from
    scratch like the UNet, uses the UNet's rate unless ``text_lr`` says otherwise.

    ``init`` names an exported model folder to continue from when the run has no checkpoint
    yet (model and EMA start from its weights, the latent scale is its VAE's). With
    ``minutes``, the cosine is fitted to the time: after a short measured stretch the total
    becomes what that rate reaches by the deadline (logged as ``planned_steps``). On CUDA the
    forward and backward passes run under bf16 autocast; weights and optimiser stay fp32."""
    dev, _ = pick_device(device, "fp32")
    cache = WorldCache.open(data)
    tok_dir = run / "tokenizer"
    if not (tok_dir / "vocab.json").exists():
        from .tokenizer import build_world_tokenizer

        build_world_tokenizer(tok_dir)
    latents_path = run / "latents.pt"
    if not latents_path.exists():
        n = min(n_images or len(cache), len(cache))
        vae, batch_enc = load_vae(run, dev), 512 if dev.type == "cuda" else 64
        _save(latents_path, {"latents": encode_dataset(vae, cache.images[:n], dev, batch_enc)})
    lat = torch.load(latents_path)["latents"]
    captions = cache.captions[: len(lat)]
    # the whole set lives on the training device: per-step host-to-device copies and CPU
    # random numbers would otherwise bound a GPU's step rate
    mean, std = lat[:, :4].float().to(dev), lat[:, 4:].float().to(dev)
    g = torch.Generator().manual_seed(0)
    sample = mean[:2000].cpu() + std[:2000].cpu() * torch.randn(mean[:2000].shape, generator=g)
    scale = float(1.0 / sample.std())  # as SD's 0.18215: unit-variance latents
    tokenizer, text, unet = arch.build_text_and_unet(tok_dir)
    if init is not None and not (run / "unet.ckpt").exists():
        text, unet, scale = _load_exported(init, text, unet)
    # the captions and, last, the empty prompt that caption dropout swaps in
    ids = tokenizer(
        captions + [""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    ids, empty = ids[:-1].to(dev), ids[-1].to(dev)
    text, unet = text.to(dev).train(), unet.to(dev).train()
    ema_text, ema_unet = copy.deepcopy(text).eval(), copy.deepcopy(unet).eval()
    opt = torch.optim.AdamW(
        [
            {"params": unet.parameters(), "lr": lr},
            {"params": text.parameters(), "lr": lr if text_lr is None else text_lr},
        ],
        weight_decay=1e-2,
    )
    ckpt, step = run / "unet.ckpt", 0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=dev)
        for key, m in (
            ("unet", unet),
            ("text", text),
            ("ema_unet", ema_unet),
            ("ema_text", ema_text),
        ):
            m.load_state_dict(state[key])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        scale = state.get("vae_scale", scale)  # what the weights were trained at
    for group in opt.param_groups:
        group.setdefault("base_lr", group["lr"])  # resumed runs keep theirs
    sched = Schedule.from_config(arch.scheduler_config())
    ac = torch.tensor(sched.alphas_cumprod, dtype=torch.float32, device=dev)
    snr = ac / (1 - ac)
    weight = (snr.clamp(max=min_snr_gamma) / snr) if min_snr_gamma else torch.ones_like(snr)
    rng = torch.Generator(dev).manual_seed(1000 + step)
    stop, log = StopFlag(), Logger(run, "unet", dev)
    deadline = time.time() + 60 * minutes if minutes else math.inf
    fit_from, fit_to = step + 20, step + 120  # steps timed to fit the cosine to ``minutes``
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def state():
        return {
            "unet": unet.state_dict(),
            "text": text.state_dict(),
            "opt": opt.state_dict(),
            "ema_unet": ema_unet.state_dict(),
            "ema_text": ema_text.state_dict(),
            "step": step,
            "vae_scale": scale,
        }

    while step < steps and not stop.set and time.time() < deadline:
        if minutes and step in (fit_from, fit_to) and dev.type == "cuda":
            torch.cuda.synchronize()  # kernels run ahead of the host; time what has run
        if minutes and step == fit_from:
            t_fit = time.time()
        if minutes and step == fit_to:
            rate = (fit_to - fit_from) / (time.time() - t_fit)
            steps = min(steps, step + int(rate * (deadline - time.time())))
            log(step, 0, planned_steps=steps, steps_per_s=rate)
        kw = dict(generator=rng, device=dev)
        idx = torch.randint(0, len(mean), (batch,), **kw)
        zt, t, noise, cap = noised_batch(mean, std, ids, idx, scale, ac, empty, dropout, kw)
        with autocast:
            emb = text(cap)[0]
            pred = unet(zt, t, encoder_hidden_states=emb).sample
        per_sample = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (weight[t] * per_sample).mean()
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, steps, warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text.parameters()), 1.0)
        opt.step()
        step += 1
        decay = min(ema_decay, (1 + step) / (10 + step))  # warm-up so early EMA isn't stale
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text, decay)
        if step % log_every == 0:
            log(step, batch * log_every, loss=loss.item(), mse=per_sample.mean().item())
        if step % ckpt_every == 0:
            _save(ckpt, state())
    _save(ckpt, state())
    return ckpt


def _load_exported(folder: Path, text, unet):
    """Text encoder and UNet weights (as fp32) and the latent scale of an exported model."""
    from safetensors.torch import load_file

    for sub, model in (("text_encoder", text), ("unet", unet)):
        files = sorted((folder / sub).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no weights in {folder / sub}")
        model.load_state_dict({k: v.float() for k, v in load_file(files[0]).items()})
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    return text, unet, float(vae_config["scaling_factor"])
