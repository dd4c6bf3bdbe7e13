"""``python -m engine.gpu_checks``: every figure the README still owes a GPU, in one command.

The figures that need a GPU (issues 14–17: the fast path against the pipelines, the peak
memory of each method at SD 1.5 512², null-text + Prompt-to-Prompt's memory, a live update
with 4 LCM steps at 512², SDXL against diffusers' SDXL img2img and its memory at 1024²) are
each one ``python -m engine bench …`` command on full-size random-weight architectures (no
checkpoint needed). This runs them in order of need, each in its own process with its own
time limit, inside an overall budget (a step that would not fit is skipped and named), and
writes everything they print to ``<out>/gpu_checks.log``, with a summary at the end.

``--part 1`` is SD 1.5 (fast path, memory, attention control, live), ``--part 2`` SDXL and
the fast path's scaling with size; the default runs both. ``--dry-run`` runs the same steps
on the built-in tiny models on whatever device is here, with few steps: it checks the
commands, not the figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    name: str  # what it measures, and for which issue
    args: tuple[str, ...]  # after ``python -m engine bench``
    limit_s: int  # its own time limit


def checks(part: int | None, dry_run: bool) -> list[Check]:
    sd15 = ("--model", "builtin:tiny") if dry_run else ("--model", "random:sd15", "--dtype", "fp16")
    sdxl = (
        ("--model", "builtin:tiny-xl") if dry_run else ("--model", "random:sdxl", "--dtype", "fp16")
    )
    steps = ("--steps", "4") if dry_run else ("--steps", "50")
    few = ("--repeats", "2") if dry_run else ()
    first = [
        Check(
            "issue 14: null-text + Prompt-to-Prompt at SD 1.5 512², time ratio and peak memory",
            (*sd15, "--p2p", "--inversion", "null_text", *steps, "--repeats", "3"),
            150,
        ),
        Check(
            "issues 17, 14: peak memory of each method at SD 1.5 512²",
            (*sd15, "--memory", *steps),
            150,
        ),
        Check(
            "issue 15: a live update, 4 LCM steps at 512², against 25 steps",
            (*sd15, "--live", "--repeats", "2" if dry_run else "20"),
            120,
        ),
        Check(
            "issue 17: the fast path against the pipelines, SD 1.5 512² fp16",
            (*sd15, "--fast", "--sizes", "--steps-list", *few),
            240,
        ),
    ]
    second = [
        Check(
            "issue 16: ours against diffusers' SDXL img2img at 1024²",
            (*sdxl, "--repeats", "2" if dry_run else "3"),
            150,
        ),
        Check(
            "issue 16: peak memory of each method on SDXL at 1024²",
            (*sdxl, "--memory", "--steps", "4" if dry_run else "25"),
            200,
        ),
        Check(
            "issue 17: the fast path's scaling with size and steps, SD 1.5",
            (*sd15, "--fast", "--sizes", *(("64",) if dry_run else ("768", "1024")), *few),
            240,
        ),
    ]
    return {1: first, 2: second}.get(part, first + second)


def run_checks(todo: list[Check], out: Path, budget_s: float, log=print) -> list[str]:
    """Run each check (skipping those that no longer fit the budget); returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    end = time.monotonic() + budget_s
    summary = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(out / "gpu_checks.log", "a", encoding="utf-8") as f:
        for c in todo:
            left = end - time.monotonic()
            if left < min(c.limit_s, 60):
                summary.append(f"skipped (budget): {c.name}")
                continue
            cmd = [sys.executable, "-m", "engine", "bench", *c.args]
            f.write(f"\n===== {c.name}\n$ {' '.join(cmd[1:])}\n")
            f.flush()
            t0 = time.monotonic()
            # a session of its own: at the limit its children (bench --p2p's) stop with it
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                rc = proc.wait(timeout=min(c.limit_s, left))
                how = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                _stop(proc)
                how = "stopped at its time limit"
            line = f"{how} in {time.monotonic() - t0:.0f} s: {c.name}"
            f.write(f"===== {line}\n")
            f.flush()
            summary.append(line)
            log(line)
        f.write("\n".join(["", "===== summary", *summary, ""]))
    return summary


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (AttributeError, ProcessLookupError, PermissionError):  # not POSIX, or gone
        proc.kill()
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.gpu_checks", description=__doc__)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-checks")))
    p.add_argument("--part", type=int, choices=(1, 2), default=None)
    p.add_argument("--budget-s", type=float, default=540, help="stop starting checks after this")
    p.add_argument("--dry-run", action="store_true", help="tiny models, few steps: the commands")
    a = p.parse_args(argv)
    import torch

    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_checks: no CUDA device here (--dry-run checks the commands).", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"gpu_checks on {device}, torch {torch.__version__}; log: {a.out / 'gpu_checks.log'}")
    summary = run_checks(checks(a.part, a.dry_run), a.out, a.budget_s)
    return 0 if all(line.startswith("ok") for line in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
