"""Edit prompt (a generated picture re-edited by its prompt, ``edit_generated``) measured on
the demo world: the blend region as the app sets it, DiffEdit's, against the words' attention
(the paper's local blend) and no blend.

    python -m engine.evaluation.evaluate_edit_prompt [--model builtin:demo] [--n 12]
        [--seeds calibration|development|final|N] [--kinds wall kind time] [--json PATH]

For each scene of an edit kind (``evaluate_p2p``'s makers and seed offsets) the scene's
caption is generated (50 steps, guidance 7.5, the scene's seed), then edited to the edited
caption through the app's own job, with the generated picture given as the editor gives it.
There is no true edit of a generated picture, so the measures read the pictures themselves:

- valid: the probe reads the edited attribute's *old* value on the generated picture (the
  edit has something to change); the other measures count valid scenes only;
- changed: the probe reads the new value on the edit;
- kept: the share of the other attributes the probe reads as on the generated picture;
- PSNR against the generated picture, the edit included (a local edit changes little);
- whole picture: how often the default ran without blend (its DiffEdit map was broad);
- seconds per edit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..imageops import psnr
from ..training.probe import load_probe
from ..world.scene import ATTRIBUTE_NAMES
from .evaluate_edits import EditCase, Runner, mean_ci, rate_ci
from .evaluate_p2p import _others, open_evaluation, write_json

STEPS, GUIDANCE = 50, 7.5
VARIANTS = {
    "diffedit region (default)": {},
    "attention blend": {"blend_mask": "attention"},
    "no blend": {"local_blend": False},
}


def edit_prompt_metrics(run: Runner, probe, cases: dict[str, list[EditCase]]) -> dict:
    """Every case × variant → {kind/variant: measures}."""
    table: dict = {}
    for kind, kind_cases in cases.items():
        rows = {v: [] for v in VARIANTS}  # (source, edit, seconds, whole picture)
        for c in kind_cases:
            fields = dict(steps=STEPS, guidance=GUIDANCE, seed=c.seed)
            src, _ = run("generate", prompt=c.before.caption, **fields)
            for variant, options in VARIANTS.items():
                res, secs = run(
                    "edit_generated",
                    prompt=c.edit_prompt,
                    image=src.image,
                    options={"source_prompt": c.before.caption, **options},
                    **fields,
                )
                whole = res.parameters.get("blend_region") == "whole picture"
                rows[variant].append((src.image, res.image, secs, whole))
            run.log(f"  edit prompt {kind} seed {c.seed}: done")
        k = ATTRIBUTE_NAMES.index(kind_cases[0].attribute)
        sources = probe.predict(np.stack([r[0] for r in rows[next(iter(VARIANTS))]]))
        valid = [s[k] != c.target for s, c in zip(sources, kind_cases)]
        for variant, vrows in rows.items():
            edits = probe.predict(np.stack([r[1] for r in vrows]))
            sel = [i for i, ok in enumerate(valid) if ok]
            entry = {
                "valid": rate_ci(valid),
                "changed": rate_ci([edits[i][k] == kind_cases[i].target for i in sel]),
                "kept": mean_ci(
                    [
                        float(
                            np.mean(
                                edits[i][_others(kind_cases[i])]
                                == sources[i][_others(kind_cases[i])]
                            )
                        )
                        for i in sel
                    ]
                ),
                "psnr_vs_source_db": mean_ci([psnr(vrows[i][1], vrows[i][0]) for i in sel]),
                "seconds": mean_ci([r[2] for r in vrows]),
            }
            if not VARIANTS[variant]:
                entry["whole_picture"] = rate_ci([r[3] for r in vrows])
            table[f"{kind}/{variant}"] = entry
            run.log(f"  {kind}/{variant}: changed {entry['changed']['k']}/{entry['changed']['n']}")
    return table


def format_table(results: dict) -> str:
    lines = [
        f"Edit prompt on generated pictures, scenes from {results['seed_start']:,}, n "
        f"{results['n']} per kind; 95 % intervals",
        "",
        "| edit | blend | valid | changed | kept | PSNR vs source | s/edit | whole picture |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, e in results["table"].items():
        kind, variant = key.split("/", 1)
        ch, kept, ps = e["changed"], e["kept"], e["psnr_vs_source_db"]
        whole = e.get("whole_picture")
        whole_text = "" if whole is None else f"{whole['k']}/{whole['n']}"
        lines.append(
            f"| {kind} | {variant} | {e['valid']['k']}/{e['valid']['n']} "
            f"| {ch['k']}/{ch['n']} ({ch['rate']:.0%} [{ch['ci95'][0]:.0%}, {ch['ci95'][1]:.0%}]) "
            f"| {kept['mean']:.0%} | {ps['mean']:.1f} dB | {e['seconds']['mean']:.2f} "
            f"| {whole_text} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.evaluation.evaluate_edit_prompt",
        description=__doc__.split("\n")[0],
    )
    p.add_argument("--model", default="builtin:demo")
    p.add_argument("--n", type=int, default=12, help="scenes per edit kind")
    p.add_argument("--seeds", default="calibration", help="calibration / development / final / N")
    p.add_argument("--kinds", nargs="*", default=["wall", "kind", "time"])
    p.add_argument("--probe", default=None)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    opened = open_evaluation("evaluate_edit_prompt", a)
    if opened is None:
        return 2
    start, cases, run = opened
    table = edit_prompt_metrics(run, load_probe(a.probe), cases)
    results = {"seed_start": start, "n": a.n, "table": table}
    print(format_table(results))
    write_json(a.json, a.model, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
