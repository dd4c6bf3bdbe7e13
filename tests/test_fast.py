"""The fast path (engine.fast): routing, the background compile, fallbacks, LoRA keys.

Most tests use a stand-in compiler (the module's own forward, possibly gated or failing), so
they check the machinery without paying inductor's minutes; test_fast_compiled.py runs the
real compile. No timing is asserted here: speed is the benchmark's business.
"""

from __future__ import annotations

import copy
import logging
import threading

import numpy as np
import pytest
import torch

from engine import fast as fast_mod
from engine.fast import FastPath
from engine.models import load_model
from engine.types import EditRequest, Finished


def _tiny():
    return load_model("builtin:tiny", device="cpu")  # our own: the hooks change its modules


def _unet_args(bundle, n=2):
    side = bundle.native_size // bundle.vae_factor
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, side, side, generator=g)
    t = torch.full((n,), 500, dtype=torch.long)
    emb = torch.randn(n, 77, int(bundle.unet.config.cross_attention_dim), generator=g)
    return x, t, emb


class Recorder:
    """A stand-in compiler: the compiled function is the eager one, and it records the
    threads it was made and called on; ``gate`` holds the first (compiling) call."""

    def __init__(self, gate: threading.Event | None = None, fail_on=None):
        self.gate, self.fail_on = gate, fail_on
        self.made_on: list[str] = []
        self.called_on: list[str] = []

    def __call__(self, fn, device):
        self.made_on.append(threading.current_thread().name)

        def compiled(*args, **kwargs):
            name = threading.current_thread().name
            self.called_on.append(name)
            if self.gate is not None and name == "engine-compile":
                assert self.gate.wait(60), "the test never opened the gate"
            if self.fail_on is not None and self.fail_on(name):
                raise RuntimeError("simulated compiled-call failure")
            return fn(*args, **kwargs)

        return compiled


def test_calls_run_eagerly_until_the_graph_is_ready_then_compiled():
    b = _tiny()
    x, t, emb = _unet_args(b)
    with torch.no_grad():
        ref = b.unet(x, t, encoder_hidden_states=emb).sample
    gate = threading.Event()
    rec = Recorder(gate)
    path = FastPath(b, compile_fn=rec)
    try:
        with torch.no_grad():
            out = b.unet(x, t, encoder_hidden_states=emb).sample  # queues the compile
        st = path.status()["unet"]
        assert (st.eager_calls, st.compiled_calls) == (1, 0)
        assert not path.ready("unet") and not path.wait(0.2)  # the compile is held
        gate.set()
        assert path.wait(60)
        with torch.no_grad():
            fast_out = b.unet(x, t, encoder_hidden_states=emb).sample
        st = path.status()["unet"]
        assert st.compiled_calls == 1 and st.ready == 1
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        torch.testing.assert_close(fast_out, ref, rtol=0, atol=0)
        # compiled on the compile thread only; the caller's thread only ran the result
        assert set(rec.made_on) == {"engine-compile"}
        assert rec.called_on[0] == "engine-compile"
        assert rec.called_on[-1] == threading.current_thread().name
    finally:
        gate.set()
        path.close()


def test_paused_grad_and_other_shapes_run_eagerly():
    b = _tiny()
    rec = Recorder()
    path = FastPath(b, compile_fn=rec)
    try:
        x, t, emb = _unet_args(b)
        with torch.no_grad():
            b.unet(x, t, encoder_hidden_states=emb)
        assert path.wait(60)
        before = path.status()["unet"].eager_calls
        with torch.no_grad(), path.paused():
            b.unet(x, t, encoder_hidden_states=emb)
        b.unet(x, t, encoder_hidden_states=emb)  # gradients on: never compiled
        x1, t1, e1 = _unet_args(b, n=1)  # a new signature: eager now, compiled later
        with torch.no_grad():
            b.unet(x1, t1, encoder_hidden_states=e1)
        st = path.status()["unet"]
        assert st.eager_calls == before + 3 and st.compiled_calls == 0
        assert path.wait(60) and path.status()["unet"].ready == 2
    finally:
        path.close()


def test_a_failing_compile_falls_back_to_eager_with_one_log_line(caplog):
    b = _tiny()

    def broken(fn, device):
        raise RuntimeError("simulated: no C++ compiler")

    x, t, emb = _unet_args(b)
    with torch.no_grad():
        ref = b.unet(x, t, encoder_hidden_states=emb).sample
    path = FastPath(b, compile_fn=broken)
    try:
        with caplog.at_level(logging.WARNING, logger="engine.fast"):
            with torch.no_grad():
                b.unet(x, t, encoder_hidden_states=emb)
            assert path.wait(60)
            with torch.no_grad():
                out = b.unet(x, t, encoder_hidden_states=emb).sample
                b.unet(x, t, encoder_hidden_states=emb)
            assert path.wait(60)
        lines = [r for r in caplog.records if r.name == "engine.fast"]
        assert len(lines) == 1 and "runs eagerly" in lines[0].getMessage()
        assert "no C++ compiler" in lines[0].getMessage()
        st = path.status()["unet"]
        assert st.failed == 1 and st.ready == 0 and st.compiled_calls == 0
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    finally:
        path.close()


