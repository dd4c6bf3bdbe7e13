"""``python -m engine bench --p2p``: what attention control costs, against a plain re-edit.

One image is inverted (``--inversion``, DDIM by default; it costs the same for both), then
re-edited with a changed prompt without control and with Prompt-to-Prompt, alternating, on
the same inversion. Each variant also runs once in a fresh process of its own so that its
peak memory can be read (CUDA: the allocator's peak; CPU: the process's peak resident size),
beside a process that only inverts (the baseline both share). Reports the median time ratio
and the peaks.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from .bench import EDIT, PROMPT, cuda_sync

VARIANTS = {"plain": {"control": "none"}, "p2p": {"control": "p2p"}}


def _setup(spec: str, device, dtype, size: int | None, steps: int, inversion: str = "ddim"):
    from .algorithms.common import drive
    from .bench import _pick_model, random_model
    from .denoiser import Denoiser
    from .jobs import JOB_RUNNERS, JobContext
    from .models import load_model
    from .types import EditRequest

    spec = _pick_model(spec)
    if spec.startswith("random:"):
        bundle = random_model(spec.removeprefix("random:"), device, dtype)
    else:
        bundle = load_model(spec, device, dtype)
    size = size or bundle.native_size
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ctx = JobContext(bundle, Denoiser(bundle))

    def run(method: str, **fields):
        with torch.no_grad():
            return drive(JOB_RUNNERS[method](ctx, EditRequest(method, **fields)))

    inv = run("invert", prompt=PROMPT, image=image, steps=steps, options={"inversion": inversion})
    return spec, bundle, run, inv.extras["inversion"]


def child(argv: list[str]) -> int:
    """One variant in this process; prints its peak memory in MiB as JSON."""
    spec, device, dtype, size, steps, inversion, variant = argv
    _, bundle, run, inv = _setup(
        spec, device or None, dtype or None, int(size) or None, int(steps), inversion
    )
    if bundle.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if variant != "invert only":
        run("reedit", prompt=EDIT, options={"inversion": inv, **VARIANTS[variant]})
    cuda_sync(bundle)
    if bundle.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_mib": peak}))
    return 0


def run(a) -> int:
    spec, bundle, job, inv = _setup(a.model, a.device, a.dtype, a.size, a.steps, a.inversion)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}

    def once(variant: str) -> float:
        cuda_sync(bundle)
        t0 = time.perf_counter()
        job("reedit", prompt=EDIT, options={"inversion": inv, **VARIANTS[variant]})
        cuda_sync(bundle)
        return time.perf_counter() - t0

    for v in VARIANTS:  # warm-up
        once(v)
    for i in range(a.repeats):
        order = list(VARIANTS) if i % 2 == 0 else list(VARIANTS)[::-1]
        for v in order:
            times[v].append(once(v))
    h, w = inv.trajectory[0].shape[-2:]
    print(
        f"model {spec} on {bundle.device} ({bundle.dtype}), latents {h}x{w}, {a.steps} steps, "
        f"{a.inversion} inversion, "
        f"{a.repeats} alternating repeats, torch threads {torch.get_num_threads()}"
    )
    for v, ts in times.items():
        print(
            f"{v:6} median {statistics.median(ts):.3f} s  runs: {' '.join(f'{t:.3f}' for t in ts)}"
        )
    ratio = statistics.median(times["p2p"]) / statistics.median(times["plain"])
    print(f"time ratio p2p/plain: {ratio:.3f}  (target <= 1.30)")
    from .methods import METHODS

    n = METHODS["diffedit_mask"].options["n_samples"].default
    print(
        f"(p2p's default blend region first runs DiffEdit's mask, {n} noises x 2 prompts: a "
        f"cost that does not shrink with the steps, so few steps raise the ratio)"
    )
    peaks = {}
    for v in ("invert only", *VARIANTS):
        args = [spec, a.device or "", a.dtype or "", str(a.size or 0), str(a.steps), a.inversion, v]
        out = subprocess.run(
            [sys.executable, "-m", "engine.bench_attention", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[v] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    kind = "CUDA allocator peak" if bundle.device.type == "cuda" else "process peak RSS"
    print(f"peak memory ({kind}): " + ", ".join(f"{k} {p:.0f} MiB" for k, p in peaks.items()))
    print(
        f"re-edit above the inversion: plain {peaks['plain'] - peaks['invert only']:.0f} MiB, "
        f"p2p {peaks['p2p'] - peaks['invert only']:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
