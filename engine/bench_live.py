"""``python -m engine bench --live``: what one live-mode update costs the engine.

Live mode (``editor.live``) runs an SDEdit of the whole picture after every stroke: on a
few-step model 4 LCM steps (Luo et al. 2023, Algorithm 3) at the model's guidance, on an
ordinary one ``editor.live.LIVE_STEPS`` DDIM steps. This times that job as the engine runs it
— prompt encoding (cached after the first update, as in a session), VAE encode, the steps with
an x̂₀ preview after each, decode — against the same job at 25 DDIM steps, alternating, on
one loaded model, so the few-step gain is a ratio measured side by side. It leaves out what
only the editor adds (Qt showing the picture, the debounce): ``python -m editor.live_bench``
measures the whole path from a stroke's release, where Qt runs. With ``random:sd15`` on a GPU
this is issue 15's 512² figure (target: p50 ≤ 80 ms per update with 4 LCM steps). On CUDA
(or with ``--fast``) each row runs with the fast path (compiled graphs, ready before timing),
as the app does there, and eagerly.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch


def settings(bundle, live_steps: int) -> dict[str, dict]:
    """The rows: (sampler, steps, guidance) of each live setting timed. The few-step row
    uses the model's own few-step defaults (``engine.few_step``), else an LCM-LoRA's."""
    from .few_step import DEFAULTS, sampling_defaults

    few = sampling_defaults(bundle.scheduler_config, bundle.unet.config, bundle.name)
    kind = few.kind or "lcm-lora"
    steps, guidance = (
        (few.defaults["steps"], few.defaults["guidance"]) if few.kind else DEFAULTS[kind]
    )
    return {
        f"lcm {steps} steps ({kind} defaults, guidance {guidance})": dict(
            sampler="lcm", steps=steps, guidance=guidance
        ),
        f"ddim {live_steps} steps (live on an ordinary model)": dict(
            sampler="ddim", steps=live_steps, guidance=7.5
        ),
        "ddim 25 steps (a Run)": dict(sampler="ddim", steps=25, guidance=7.5),
    }


def run_live(a: argparse.Namespace) -> int:
    from .algorithms.common import drive
    from .bench import PROMPT, _load, _pick_model, bench_image, cuda_sync
    from .denoiser import Denoiser
    from .fast import FastPath
    from .jobs import JOB_RUNNERS, JobContext
    from .preview import Previewer
    from .types import EditRequest

    spec = _pick_model(a.model)
    bundle = _load(spec, a.device, a.dtype)
    size = bundle.native_size
    image = bench_image(size, a.seed)
    cuda = bundle.device.type == "cuda"
    ctx = JobContext(bundle, Denoiser(bundle))  # one per session: prompts stay encoded
    previewer = Previewer(bundle)
    rows = settings(bundle, 8)  # editor.live.LIVE_STEPS (the engine does not import Qt)

    def update(row: dict, fast: FastPath | None) -> tuple[float, int]:
        req = EditRequest(
            "sdedit",
            prompt=PROMPT,
            image=image,
            steps=row["steps"],
            strength=a.strength,
            guidance=row["guidance"],
            seed=a.seed,
            options={"sampler": row["sampler"], "eta": 0.0, "batch_size": 1},
        )
        calls = [0]

        def preview(p) -> None:
            if p.x0 is not None:
                calls[0] += 1
                previewer(p.x0)  # on the host, as the engine hands a preview over

        busy = fast.job() if fast is not None else contextlib.nullcontext()
        cuda_sync(bundle)
        t0 = time.perf_counter()
        with torch.no_grad(), busy:
            drive(JOB_RUNNERS["sdedit"](ctx, req), preview)
        cuda_sync(bundle)
        return time.perf_counter() - t0, calls[0]

    compiled: FastPath | None = None
    if cuda or a.fast:  # the app's default on CUDA; --fast asks for it on a CPU too
        compiled = FastPath(bundle)
        for row in rows.values():  # queue every row's graphs, then let them compile
            update(row, compiled)
        compiled.wait()
    paths = ["fast path", "eager"] if compiled else ["eager"]

    def timed(path: str, row: dict) -> tuple[float, int]:
        if path == "eager" and compiled:  # the hooks stay in: paused, every call is eager
            with compiled.paused():
                return update(row, None)
        return update(row, compiled if path == "fast path" else None)

    print(
        f"model {spec} on {bundle.device} ({bundle.dtype}), {size}x{size}, strength "
        f"{a.strength}, {a.repeats} repeats per row and path, alternating, torch threads "
        f"{torch.get_num_threads()}",
        flush=True,
    )
    times = {(p, k): [] for p in paths for k in rows}
    steps_seen: dict[str, int] = {}
    for p in paths:
        for row in rows.values():  # warm-up: allocator, kernels
            timed(p, row)
    for i in range(a.repeats):
        for name in list(rows) if i % 2 == 0 else list(rows)[::-1]:
            for p in paths if i % 2 == 0 else paths[::-1]:
                seconds, steps_seen[name] = timed(p, rows[name])
                times[p, name].append(seconds)
    for p in paths:
        base = statistics.median(times[p, "ddim 25 steps (a Run)"])
        for name in rows:
            ts = times[p, name]
            p50, p95 = statistics.median(ts), float(np.percentile(ts, 95))
            print(
                f"{p:9} {name}: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
                f"{steps_seen[name]} steps run, {p50 / base:.2f}x the 25-step job",
                flush=True,
            )
    if compiled:
        compiled.close()
    return 0
