"""Latent consistency distillation of the demo model (Luo et al. 2023, Algorithm 1).

    python -m engine.training.distill --data runs/lcm-world --run runs/lcm --minutes 60
    python -m engine.training.distill --run runs/lcm --export assets/models/demo-lcm

The teacher is the shipped demo UNet with classifier-free guidance; the student is a copy of
it that also takes the guidance scale ω as input (``time_cond_proj_dim``; the new
projection starts at zero, so the student starts as the teacher). One step:

1. x_0 from the data (VAE latents of demo-world scenes), n uniform over the DDIM skipping
   grid (k = 20, 50 points), ω ~ U[ω_min, ω_max]; x_{t_{n+k}} ~ q(x | x_0) (eq. 1).
2. The teacher's guided DDIM step ("augmented PF-ODE solver", eq. 8 with Ψ = DDIM):
   x̂_{t_n} = √ᾱ_{t_n} x̂₀^ω + √(1−ᾱ_{t_n}) ε̂^ω, with x̂₀^ω = (1+ω)x̂₀(c) − ω x̂₀(∅) and
   likewise ε̂^ω.
3. Loss d(f_θ(x_{t_{n+k}}, ω, c, t_{n+k}), f_θ⁻(x̂_{t_n}, ω, c, t_n)) (eq. 10), d the pseudo-
   Huber distance (Song & Dhariwal 2023), θ⁻ the EMA of θ (μ = 0.95, the paper's "target").

The exported weights are a slower EMA of θ (``export_decay``) or the target, whichever the
evaluation picks (``distill_eval``). Resumable: ``<run>/distill.ckpt``; one JSON line per
log step in ``<run>/log.jsonl``; stops cleanly at ``--minutes`` or on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import copy
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..algorithms.lcm import ORIGIN_STEPS, boundary_scalings, guidance_embedding
from .dataset import WorldCache
from .train import Logger, StopFlag, _ema_update, _save, encode_dataset

W_EMBED_DIM = 256  # as LCM's SD checkpoints
HUBER_C = 0.001


def build_student(teacher, dim: int = W_EMBED_DIM):
    """The teacher's UNet with an ω input; the projection of ω starts at zero."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
    student = UNet2DConditionModel(**{**config, "time_cond_proj_dim": dim})
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def consistency_out(unet, x, t, emb, w_emb, ac) -> torch.Tensor:
    """f(x_t, ω, c, t) = c_skip(t) x + c_out(t) x̂₀ (eq. 9) for per-sample timesteps t."""
    eps = unet(x, t, encoder_hidden_states=emb, timestep_cond=w_emb).sample
    a = ac[t].view(-1, 1, 1, 1)
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    c_skip, c_out = boundary_scalings(t.float().view(-1, 1, 1, 1))
    return c_skip * x + c_out * x0


def lcm_distillation_loss(
    student, target, teacher, x0, noise, t, s, w, emb, uncond, ac, parts: dict | None = None
) -> torch.Tensor:
    """One batch of Algorithm 1's loss: x_{t} ~ q(x | x_0); the teacher's guided DDIM step
    to s (eq. 8 with Ψ = DDIM, CFG 1 + ω on both x̂₀ and ε̂); the pseudo-Huber distance
    between the student's f at (x_t, t) and the target's at (x̂_s, s) (eq. 10). Gradients
    reach the student only. ``parts``, if given, receives x_t, x̂_s and the target's f."""
    batch = x0.shape[0]
    a_t, a_s = ac[t].view(-1, 1, 1, 1), ac[s].view(-1, 1, 1, 1)
    x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
    w_emb, wv = guidance_embedding(w, W_EMBED_DIM), w.view(-1, 1, 1, 1)
    with torch.no_grad():
        # the teacher's guided DDIM step from t_{n+k} to t_n
        eps_u, eps_c = teacher(
            torch.cat([x_t, x_t]),
            torch.cat([t, t]),
            encoder_hidden_states=torch.cat([uncond.expand(batch, -1, -1), emb]),
        ).sample.chunk(2)
        eps_g = eps_c + wv * (eps_c - eps_u)
        x0_g = (x_t - (1 - a_t).sqrt() * eps_g) / a_t.sqrt()
        x_s = a_s.sqrt() * x0_g + (1 - a_s).sqrt() * eps_g
        # the target network's consistency output at t_n
        f_target = consistency_out(target, x_s, s, emb, w_emb, ac)
    f_online = consistency_out(student, x_t, t, emb, w_emb, ac)
    if parts is not None:
        parts.update(x_t=x_t, x_s=x_s, f_target=f_target, f_online=f_online.detach())
    return (((f_online - f_target) ** 2 + HUBER_C**2).sqrt() - HUBER_C).mean()


