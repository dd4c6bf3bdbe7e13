"""``python -m engine.gpu_checks`` and the bench modes it runs (``--live``, ``--p2p
--inversion``). Here only the plumbing: the figures are a GPU's, and benchmarks are not unit
tests, so no time is asserted."""

from __future__ import annotations

import re

from engine import cli, gpu_checks
from engine import fast as fast_mod


def test_live_bench_times_each_live_setting_on_both_paths(monkeypatch, capsys):
    monkeypatch.setattr(fast_mod, "default_compile", lambda fn, device: fn)  # no real compile
    args = ["bench", "--live", "--fast", "--model", "builtin:tiny", "--repeats", "1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    for path in ("fast path", "eager"):
        rows = re.findall(
            rf"^{path}\s+(.+?): p50 [0-9.]+ ms, p95 [0-9.]+ ms, (\d+) steps", out, re.M
        )
        assert [r[0].split(" (")[0] for r in rows] == [
            "lcm 4 steps",
            "ddim 8 steps",
            "ddim 25 steps",
        ]
        # SDEdit at strength 0.6 runs the LCM's 4 steps and 15 of DDIM's 25
        assert rows[0][1] == "4" and rows[2][1] == "15", out


def test_p2p_bench_starts_from_the_inversion_asked_for(capsys):
    args = ["bench", "--p2p", "--model", "builtin:tiny", "--inversion", "null_text"]
    assert cli.main([*args, "--steps", "3", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "null_text inversion" in out
    assert re.search(r"time ratio p2p/plain: [0-9.]+", out)
    assert re.search(r"peak memory \(process peak RSS\): invert only \d+ MiB, plain \d+ MiB", out)


def test_every_gpu_figure_owed_has_a_check_and_the_dry_run_uses_tiny_models():
    real = gpu_checks.checks(None, dry_run=False)
    names = " ".join(c.name for c in real)
    for issue in ("14", "15", "16", "17"):
        assert f"issue {issue}" in names or f"issues {issue}" in names or f", {issue}" in names
    assert all("random:sd15" in c.args or "random:sdxl" in c.args for c in real)
    assert gpu_checks.checks(1, False) + gpu_checks.checks(2, False) == real
    dry = gpu_checks.checks(None, dry_run=True)
    assert [c.name for c in dry] == [c.name for c in real]
    assert not any(a.startswith("random:") for c in dry for a in c.args)


def test_runner_logs_each_check_skips_what_does_not_fit_and_reports_failures(tmp_path):
    failing = gpu_checks.Check("a check that fails", ("--model", "random:sd3"), 60)
    slow = gpu_checks.Check("a check past its limit", ("--memory", "--model", "builtin:tiny"), 1)
    later = gpu_checks.Check("a check that no longer fits", ("--model", "builtin:tiny"), 600)
    summary = gpu_checks.run_checks([failing, slow], tmp_path, budget_s=120, log=lambda s: None)
    assert summary[0].startswith("failed (exit") and "a check that fails" in summary[0]
    assert summary[1].startswith("stopped at its time limit in 1 s"), summary
    summary = gpu_checks.run_checks([later], tmp_path, budget_s=0, log=lambda s: None)
    assert summary == ["skipped (budget): a check that no longer fits"]
    log = (tmp_path / "gpu_checks.log").read_text()
    assert "===== a check that fails" in log and "random:sd3" in log  # the bench's own error
    assert log.count("===== summary") == 2


def test_refuses_to_measure_without_a_gpu(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    assert gpu_checks.main(["--out", str(tmp_path)]) == 2
    assert "--dry-run" in capsys.readouterr().err