def test_a_compiled_call_that_raises_falls_back_to_eager(caplog):
    b = _tiny()
    rec = Recorder(fail_on=lambda thread: thread != "engine-compile")
    x, t, emb = _unet_args(b)
    with torch.no_grad():
        ref = b.unet(x, t, encoder_hidden_states=emb).sample
    path = FastPath(b, compile_fn=rec)
    try:
        with torch.no_grad():
            b.unet(x, t, encoder_hidden_states=emb)
            assert path.wait(60) and path.ready("unet")
            with caplog.at_level(logging.WARNING, logger="engine.fast"):
                out = b.unet(x, t, encoder_hidden_states=emb).sample
                again = b.unet(x, t, encoder_hidden_states=emb).sample
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        torch.testing.assert_close(again, ref, rtol=0, atol=0)
        assert len([r for r in caplog.records if r.name == "engine.fast"]) == 1
        assert not path.ready("unet") and path.status()["unet"].failed == 1
    finally:
        path.close()


def test_a_lora_change_sends_the_key_back_to_eager_until_rechecked():
    from engine.lora import Lora, state_of

    b = _tiny()
    path = FastPath(b, compile_fn=Recorder())
    try:
        x, t, emb = _unet_args(b)
        with torch.no_grad():
            b.unet(x, t, encoder_hidden_states=emb)
            assert path.wait(60)
            b.unet(x, t, encoder_hidden_states=emb)
            assert path.status()["unet"].compiled_calls == 1
            with path.weights_changing():  # as engine.Engine wraps a LoRA request
                state_of(b).loras = [Lora("style", "/nowhere/style.safetensors", 0.8, "0" * 12)]
            b.unet(x, t, encoder_hidden_states=emb)  # new weights: eager, recheck queued
            st = path.status()["unet"]
            assert st.compiled_calls == 1 and st.eager_calls == 2
            assert path.wait(60)
            b.unet(x, t, encoder_hidden_states=emb)
            assert path.status()["unet"].compiled_calls == 2
    finally:
        path.close()


def test_close_unhooks_and_a_deep_copy_runs_eagerly():
    b = _tiny()
    path = FastPath(b, compile_fn=Recorder())
    twin = copy.deepcopy(b.unet)
    assert "forward" not in twin.__dict__ or twin.forward.__self__ is twin
    path.close()
    assert "forward" not in b.unet.__dict__ and "forward" not in b.vae.decoder.__dict__