def distill(
    data: Path | None,
    run: Path,
    teacher_dir: Path,
    steps: int = 100_000,
    batch: int = 32,
    lr: float = 2e-4,
    w_min: float = 1.0,
    w_max: float = 9.0,
    target_decay: float = 0.95,
    export_decay: float = 0.995,
    warmup: int = 50,
    minutes: float | None = None,
    log_every: int = 10,
    ckpt_every: int = 50,
    n_images: int | None = None,
    seed: int = 0,
) -> Path:
    """Algorithm 1 of Luo et al. 2023 on the CPU (fp32). ω range [w_min, w_max] is the excess
    over the conditional prediction, i.e. classifier-free guidance 1 + ω (2-10 here, around
    the demo model's default 7.5)."""
    from ..models import load_model

    run.mkdir(parents=True, exist_ok=True)
    teacher = load_model(str(teacher_dir), device="cpu", dtype="fp32")
    scale, ac = teacher.vae_scale, torch.tensor(teacher.schedule.alphas_cumprod).float()
    latents_path = run / "latents.pt"
    if not latents_path.exists():
        cache = WorldCache.open(data)
        n = min(n_images or len(cache), len(cache))
        lat = encode_dataset(teacher.vae, cache.images[:n], torch.device("cpu"))
        _save(latents_path, {"latents": lat, "captions": cache.captions[:n]})
    stored = torch.load(latents_path)
    mean, std = stored["latents"][:, :4].float(), stored["latents"][:, 4:].float()
    ids = teacher.tokenizer(
        list(stored["captions"]) + [""],
        padding="max_length",
        max_length=teacher.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    ids, empty = ids[:-1], ids[-1:]
    text, teacher_unet = teacher.text_encoder, teacher.unet
    student = build_student(teacher_unet).train()
    target, ema = copy.deepcopy(student).eval(), copy.deepcopy(student).eval()
    for m in (target, ema):
        m.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    ckpt, step = run / "distill.ckpt", 0
    if ckpt.exists():
        state = torch.load(ckpt)
        for key, m in (("student", student), ("target", target), ("ema", ema)):
            m.load_state_dict(state[key])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    with torch.no_grad():
        uncond = text(empty)[0]
    k = len(ac) // ORIGIN_STEPS  # the skipping interval
    g = torch.Generator().manual_seed(seed + step)
    stop, log = StopFlag(), Logger(run, "distill", torch.device("cpu"))
    deadline = time.time() + 60 * minutes if minutes else math.inf

    def state():
        return {
            "student": student.state_dict(),
            "target": target.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "config": {"w_min": w_min, "w_max": w_max, "batch": batch, "lr": lr, "k": k},
        }

    while step < steps and not stop.set and time.time() < deadline:
        idx = torch.randint(0, len(mean), (batch,), generator=g)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        # 1. t_{n+k} on the skipping grid, t_n = t_{n+k} − k (0 at the bottom: f is x there)
        n = torch.randint(0, ORIGIN_STEPS, (batch,), generator=g)
        t = (n + 1) * k - 1
        s = (t - k).clamp(min=0)
        noise = torch.randn(x0.shape, generator=g)
        w = w_min + (w_max - w_min) * torch.rand(batch, generator=g)
        with torch.no_grad():
            emb = text(ids[idx])[0]
        loss = lcm_distillation_loss(
            student, target, teacher_unet, x0, noise, t, s, w, emb, uncond, ac
        )
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        step += 1
        _ema_update(target, student, target_decay)  # θ⁻ ← μθ⁻ + (1−μ)θ (Alg. 1)
        _ema_update(ema, student, min(export_decay, (1 + step) / (10 + step)))
        if step % log_every == 0:
            log(step, batch * log_every, loss=loss.item())
        if step % ckpt_every == 0:
            _save(ckpt, state())
            _save(run / f"distill-{step:05d}.ckpt", {"ema": ema.state_dict(), "step": step})
    _save(ckpt, state())
    return ckpt


def lcm_scheduler_config(teacher_config: dict) -> dict:
    """The teacher's noise schedule as a diffusers ``LCMScheduler`` config (which is how
    LCM checkpoints announce themselves), with LCM's 50-step origin grid."""
    keep = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type")
    return {
        "_class_name": "LCMScheduler",
        **{k: teacher_config[k] for k in keep if k in teacher_config},
        "original_inference_steps": ORIGIN_STEPS,
        "set_alpha_to_one": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "timestep_scaling": 10.0,
        "clip_sample": False,
    }


def export(checkpoint: Path, teacher_dir: Path, out: Path, weights: str = "ema") -> Path:
    """The teacher's folder with the distilled UNet (fp16) and an LCMScheduler config."""
    import json

    from diffusers import LCMScheduler, UNet2DConditionModel

    state = torch.load(checkpoint)
    teacher_unet = UNet2DConditionModel.from_pretrained(teacher_dir / "unet")
    student = build_student(teacher_unet)
    student.load_state_dict(state[weights])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(teacher_dir, tmp, ignore=shutil.ignore_patterns("classifier", "*.md"))
    shutil.rmtree(tmp / "unet")
    student.half().save_pretrained(tmp / "unet", safe_serialization=True)
    teacher_sched = json.loads((teacher_dir / "scheduler" / "scheduler_config.json").read_text())
    shutil.rmtree(tmp / "scheduler")
    LCMScheduler.from_config(lcm_scheduler_config(teacher_sched)).save_pretrained(tmp / "scheduler")
    index = json.loads((tmp / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "LCMScheduler"]
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    for name in ("MODEL_CARD.md", "figures"):  # written by hand from the logs
        src = out / name
        if src.is_file():
            shutil.copy(src, tmp / name)
        elif src.is_dir():
            shutil.copytree(src, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"exported {checkpoint} ({weights}, step {state['step']}) to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    from ..models import DEMO_MODEL_DIR

    p = argparse.ArgumentParser(prog="python -m engine.training.distill", description=__doc__)
    p.add_argument("--data", type=Path, default=None, help="a world cache (first run)")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--teacher", type=Path, default=DEMO_MODEL_DIR)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--w-min", type=float, default=1.0)
    p.add_argument("--w-max", type=float, default=9.0)
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--n-images", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--export", type=Path, default=None, help="write this checkpoint's model")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: <run>/distill.ckpt")
    p.add_argument("--weights", choices=("ema", "target", "student"), default="ema")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    np.random.seed(0)
    if a.export:
        export(a.checkpoint or a.run / "distill.ckpt", a.teacher, a.export, a.weights)
        return 0
    distill(
        a.data,
        a.run,
        a.teacher,
        steps=a.steps,
        batch=a.batch,
        lr=a.lr,
        w_min=a.w_min,
        w_max=a.w_max,
        minutes=a.minutes,
        n_images=a.n_images,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
