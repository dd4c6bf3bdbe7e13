"""Latent consistency distillation (engine.training.distill) on builtin:tiny, and the export
of a distilled demo UNet as a model folder that loads as a few-step model."""

from __future__ import annotations

import numpy as np
import torch

from engine.algorithms.lcm import guidance_embedding
from engine.training.distill import (
    W_EMBED_DIM,
    build_student,
    consistency_out,
    lcm_distillation_loss,
)


def batch(tiny, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 4, 8, 8, generator=g)
    noise = torch.randn(n, 4, 8, 8, generator=g)
    emb = torch.randn(n, 77, 32, generator=g)
    uncond = torch.zeros(1, 77, 32)
    ac = torch.tensor(tiny.schedule.alphas_cumprod).float()
    return x0, noise, emb, uncond, ac


def test_student_starts_as_the_teacher_for_every_guidance(tiny):
    student = build_student(tiny.unet).eval()
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.no_grad():
        want = tiny.unet(x, 500, encoder_hidden_states=emb).sample
        for w in (0.0, 3.0, 9.0):
            cond = guidance_embedding([w, w], W_EMBED_DIM)
            got = student(x, 500, encoder_hidden_states=emb, timestep_cond=cond).sample
            assert torch.allclose(got, want, atol=1e-6)


def test_the_target_at_the_bottom_of_the_grid_is_the_teachers_ddim_solution(tiny):
    # n = 0: t = 19, s = 0, where c_skip = 1 and c_out = 0: the target is x̂_s itself, so the
    # loss pulls f(x_19) onto the teacher's guided DDIM step to t = 0
    student = build_student(tiny.unet)
    target = build_student(tiny.unet).eval()
    x0, noise, emb, uncond, ac = batch(tiny)
    t, s, w = torch.full((4,), 19), torch.zeros(4, dtype=torch.long), torch.full((4,), 3.0)
    parts = {}
    lcm_distillation_loss(student, target, tiny.unet, x0, noise, t, s, w, emb, uncond, ac, parts)
    assert torch.equal(parts["f_target"], parts["x_s"])
    # and the DDIM step is the guided one: (1 + ω) ε_c − ω ε_u
    with torch.no_grad():
        eps_c = tiny.unet(parts["x_t"], t, encoder_hidden_states=emb).sample
        eps_u = tiny.unet(parts["x_t"], t, encoder_hidden_states=uncond.expand(4, -1, -1)).sample
    eps = 4.0 * eps_c - 3.0 * eps_u
    a_t, a_s = ac[19], ac[0]
    x0_hat = (parts["x_t"] - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    assert torch.allclose(parts["x_s"], a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * eps, atol=1e-4)


def test_gradients_reach_the_student_only_and_steps_lower_the_loss(tiny):
    student = build_student(tiny.unet).train()
    target = build_student(tiny.unet).eval().requires_grad_(False)
    x0, noise, emb, uncond, ac = batch(tiny, seed=1)
    t = torch.tensor([999, 519, 259, 119])
    s, w = t - 20, torch.tensor([1.0, 3.0, 5.0, 9.0])
    opt = torch.optim.Adam(student.parameters(), lr=3e-5)
    losses = []
    for _ in range(8):
        loss = lcm_distillation_loss(
            student, target, tiny.unet, x0, noise, t, s, w, emb, uncond, ac
        )
        opt.zero_grad()
        loss.backward()
        assert student.time_embedding.cond_proj.weight.grad is not None
        assert all(p.grad is None for p in tiny.unet.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_consistency_output_is_the_identity_at_zero(tiny):
    student = build_student(tiny.unet).eval()
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    ac = torch.tensor(tiny.schedule.alphas_cumprod).float()
    w = guidance_embedding([2.0, 2.0], W_EMBED_DIM)
    with torch.no_grad():
        out = consistency_out(student, x, torch.zeros(2, dtype=torch.long), emb, w, ac)
    assert torch.equal(out, x)


def test_export_writes_a_folder_that_loads_as_an_lcm(tmp_path):
    from diffusers import UNet2DConditionModel

    from engine.few_step import sampling_defaults
    from engine.models import DEMO_MODEL_DIR, load_model
    from engine.training.distill import export

    teacher = UNet2DConditionModel.from_pretrained(DEMO_MODEL_DIR / "unet")
    student = build_student(teacher)
    torch.nn.init.normal_(student.time_embedding.cond_proj.weight, std=0.01)
    ckpt = tmp_path / "distill.ckpt"
    torch.save({"ema": student.state_dict(), "step": 7}, ckpt)
    out = export(ckpt, DEMO_MODEL_DIR, tmp_path / "demo-lcm")
    bundle = load_model(str(out), device="cpu", dtype="fp32")
    assert bundle.unet.config.time_cond_proj_dim == W_EMBED_DIM
    assert bundle.scheduler_config["_class_name"] == "LCMScheduler"
    few = sampling_defaults(bundle.scheduler_config, bundle.unet.config, bundle.name)
    assert few.kind == "lcm" and few.defaults["sampler"] == "lcm"
    # fp16 on disk: the projection survives to half precision
    w = bundle.unet.time_embedding.cond_proj.weight
    assert torch.allclose(w, student.time_embedding.cond_proj.weight.half().float())


class FakeProbe:
    """Attributes and features read straight off the 'images' (N x 14 float arrays)."""

    def predict(self, x):
        return np.asarray(x)[:, :13].round().astype(int)

    def features(self, x):
        return np.asarray(x, dtype=np.float64)


def test_comparison_against_the_teacher_reports_ratios_with_intervals():
    from engine.training.distill_eval import compare

    rng = np.random.default_rng(0)
    n = 120
    attrs = rng.integers(0, 3, (n, 13))
    real_a = np.hstack([attrs, rng.normal(size=(n, 1))]).astype(float)
    real_b = np.hstack([rng.integers(0, 3, (n, 13)), rng.normal(size=(n, 1))]).astype(float)
    teacher = real_a.copy()
    student = real_a.copy()
    wrong = rng.random((n, 13)) < 0.2  # the student misses a fifth of the attributes
    student[:, :13] = np.where(wrong, (attrs + 1) % 3, attrs)
    student[:, 13] += 1.0  # and its free feature is off by one standard deviation
    r = compare(FakeProbe(), teacher, student, real_a, attrs, real_b)
    assert r["accuracy_teacher"] == 1.0
    assert abs(r["accuracy_ratio"] - (1 - wrong.mean())) < 1e-9
    lo, hi = r["accuracy_ratio_ci95"]
    assert lo < r["accuracy_ratio"] < hi and hi - lo < 0.1
    # the teacher's images are the real scenes A: its Fréchet ratio is exactly 1
    assert abs(r["frechet_ratio_teacher"] - 1.0) < 1e-9
    assert r["frechet_ratio"] > 1.0
