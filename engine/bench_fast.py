"""``python -m engine bench --fast``: the fast path (``engine.fast``) side by side.

Four contenders run the same SDEdit job (components, image, prompt, steps, strength,
guidance, seed), alternating in one process so drift in machine load hits all alike:

- *ours-fast*: our loop with the compiled UNet and VAE decoder (after the compile);
- *ours-eager*: our loop with the fast path paused (what ``DIFFUSION_EDITOR_FAST=0`` runs);
- *pipeline*: diffusers' img2img pipeline on the same modules, eager;
- *pipeline+compile*: the pipeline on copies of the UNet and VAE, with
  ``torch.compile`` on the UNet and ``vae.decode`` as diffusers' docs show, with our compile
  settings (``engine.fast.default_compile``): what a user could script.

Then: the UNet alone (calls per second at the job's batch), the time to the first x̂₀
preview, the first job after a load (eager; the compile waits for an idle engine), and
the scaling with working size and with steps (ours-fast, ours-eager, pipeline).
Medians, and ratios against the plain pipeline. Nothing here is a unit test.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from . import sdxl
from .bench import PROMPT, _load, _pick_model, bench_image, cuda_sync, make_pipeline
from .fast import PreviewPipe


class _Side:
    """One contender: its runs (s), first-preview times (s), peak memory, last image."""

    def __init__(self, name: str, fn: Callable[[], tuple[float, float | None, np.ndarray]]):
        self.name, self.fn = name, fn
        self.times: list[float] = []
        self.first: list[float] = []
        self.peak = 0.0
        self.image: np.ndarray | None = None

    def __call__(self, record: bool = True) -> None:
        seconds, first, image = self.fn()
        self.image = image
        if record:
            self.times.append(seconds)
            if first is not None:
                self.first.append(first)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


@contextlib.contextmanager
def _native_size(bundle, size: int):
    """Make ``size`` the bundle's working size (the UNet's ``sample_size``) for a scaling
    row: our jobs resize every input to the native size, the pipeline does not."""
    old = bundle.unet.config.sample_size
    bundle.unet.register_to_config(sample_size=size // bundle.vae_factor)
    try:
        yield
    finally:
        bundle.unet.register_to_config(sample_size=old)


class _Runner:
    """Runs ours and the pipelines on one bundle, with CUDA syncs and peak memory."""

    def __init__(self, bundle, fast, a: argparse.Namespace):
        from .preview import Previewer

        self.bundle, self.fast, self.a = bundle, fast, a
        self.cuda = bundle.device.type == "cuda"
        self.previewer = Previewer(bundle)
        self.pipeline_threads = torch.get_num_threads()  # before the fast path sets ours

    def sync(self) -> None:
        cuda_sync(self.bundle)

    def _peak_start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.bundle.device)

    def _peak(self) -> float:
        return torch.cuda.max_memory_allocated(self.bundle.device) / 2**30 if self.cuda else 0.0

    @contextlib.contextmanager
    def threads(self, n: int | None):
        """Run a contender at ``n`` CPU threads (None: as they are)."""
        before = torch.get_num_threads()
        if n:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def ours(self, image: np.ndarray, steps: int, fast: bool):
        from .algorithms.common import drive
        from .denoiser import Denoiser
        from .jobs import JOB_RUNNERS, JobContext
        from .types import EditRequest

        a = self.a
        req = EditRequest(
            "sdedit",
            prompt=PROMPT,
            image=image,
            steps=steps,
            strength=a.strength,
            guidance=a.guidance,
            seed=a.seed,
        )
        ctx = JobContext(self.bundle, Denoiser(self.bundle))  # fresh: no cached embeddings
        first: list[float] = []
        paused = self.fast.paused() if not fast else contextlib.nullcontext()
        self._peak_start()
        self.sync()
        t0 = time.perf_counter()

        # previews as the engine makes them: on CUDA with the fast path through a PreviewPipe
        # (no host-device sync per step), else the previewer at once; each lands in host memory
        pipe = PreviewPipe(self.previewer) if self.cuda and fast else None

        def landed(ready) -> None:
            if ready and not first:
                first.append(time.perf_counter() - t0)

        def preview(p) -> None:
            if p.x0 is None:
                return
            if pipe is not None:
                landed(pipe.push(p))
            else:
                landed([(p, self.previewer(p.x0))])

        ours_threads = self.threads(self.fast.threads)  # what the engine runs with
        with torch.no_grad(), paused, self.fast.job(), ours_threads:  # as the engine runs a job
            result = drive(JOB_RUNNERS["sdedit"](ctx, req), preview)
            if pipe is not None:
                landed(pipe.drain())
        self.sync()
        seconds = time.perf_counter() - t0
        return seconds, (first[0] if first else None), result.image

    def pipeline(self, pipe, image: np.ndarray, steps: int, plain: bool):
        from PIL import Image

        a = self.a
        g = torch.Generator("cpu").manual_seed(a.seed)
        paused = self.fast.paused() if plain else contextlib.nullcontext()
        self._peak_start()
        self.sync()
        t0 = time.perf_counter()
        with paused, self.threads(self.pipeline_threads):  # torch's default, as scripted
            out = pipe(
                prompt=PROMPT,
                image=Image.fromarray(image),
                strength=a.strength,
                num_inference_steps=steps,
                guidance_scale=a.guidance,
                generator=g,
                output_type="np",
            ).images[0]
        self.sync()
        seconds = time.perf_counter() - t0
        return seconds, None, (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def _compiled_pipeline(bundle):
    """The pipeline on copies of the UNet and VAE with ``torch.compile`` as a user would
    script it (diffusers' docs: the UNet module and ``vae.decode``), our compile settings."""
    from .fast import default_compile

    twin = copy.copy(bundle)
    twin.unet = copy.deepcopy(bundle.unet)  # the fast path's hooks do not travel (eager)
    twin.vae = copy.deepcopy(bundle.vae)
    pipe = make_pipeline(twin)
    pipe.unet = default_compile(pipe.unet, bundle.device)
    pipe.vae.decode = default_compile(pipe.vae.decode, bundle.device)
    return pipe


def _alternate(sides: list[_Side], repeats: int) -> None:
    """Each repeat runs every side once, rotating who goes first."""
    for i in range(repeats):
        k = i % len(sides)
        for side in sides[k:] + sides[:k]:
            side()


def _diff(x: np.ndarray | None, y: np.ndarray | None) -> str:
    if x is None or y is None or x.shape != y.shape:
        return "n/a"
    d = np.abs(x.astype(np.int16) - y.astype(np.int16))
    mse = float((d.astype(np.float64) ** 2).mean())
    psnr = "inf" if mse == 0 else f"{10 * np.log10(255**2 / mse):.1f} dB"
    return f"max {int(d.max())}/255, mean {d.mean():.3f}, PSNR {psnr}"


def _load_figure() -> str:
    try:
        import os

        one, five, _ = os.getloadavg()
        return f"load average {one:.2f} (1 min) {five:.2f} (5 min)"
    except OSError:
        return "load average n/a"


def run_fast(a: argparse.Namespace) -> int:
    from .errors import EngineError
    from .fast import FastPath

    spec = _pick_model(a.model)
    bundle = _load(spec, a.device, a.dtype)
    if bundle.family in sdxl.FAMILIES:
        raise EngineError("bench --fast times SD-family models; SDXL compiles on first use.")
    size = bundle.native_size
    image = bench_image(size, a.seed)
    pipe = make_pipeline(bundle)
    print(
        f"model {spec} on {bundle.device} ({bundle.dtype}), {size}x{size}, {a.steps} steps, "
        f"strength {a.strength}, guidance {a.guidance}, torch threads "
        f"{torch.get_num_threads()}, {_load_figure()}",
        flush=True,
    )

    # 1. the first job after a load: eager at once; the compile starts once it is done
    run = _Runner(bundle, None, a)  # the previewer's map first: not part of a load
    t_load = time.perf_counter()
    run.fast = fast = FastPath(bundle)
    fast.warm_up(size, batches=(2,) if a.guidance != 1.0 else (1,))
    seconds, first, _ = run.ours(image, a.steps, fast=True)
    print(
        f"threads: ours {fast.threads or torch.get_num_threads()} (engine.fast.cpu_threads), "
        f"pipelines {run.pipeline_threads}",
        flush=True,
    )
    print(
        f"first job after load: {seconds:.3f} s (first preview {first:.3f} s), eager (the "
        f"compile waits for the engine to be idle); compiled graphs ready: {fast.ready()}",
        flush=True,
    )
    fast.wait()
    ready_after = time.perf_counter() - t_load
    status = fast.status()
    print(
        f"fast path ready {ready_after:.1f} s after the load; compile seconds per graph: "
        + ", ".join(
            f"{n} {'/'.join(f'{s:.1f}' for s in st.compile_seconds)}" for n, st in status.items()
        )
        + f"; failed: {sum(st.failed for st in status.values())}",
        flush=True,
    )

    t0 = time.perf_counter()
    compiled_pipe = _compiled_pipeline(bundle)
    sides = [
        _Side("ours-fast", lambda: run.ours(image, a.steps, fast=True)),
        _Side("ours-eager", lambda: run.ours(image, a.steps, fast=False)),
        _Side("pipeline", lambda: run.pipeline(pipe, image, a.steps, plain=True)),
        _Side("pipeline+compile", lambda: run.pipeline(compiled_pipe, image, a.steps, plain=False)),
    ]
    sides[-1](record=False)  # compiles the user's pipeline
    print(f"pipeline+compile: compiled in {time.perf_counter() - t0:.1f} s", flush=True)
    for side in sides[:-1]:
        side(record=False)  # warm-up: allocator, kernels
    _alternate_with_peaks(sides, a.repeats, run)
    _report(sides, a.repeats, bundle, a.steps, a.strength)

    _unet_alone(bundle, fast, run, a)
    _scaling(bundle, fast, run, pipe, a)
    fast.close()
    return 0


def _alternate_with_peaks(sides: list[_Side], repeats: int, run: _Runner) -> None:
    for side in sides:
        inner = side.fn

        def timed(inner=inner, side=side):
            out = inner()
            side.peak = max(side.peak, run._peak())
            return out

        side.fn = timed
    _alternate(sides, repeats)


def _report(sides: list[_Side], repeats: int, bundle, steps: int, strength: float) -> None:
    base = next(s for s in sides if s.name == "pipeline").median
    steps_run = max(bundle.schedule.steps_for_strength(steps, strength), 1)
    print(f"\n{repeats} alternating repeats, {_load_figure()}")
    print("| contender | median s | ratio to pipeline | s/step | first preview s | runs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for s in sides:
        first = f"{statistics.median(s.first):.3f}" if s.first else "–"
        runs = " ".join(f"{t:.3f}" for t in s.times)
        print(
            f"| {s.name} | {s.median:.3f} | {s.median / base:.2f} | "
            f"{s.median / steps_run:.4f} | {first} | {runs} |"
        )
    fast, eager = sides[0], sides[1]
    step = fast.median / steps_run
    if fast.first:
        print(
            f"time to first preview (ours-fast) {statistics.median(fast.first):.3f} s vs one "
            f"step {step:.3f} s + 50 ms = {step + 0.05:.3f} s"
        )
    print(f"ours-fast / ours-eager: {fast.median / eager.median:.2f}")
    print(f"ours-fast / pipeline+compile: {fast.median / sides[3].median:.2f}")
    print(f"output ours-fast vs ours-eager: {_diff(fast.image, eager.image)}")
    print(f"output ours-eager vs pipeline: {_diff(eager.image, sides[2].image)}")
    print(f"output pipeline+compile vs pipeline: {_diff(sides[3].image, sides[2].image)}")
    if any(s.peak for s in sides):
        print("peak GPU memory: " + ", ".join(f"{s.name} {s.peak:.2f} GiB" for s in sides))


def _unet_alone(bundle, fast, run: _Runner, a: argparse.Namespace) -> None:
    """UNet calls per second at the job's batch (2 with guidance), compiled vs eager,
    alternating blocks of calls."""
    n = 2 if a.guidance != 1.0 else 1
    side = bundle.native_size // bundle.vae_factor
    dev, dt = bundle.device, bundle.dtype
    x = torch.randn(n, bundle.latent_channels, side, side, device=dev, dtype=dt)
    t = torch.full((n,), 500, device=dev, dtype=torch.long)
    width = int(bundle.unet.config.cross_attention_dim)
    emb = torch.randn(n, bundle.tokenizer.model_max_length, width, device=dev, dtype=dt)
    calls = 20 if run.cuda else 5
    times: dict[str, list[float]] = {"compiled": [], "eager": []}
    with torch.no_grad():
        for i in range(6):
            for name in ("compiled", "eager") if i % 2 == 0 else ("eager", "compiled"):
                paused = fast.paused() if name == "eager" else contextlib.nullcontext()
                with paused:
                    run.sync()
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        bundle.unet(x, t, encoder_hidden_states=emb)
                    run.sync()
                if i > 0:  # the first block warms up
                    times[name].append(calls / (time.perf_counter() - t0))
    c, e = statistics.median(times["compiled"]), statistics.median(times["eager"])
    print(
        f"\nUNet alone, batch {n} at {side}x{side} latents: compiled {c:.2f} calls/s, "
        f"eager {e:.2f} calls/s (x{c / e:.2f}); {_load_figure()}"
    )


def _scaling(bundle, fast, run: _Runner, pipe, a: argparse.Namespace) -> None:
    native = bundle.native_size
    if a.sizes is None:
        factors = (1, 1.5, 2) if run.cuda else (1, 2, 4)
        sizes = [int(native * f) // 8 * 8 for f in factors]
    else:
        sizes = a.sizes
    steps_list = [10, 25, 50] if a.steps_list is None else a.steps_list
    rows = [(s, a.steps) for s in sizes] + [(native, n) for n in steps_list]
    if not rows:
        return
    print(f"\nscaling ({a.scale_repeats} alternating repeats each; ratios to the pipeline)")
    print("| size | steps | ours-fast s | ours-eager s | pipeline s | fast/pipe | eager/pipe |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size, steps in rows:
        with _native_size(bundle, size):
            fast.warm_up(size, batches=(2,) if a.guidance != 1.0 else (1,))
            fast.wait()
            image = bench_image(size, a.seed)
            sides = [
                _Side("ours-fast", partial(run.ours, image, steps, fast=True)),
                _Side("ours-eager", partial(run.ours, image, steps, fast=False)),
                _Side("pipeline", partial(run.pipeline, pipe, image, steps, plain=True)),
            ]
            for side in sides:
                side(record=False)
            _alternate(sides, a.scale_repeats)
        f, e, p = (s.median for s in sides)
        print(
            f"| {size} | {steps} | {f:.3f} | {e:.3f} | {p:.3f} | {f / p:.2f} | {e / p:.2f} |",
            flush=True,
        )
    print(_load_figure())
