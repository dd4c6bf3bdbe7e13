"""``python -m engine bench``: our SDEdit loop against diffusers' img2img pipeline.

Both run on the same loaded components, image, prompt, steps, strength, guidance and seed,
in alternating order so drift in machine load hits both alike. An SDXL model (``random:sdxl``,
``random:sdxl-refiner``, ``builtin:tiny-xl`` or a checkpoint) is timed against
``StableDiffusionXLImg2ImgPipeline``, with its empty negative prompt zeroed on both sides.
We report the median wall-time ratio (ours / pipeline), the per-step preview cost as a
fraction of the step and, on CUDA, each side's peak GPU memory.
Our runs include everything a user waits for: text encoding (cache cleared), VAE encode,
the loop with an x̂₀ preview after every step, decode.

``--fast`` (``engine.bench_fast``) compares four contenders on the same components instead:
ours with the fast path (``engine.fast``: compiled UNet and VAE decoder), ours eager, the plain
pipeline, and the pipeline with ``torch.compile`` on copies of its UNet and ``vae.decode``
(the strongest baseline a user could script: the same compile settings as ours); then the
UNet alone, the time to the first preview, the first job after a load (eager; the compile
waits for an idle engine), and the scaling with working size and with steps.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from . import sdxl
from .methods import COMMON

# what every benchmark edits: one prompt, and the colour edit of it re-edits ask for
PROMPT = "a red house beside two pine trees under a sunset sky"
EDIT = "a blue house beside two pine trees under a sunset sky"


def bench_image(size: int, seed: int) -> np.ndarray:
    """A smooth random picture (4×4 colours upsampled): real-photo-like low frequencies."""
    from PIL import Image

    coarse = np.random.default_rng(seed).integers(0, 255, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time our SDEdit loop vs diffusers' img2img pipeline")
    p.add_argument(
        "--model",
        default=None,
        help="default: builtin:demo, else builtin:tiny; random:sd15, random:sd2, random:sd2-v, "
        "random:sdxl or random:sdxl-refiner time a full-size architecture with random "
        "weights (no checkpoint needed)",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    for name in ("steps", "strength", "guidance"):
        p.add_argument(f"--{name}", type=COMMON[name].kind, default=COMMON[name].default)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch's CPU threads for every contender, ours included (default: torch's "
        "choice for the pipelines, engine.fast.cpu_threads for ours)",
    )
    p.add_argument("--seed", type=int, default=COMMON["seed"].default)
    p.add_argument(
        "--p2p",
        action="store_true",
        help="instead: a Prompt-to-Prompt re-edit vs a plain one (time ratio, peak memory)",
    )
    p.add_argument("--size", type=int, default=None, help="--p2p: image side (default native)")
    p.add_argument(
        "--inversion",
        default="ddim",
        help="--p2p: the inversion both re-edits start from (ddim, null_text, direct, ...)",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="instead: one live-mode update (4 LCM steps; the ordinary live setting) against "
        "the same SDEdit at 25 steps, p50 / p95 (engine.bench_live)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="instead: ours with the fast path (compiled) vs ours eager vs the pipeline vs "
        "the pipeline with torch.compile; the UNet alone; time to first preview; scaling "
        "with size and steps",
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=None,
        help="--fast: working sizes for the scaling rows (default: native x1, x2, x4 on a "
        "CPU, x1, x1.5, x2 on a GPU; the flag alone, with no sizes: skip)",
    )
    p.add_argument(
        "--steps-list",
        type=int,
        nargs="*",
        default=None,
        help="--fast: step counts for the scaling rows (default: 10 25 50; the flag alone: skip)",
    )
    p.add_argument(
        "--scale-repeats", type=int, default=3, help="--fast: repeats of each scaling row"
    )
    p.add_argument(
        "--memory",
        action="store_true",
        help="instead: peak memory of each method at the native size, the heaviest first "
        "(generate, null-text inversion); CUDA: the allocator's peak per job",
    )


def _pick_model(spec):
    from .models import demo_model_available

    if spec:
        return spec
    return "builtin:demo" if demo_model_available() else "builtin:tiny"


def random_model(family: str, device, dtype):
    """A full-size SD architecture (``engine/configs/<family>``) with random weights and CLIP's
    tokenizer: what a real checkpoint of that family costs per step, without the checkpoint.
    The weights are initialised on the target device (SDXL's 2.6 B on a CPU take minutes)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .errors import ModelLoadError
    from .loaders import CONFIGS_DIR, FAMILIES, _read_configs
    from .models import CLIP_TOKENIZER_DIR, _finish

    if family not in FAMILIES:
        raise ModelLoadError(f"Unknown architecture {family!r}; choose one of {sorted(FAMILIES)}.")
    if family in sdxl.FAMILIES:
        return _random_sdxl(family, device, dtype)
    cfg = _read_configs(CONFIGS_DIR / family)
    torch.manual_seed(0)
    parts = {
        "unet": UNet2DConditionModel.from_config(cfg["unet"]),
        "vae": AutoencoderKL.from_config(cfg["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(cfg["text_encoder"])),
        "tokenizer": CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR)),
        "scheduler_config": cfg["scheduler"],
        "vae_scale": float(cfg["vae"].get("scaling_factor", 0.18215)),
    }
    return _finish(f"random:{family}", parts, device, dtype)


def _random_sdxl(family: str, device, dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .loaders import CONFIGS_DIR, _load_tokenizer, _read_json
    from .models import _finish, pick_device

    folder = CONFIGS_DIR / family
    dev, _ = pick_device(device, dtype)
    torch.manual_seed(0)
    with torch.device(dev):  # random init where the model will run
        unet = UNet2DConditionModel.from_config(_read_json(folder / "unet" / "config.json"))
        vae = AutoencoderKL.from_config(_read_json(folder / "vae" / "config.json"))
        big = CLIPTextConfig.from_dict(_read_json(folder / "text_encoder_2" / "config.json"))
        parts = {"unet": unet, "vae": vae, "text_encoder_2": CLIPTextModelWithProjection(big)}
        if family == sdxl.BASE:
            clip = CLIPTextConfig.from_dict(_read_json(folder / "text_encoder" / "config.json"))
            parts["text_encoder"] = CLIPTextModel(clip)
    tokenizer_2 = _load_tokenizer(folder / "tokenizer_2", require_files=False)
    parts.update(
        text_encoder=parts.get("text_encoder"),
        tokenizer=_load_tokenizer(folder / "tokenizer", False) if family == sdxl.BASE else None,
        tokenizer_2=tokenizer_2,
        scheduler_config=_read_json(folder / "scheduler" / "scheduler_config.json"),
        vae_scale=float(vae.config.scaling_factor),
        family=family,
        zero_empty_negative=family == sdxl.BASE,
    )
    parts["tokenizer"] = parts["tokenizer"] or tokenizer_2
    return _finish(f"random:{family}", parts, device, dtype)


def make_pipeline(bundle, pipeline_class=None):
    """diffusers' img2img pipeline on the bundle's own modules with a DDIM scheduler; an SD
    1.x/2.x ``pipeline_class`` that takes the same parts (the inpainting one) instead."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    if bundle.family in sdxl.FAMILIES and pipeline_class is None:
        return _sdxl_pipeline(bundle)
    pipe = (pipeline_class or StableDiffusionImg2ImgPipeline)(
        vae=bundle.vae,
        text_encoder=bundle.text_encoder,
        tokenizer=bundle.tokenizer,
        unet=bundle.unet,
        scheduler=DDIMScheduler.from_config(bundle.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sdxl_pipeline(bundle):
    from diffusers import DDIMScheduler, StableDiffusionXLImg2ImgPipeline

    refiner = bundle.family == sdxl.REFINER
    sdxl.keep_text_encoders_on_device(bundle)  # the pipeline runs them where they are
    pipe = StableDiffusionXLImg2ImgPipeline(
        # its own VAE: under fp16 the pipeline casts its VAE to fp32 and back on every call,
        # which would leave ours (kept in fp32, engine.vae) in fp16 for our next run
        vae=copy.deepcopy(bundle.vae),
        text_encoder=bundle.text_encoder,
        text_encoder_2=bundle.text_encoder_2,
        tokenizer=None if refiner else bundle.tokenizer,
        tokenizer_2=bundle.tokenizer_2,
        unet=bundle.unet,
        scheduler=DDIMScheduler.from_config(bundle.scheduler_config),
        requires_aesthetics_score=refiner,
        force_zeros_for_empty_prompt=bundle.zero_empty_negative,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(a: argparse.Namespace) -> int:
    from PIL import Image

    if a.threads:
        import os

        from .fast import ENV_THREADS

        torch.set_num_threads(a.threads)
        os.environ[ENV_THREADS] = str(a.threads)  # the fast path's threads too: all equal
    if a.p2p:
        from .bench_attention import run as run_attention

        return run_attention(a)
    if a.memory:
        return run_memory(a)
    if a.live:
        from .bench_live import run_live

        return run_live(a)
    if a.fast:
        from .bench_fast import run_fast

        return run_fast(a)

    from .algorithms.common import drive
    from .denoiser import Denoiser
    from .jobs import JOB_RUNNERS, JobContext
    from .preview import Previewer
    from .types import EditRequest

    spec = _pick_model(a.model)
    bundle = _load(spec, a.device, a.dtype)
    size = bundle.native_size  # ours would resize any other size to this; keep it equal
    image = bench_image(size, a.seed)
    req = EditRequest(
        "sdedit",
        prompt=PROMPT,
        image=image,
        steps=a.steps,
        strength=a.strength,
        guidance=a.guidance,
        seed=a.seed,
    )
    pipe = make_pipeline(bundle)
    previewer = Previewer(bundle)
    preview_times: list[float] = []

    cuda = bundle.device.type == "cuda"
    peaks: dict[str, float] = {}  # GiB, the largest of each side's runs (CUDA only)

    def measured(name: str, fn):
        def timed() -> float:
            if cuda:
                torch.cuda.reset_peak_memory_stats(bundle.device)
            seconds = fn()
            if cuda:
                peak = torch.cuda.max_memory_allocated(bundle.device) / 2**30
                peaks[name] = max(peaks.get(name, 0.0), peak)
            return seconds

        return timed

    def ours() -> float:
        denoiser = Denoiser(bundle)  # fresh: no cached prompt embeddings
        ctx = JobContext(bundle, denoiser)
        cuda_sync(bundle)
        t0 = time.perf_counter()

        def preview(p) -> None:
            tp = time.perf_counter()
            previewer(p.x0)
            cuda_sync(bundle)
            preview_times.append(time.perf_counter() - tp)

        with torch.no_grad():
            drive(JOB_RUNNERS["sdedit"](ctx, req), preview)
        cuda_sync(bundle)
        return time.perf_counter() - t0

    def theirs() -> float:
        g = torch.Generator("cpu").manual_seed(a.seed)
        cuda_sync(bundle)
        t0 = time.perf_counter()
        pipe(
            prompt=PROMPT,
            image=Image.fromarray(image),
            strength=a.strength,
            num_inference_steps=a.steps,
            guidance_scale=a.guidance,
            generator=g,
            output_type="np",
        )
        cuda_sync(bundle)
        return time.perf_counter() - t0

    ours, theirs = measured("ours", ours), measured("pipeline", theirs)
    ours(), theirs()  # warm-up: kernels, allocator, preview map
    preview_times.clear()
    t_ours, t_pipe = [], []
    for i in range(a.repeats):
        for fn, out in (
            ((ours, t_ours), (theirs, t_pipe)) if i % 2 == 0 else ((theirs, t_pipe), (ours, t_ours))
        ):
            out.append(fn())
    steps_run = bundle.schedule.steps_for_strength(a.steps, a.strength)
    step_time = statistics.median(t_ours) / max(steps_run, 1)
    preview = statistics.median(preview_times)
    ratio = statistics.median(t_ours) / statistics.median(t_pipe)
    print(
        f"model {spec} on {bundle.device} ({bundle.dtype}), {size}x{size}, {a.steps} steps, "
        f"strength {a.strength}, guidance {a.guidance}, {a.repeats} alternating repeats, "
        f"torch threads {torch.get_num_threads()}"
    )
    for name, times in (("ours    ", t_ours), ("pipeline", t_pipe)):
        runs = " ".join(f"{t:.3f}" for t in times)
        print(f"{name} median {statistics.median(times):.3f} s  runs: {runs}")
    print(f"wall-time ratio ours/pipeline: {ratio:.3f}  (target <= 0.85)")
    if peaks:
        print(
            f"peak GPU memory allocated: ours {peaks['ours']:.2f} GiB, "
            f"pipeline {peaks['pipeline']:.2f} GiB"
        )
    print(
        f"preview: {preview * 1e3:.2f} ms per step = {preview / step_time:.1%} of a step "
        f"(target <= 3%)"
    )
    return 0


def cuda_sync(bundle) -> None:
    """Wait for the bundle's GPU work (timings and peaks read after it); nothing on a CPU."""
    if bundle.device.type == "cuda":
        torch.cuda.synchronize(bundle.device)


def _load(spec: str, device, dtype):
    from .models import load_model

    if spec.startswith("random:"):
        return random_model(spec.removeprefix("random:"), device, dtype)
    return load_model(spec, device, dtype)


def run_memory(a: argparse.Namespace) -> int:
    """Peak memory of each method at the model's native size, the two heaviest first: a
    text-to-image generate and a null-text inversion (its backward passes through the UNet);
    then SDEdit, RePaint, DiffEdit (mask, edit), DDIM and direct inversion, and re-edits of
    the null-text inversion without and with attention control. On CUDA the allocator's
    peak per job; on a CPU only the process's peak resident size so far, which never goes
    down (so each figure includes the ones before it)."""
    import resource

    from .algorithms.common import drive
    from .denoiser import Denoiser
    from .jobs import JOB_RUNNERS, JobContext
    from .types import EditRequest

    spec = _pick_model(a.model)
    bundle = _load(spec, a.device, a.dtype)
    size = bundle.native_size
    cuda = bundle.device.type == "cuda"
    image = np.random.default_rng(a.seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : size // 2, size // 4 : size // 2] = 255
    common = dict(prompt=PROMPT, steps=a.steps, seed=a.seed)
    reference = {"reference_prompt": PROMPT}
    kept: dict = {}  # the null-text inversion, for the re-edits

    def reedit(control: str):
        return lambda: EditRequest(
            "reedit", prompt=EDIT, options={"inversion": kept["inv"], "control": control}
        )

    jobs = {
        "generate": lambda: EditRequest("generate", **common),
        "null-text inversion": lambda: EditRequest(
            "invert", image=image, guidance=a.guidance, **common
        ),
        "sdedit": lambda: EditRequest("sdedit", image=image, strength=a.strength, **common),
        "repaint": lambda: EditRequest("repaint", image=image, mask=mask, **common),
        "diffedit mask": lambda: EditRequest(
            "diffedit_mask", image=image, prompt=EDIT, options=reference
        ),
        "diffedit": lambda: EditRequest(
            "diffedit", image=image, prompt=EDIT, steps=a.steps, seed=a.seed, options=reference
        ),
        "ddim inversion": lambda: EditRequest(
            "invert", image=image, options={"inversion": "ddim"}, **common
        ),
        "direct inversion": lambda: EditRequest(
            "invert", image=image, options={"inversion": "direct"}, **common
        ),
        "re-edit, no control": reedit("none"),
        "re-edit, attention control (p2p)": reedit("p2p"),
    }
    print(f"model {spec} on {bundle.device} ({bundle.dtype}), {size}x{size}, {a.steps} steps")
    if cuda:
        print(f"weights: {torch.cuda.memory_allocated(bundle.device) / 2**30:.2f} GiB")
    for name, make in jobs.items():
        req = make()
        cuda_sync(bundle)
        if cuda:
            torch.cuda.reset_peak_memory_stats(bundle.device)
        t0 = time.perf_counter()
        result = drive(JOB_RUNNERS[req.method](JobContext(bundle, Denoiser(bundle)), req))
        cuda_sync(bundle)
        seconds = time.perf_counter() - t0
        if name == "null-text inversion":
            kept["inv"] = result.extras["inversion"]
        if cuda:
            peak = f"{torch.cuda.max_memory_allocated(bundle.device) / 2**30:.2f} GiB (CUDA peak)"
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
            peak = f"{rss:.2f} GiB (process peak RSS so far)"
        print(f"{name}: {seconds:.1f} s, peak memory {peak}", flush=True)
    return 0