def test_switch_from_the_environment(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(fast_mod.ENV_FAST, "0")
    assert not fast_mod.fast_default(cpu)
    monkeypatch.setenv(fast_mod.ENV_FAST, "1")
    assert fast_mod.fast_default(torch.device("mps"))
    monkeypatch.delenv(fast_mod.ENV_FAST)
    assert not fast_mod.fast_default(cpu)  # unset: CUDA only (the CPU gain is small)
    assert not fast_mod.fast_default(torch.device("mps"))
    assert fast_mod.fast_default(torch.device("cuda"))
    monkeypatch.setenv(fast_mod.ENV_COMPILE_CACHE, "/tmp/de-compile-cache")
    assert str(fast_mod.compile_cache_dir()) == "/tmp/de-compile-cache"
    monkeypatch.delenv(fast_mod.ENV_THREADS, raising=False)
    assert fast_mod.cpu_threads() is None  # torch's own choice unless asked
    monkeypatch.setenv(fast_mod.ENV_THREADS, "1")
    assert fast_mod.cpu_threads() == 1


def _sdedit(seed=3):
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return EditRequest("sdedit", prompt="a red house", image=image, steps=6, seed=seed)


def test_first_job_after_a_load_runs_eagerly_without_waiting(monkeypatch):
    from engine import Engine, ModelLoaded

    gate = threading.Event()
    rec = Recorder(gate)
    monkeypatch.setattr(fast_mod, "default_compile", rec)
    eng = Engine(fast=True)
    try:
        assert isinstance(eng.wait(eng.load_model("builtin:tiny", "cpu"), 120), ModelLoaded)
        first = eng.run(_sdedit(), timeout=120)  # the compile is held at the gate meanwhile
        assert isinstance(first, Finished)
        st = eng.fast.status()
        assert st["unet"].eager_calls > 0 and st["unet"].compiled_calls == 0
        assert not gate.is_set() and not eng.fast.ready("unet")
        gate.set()
        assert eng.fast.wait(120)
        second = eng.run(_sdedit(), timeout=120)
        assert eng.fast.status()["unet"].compiled_calls > 0
        assert np.array_equal(first.image, second.image)  # the stand-in computes eagerly
        # no compile on the caller's (GUI) thread, nor on the engine thread
        assert set(rec.made_on) == {"engine-compile"}
    finally:
        gate.set()
        eng.shutdown()


def test_engine_switch_off_has_no_fast_path():
    from engine import Engine, ModelLoaded

    eng = Engine(fast=False)
    try:
        assert isinstance(eng.wait(eng.load_model("builtin:tiny", "cpu"), 120), ModelLoaded)
        assert eng.fast is None and "forward" not in eng.bundle.unet.__dict__
    finally:
        eng.shutdown()


@pytest.mark.parametrize("steps", [4])
def test_bench_fast_runs_on_tiny_with_a_stand_in_compiler(monkeypatch, capsys, steps):
    """The bench's plumbing (no figures are checked: benchmarks are not unit tests)."""
    from engine.cli import main

    monkeypatch.setattr(fast_mod, "default_compile", lambda fn, device: fn)
    args = ["bench", "--fast", "--model", "builtin:tiny", "--repeats", "1", "--steps"]
    args += [str(steps), "--sizes", "64", "--steps-list", "4", "--scale-repeats", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for row in ("| ours-fast |", "| ours-eager |", "| pipeline |", "| pipeline+compile |"):
        assert row in out
    assert "UNet alone" in out and "first job after load" in out
    # the stand-in compiles nothing, so ours-fast computes what ours-eager does
    assert "output ours-fast vs ours-eager: max 0/255" in out


def test_preview_pipe_hands_on_each_preview_once_the_next_step_is_queued(tiny):
    """On CUDA a step's preview copy lands while the next step runs; here the copy is a
    stand-in that records when it was waited for."""
    from engine.algorithms.common import Progress
    from engine.fast import PreviewPipe, render_on_device
    from engine.preview import Previewer

    previewer = Previewer(tiny)
    waited: list[int] = []

    def copy_(rgb):
        k = len(copies)
        copies.append(rgb)
        return rgb.clone(), lambda: waited.append(k)

    copies: list[torch.Tensor] = []
    pipe = PreviewPipe(previewer, copy=copy_)
    g = torch.Generator().manual_seed(0)
    steps = [Progress(i, 3, 900 - i, x0=torch.randn(1, 4, 8, 8, generator=g)) for i in (1, 2, 3)]
    assert pipe.push(steps[0]) == []  # nothing waits for the step just queued
    ready = pipe.push(steps[1])
    assert [p.i for p, _ in ready] == [1] and waited == [0]
    ready += pipe.push(steps[2]) + pipe.drain()
    assert [p.i for p, _ in ready] == [1, 2, 3] and waited == [0, 1, 2]
    for p, image in ready:  # the same picture the synchronous previewer draws
        assert np.array_equal(image, previewer(p.x0))
    assert np.array_equal(render_on_device(previewer, steps[0].x0).numpy(), ready[0][1])


def test_no_compile_starts_while_a_job_runs(monkeypatch):
    import time

    monkeypatch.setattr(fast_mod, "IDLE_BEFORE_COMPILE", 0.05)
    b = _tiny()
    rec = Recorder()
    path = FastPath(b, compile_fn=rec)
    try:
        x, t, emb = _unet_args(b)
        with path.job(), torch.no_grad():
            b.unet(x, t, encoder_hidden_states=emb)  # queues a compile
            time.sleep(0.5)  # ten times the idle wait: it would have started by now
            assert rec.called_on == [] and not path.ready("unet")
        assert path.wait(60) and path.ready("unet")
    finally:
        path.close()


def test_cli_fast_compiles_first_then_runs_compiled(monkeypatch, tmp_path, capsys):
    from engine.cli import main

    rec = Recorder()
    monkeypatch.setattr(fast_mod, "default_compile", rec)
    out = tmp_path / "g.png"
    args = ["generate", "--model", "builtin:tiny", "--fast", "--steps", "3", "-p", "a house"]
    assert main([*args, "-o", str(out)]) == 0
    assert out.exists() and "compiling the fast path" in capsys.readouterr().err
    assert set(rec.made_on) == {"engine-compile"} and len(rec.made_on) == 2  # UNet, decoder
    assert "engine" in rec.called_on  # the job itself ran the compiled graphs
