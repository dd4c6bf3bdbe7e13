"""``python -m engine.training`` — build the demo model end to end.

    python -m engine.training data  --out RUN/world --n 20000
    python -m engine.training vae   --data RUN/world --run RUN --steps 4000
    python -m engine.training unet  --data RUN/world --run RUN --steps 20000
    python -m engine.training export --run RUN --out assets/models/demo

Every stage resumes from its checkpoint in RUN; ``--minutes`` bounds a session's share.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.training", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="stage", required=True)
    d = sub.add_parser("data", help="render the demo world to a cache")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--n", type=int, default=20000)
    d.add_argument("--start-seed", type=int, default=0)
    d.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    for name in ("vae", "unet"):
        s = sub.add_parser(name, help=f"train the {name} stage")
        s.add_argument("--data", type=Path, required=True)
        s.add_argument("--run", type=Path, required=True)
        s.add_argument("--steps", type=int, required=True)
        s.add_argument("--batch", type=int, default=16 if name == "vae" else 32)
        s.add_argument("--lr", type=float, default=4e-4 if name == "vae" else 3e-4)
        s.add_argument("--device", default="auto")
        s.add_argument("--minutes", type=float, default=None)
        s.add_argument("--log-every", type=int, default=20)
        s.add_argument("--ckpt-every", type=int, default=200)
        if name == "unet":
            s.add_argument("--n-images", type=int, default=None, help="encode only the first N")
            s.add_argument(
                "--init", type=Path, default=None, help="exported model to continue from"
            )
    e = sub.add_parser("export", help="write the run as a diffusers folder")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.stage == "data":
        from .dataset import build_cache

        build_cache(a.out, a.n, a.start_seed, workers=a.workers)
    elif a.stage in ("vae", "unet"):
        from .train import train_unet, train_vae

        common = dict(
            lr=a.lr,
            device=a.device,
            minutes=a.minutes,
            log_every=a.log_every,
            ckpt_every=a.ckpt_every,
        )
        if a.stage == "vae":
            train_vae(a.data, a.run, a.steps, a.batch, **common)
        else:
            train_unet(a.data, a.run, a.steps, a.batch, n_images=a.n_images, init=a.init, **common)
    else:
        from .export import export

        export(a.run, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
