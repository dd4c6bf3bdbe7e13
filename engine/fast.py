"""The fast path: the UNet and the VAE decoder run as graphs compiled by ``torch.compile``,
switched in behind the model's back, with the compile's cost kept away from the user.

- **In place.** ``FastPath(bundle)`` hooks the bundle's UNet and VAE decoder through an
  instance ``forward``: the Denoiser, the algorithms, LoRA fusing and ``bundle.unet.config``
  see the same module objects as before and never learn which path ran.
- **Never waiting.** Every call is keyed by its signature (shapes, strides, dtypes, devices,
  the other arguments, grad mode, the fused LoRAs). A key whose graph is ready runs compiled;
  any other key runs eagerly at once and is queued for the one background compile thread
  (lowered priority; a compile starts only when no job has run for ``IDLE_BEFORE_COMPILE``,
  see ``FastPath.job``). The first job after a load, and the first job at a new image size,
  run eagerly; the next ones run compiled.
- **Static shapes, whole graphs** (``dynamic=False, fullgraph=True``): a graph per working
  size and batch. A compile that fails, or a compiled call that raises, sends that key back
  to eager for the session, with one log line. A compiled call never runs beside a compile
  (dynamo's stance is process-wide): while one compiles, ready keys run eagerly too.
- **Eager where compiling cannot help**: calls with gradients on (null-text inversion's
  optimisation), calls while attention processors other than the model's own are installed
  (Prompt-to-Prompt's controller), keys beyond ``MAX_GRAPHS`` per module.
- **LoRAs.** The fused LoRAs (``engine.lora.lora_list``) are part of the key, so after a
  change a key runs eagerly until the background thread has checked (and, if needed,
  recompiled) its graph against the new weights. Graphs read the weights as inputs (no
  ``freezing``), so the new weights are what they compute with. Wrap the change itself in
  ``weights_changing()`` so no compile traces a model half-way through a fuse.
- **Kept across runs**: PyTorch's compile caches (inductor's FX graph cache, AOTAutograd's,
  Triton's) live under ``compile_cache_dir()``; a later session compiling the same graph is a
  cache hit (seconds instead of minutes on a CPU).
- **CUDA**: ``mode="reduce-overhead"`` (CUDA graphs) unless ``DIFFUSION_EDITOR_CUDA_GRAPHS=0``;
  outputs are cloned, since a CUDA graph's output buffer is overwritten by its next replay.
  ``PreviewPipe`` takes the per-step preview's host copy off the critical path.

Switches: ``DIFFUSION_EDITOR_FAST`` (``0`` off, ``1`` on; unset: on where it pays, see
``fast_default``), ``DIFFUSION_EDITOR_COMPILE_CACHE`` (the cache folder),
``DIFFUSION_EDITOR_CUDA_GRAPHS=0`` (compile without CUDA graphs), ``DIFFUSION_EDITOR_THREADS``
(torch's CPU threads, set when the path starts; unset: torch's choice).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

ENV_FAST = "DIFFUSION_EDITOR_FAST"
ENV_COMPILE_CACHE = "DIFFUSION_EDITOR_COMPILE_CACHE"
ENV_CUDA_GRAPHS = "DIFFUSION_EDITOR_CUDA_GRAPHS"
ENV_THREADS = "DIFFUSION_EDITOR_THREADS"
# a compile starts only after the engine has been this long without a job: on 2 cores a
# compile beside a job slowed the job many times over (the GIL and the cores are shared)
IDLE_BEFORE_COMPILE = 1.0  # s
MAX_GRAPHS = 8  # compiled signatures per module; further ones stay eager (memory, CPU time)
EXIT_WAIT = 10.0  # s the interpreter's exit waits for a compile in flight
_OFF = ("0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")


def env_switch(name: str, default: bool) -> bool:
    """An on/off environment variable of the project: ``0``/``off``/``false``/``no`` or
    ``1``/``on``/``true``/``yes``; unset or anything else is ``default``."""
    env = os.environ.get(name, "").strip().lower()
    return False if env in _OFF else True if env in _ON else default


def fast_default(device: torch.device) -> bool:
    """Whether the fast path is on when nobody said: ``DIFFUSION_EDITOR_FAST`` if set, else on
    for CUDA only. On the CPU a batch job took 0.87–0.95× (one machine) or 0.57–0.65× (another)
    the pipeline's time with the demo model, but while the graphs compiled in live mode the
    GUI stalled 34–122 ms, and live updates at the editor were no faster (README, Measured):
    opt in there. MPS:
    inductor's MPS backend is too young to switch on unmeasured."""
    return env_switch(ENV_FAST, device.type == "cuda")


def cpu_threads() -> int | None:
    """torch's CPU threads for the engine's fast path: ``DIFFUSION_EDITOR_THREADS`` if set,
    else None (torch's own choice). Not chosen for the user: on the shared 2-core machine one
    thread beat two while other work ran and lost to two when it was quiet (README,
    Measured), so the right count depends on the machine's load."""
    env = os.environ.get(ENV_THREADS, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("%s=%r is not a number of threads; ignored.", ENV_THREADS, env)
    return None


def compile_cache_dir() -> Path:
    """``$DIFFUSION_EDITOR_COMPILE_CACHE``, else ``torch-compile`` in the app's cache folder."""
    if os.environ.get(ENV_COMPILE_CACHE):
        return Path(os.environ[ENV_COMPILE_CACHE]).expanduser()
    from .preview import cache_dir

    return cache_dir() / "torch-compile"


def use_compile_cache() -> Path:
    """Point PyTorch's compile caches (inductor, Triton) at ``compile_cache_dir()`` unless the
    user already chose a folder for them; returns the folder in use."""
    folder = compile_cache_dir()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def default_compile(fn: Callable, device: torch.device) -> Callable:
    """``torch.compile`` as the fast path uses it: static shapes, one whole graph; CUDA graphs
    on CUDA. (On the 2-core CPU, inductor's ``freezing`` measured slower: not used.)"""
    cuda_graphs = env_switch(ENV_CUDA_GRAPHS, True)
    mode = "reduce-overhead" if device.type == "cuda" and cuda_graphs else None
    return torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)


# ---- call signatures --------------------------------------------------------------------


def _sig(v: Any) -> Any:
    """What a compiled graph is specialised on, for one argument."""
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape), v.stride(), v.dtype, str(v.device), v.requires_grad)
    if isinstance(v, dict):
        return ("dict", tuple(sorted((k, _sig(x)) for k, x in v.items())))
    if isinstance(v, list | tuple):
        return (type(v).__name__, tuple(_sig(x) for x in v))
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return ("object", type(v).__qualname__, id(v))


def _example(v: Any) -> Any:
    """A private copy of a call's arguments for the background compile."""
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, dict):
        return {k: _example(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return type(v)(_example(x) for x in v)
    return v


def _wants_grad(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return v.requires_grad
    if isinstance(v, dict):
        return any(_wants_grad(x) for x in v.values())
    if isinstance(v, list | tuple):
        return any(_wants_grad(x) for x in v)
    return False


def _clone_outputs(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.clone()
    if isinstance(v, tuple) and not hasattr(v, "_fields"):
        return tuple(_clone_outputs(x) for x in v)
    if hasattr(v, "to_tuple"):  # a diffusers BaseOutput
        for k in list(v.keys()):
            v[k] = _clone_outputs(v[k])
    return v


# ---- one hooked module --------------------------------------------------------------------


@dataclass
class _Job:
    hook: _Hook
    key: tuple
    args: tuple
    kwargs: dict
    epoch: int
    modes: tuple[bool, bool] = (False, False)  # (grad enabled, inference mode)


@dataclass
class ModuleStatus:
    ready: int = 0
    queued: int = 0
    failed: int = 0
    compiled_calls: int = 0
    eager_calls: int = 0
    compile_seconds: list[float] = field(default_factory=list)


class _Hook:
    """Routes one module's calls to a compiled graph for the call's signature once that graph
    is ready, else to the module's own eager forward (and queues the signature's compile)."""

    def __init__(self, path: FastPath, module: torch.nn.Module, name: str):
        self.path, self.module, self.name = path, module, name
        self.eager = module.forward
        self.ready: set[tuple] = set()
        self.queued: set[tuple] = set()
        self.failed: set[tuple] = set()
        self.status = ModuleStatus()
        self._compiled: Callable | None = None
        # attention processors as loaded: any other set (attention control) runs eagerly
        self._attention = [m for m in module.modules() if hasattr(m, "processor")]
        self._stock = self._processors()
        module.forward = self  # an instance attribute: nn.Module.__call__ calls this

    def _processors(self) -> tuple[int, ...]:
        return tuple(id(m.processor) for m in self._attention)

    def remove(self) -> None:
        if self.module.__dict__.get("forward") is self:
            del self.module.forward

    def __deepcopy__(self, memo):
        # a deep copy of the module (bench's SDXL pipeline copies the VAE) runs eagerly
        copy = memo.get(id(self.module))
        return type(copy).forward.__get__(copy) if copy is not None else self.eager

    def key(self, args: tuple, kwargs: dict) -> tuple:
        return (
            _sig(args),
            _sig(kwargs),
            torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(),
            self.path.weights_version(),
        )

    def __call__(self, *args, **kwargs):
        path = self.path
        if not path.enabled or torch.is_grad_enabled() or _wants_grad((args, kwargs)):
            return self._eager(args, kwargs)
        if self._processors() != self._stock:
            return self._eager(args, kwargs)
        key = self.key(args, kwargs)
        if key in self.ready and path.lock.acquire(blocking=False):
            try:
                # a guard that fails would recompile here, on the caller's thread: refuse
                with torch.compiler.set_stance("fail_on_recompile"):
                    out = self._compiled_fn()(*args, **kwargs)
                self.status.compiled_calls += 1
                return _clone_outputs(out) if path.clone_outputs else out
            except torch.OutOfMemoryError:
                raise
            except Exception as e:
                self._fail(key, f"a compiled call failed ({_short(e)})")
            finally:
                path.lock.release()
        elif key not in self.ready:
            self._queue(key, args, kwargs)
        return self._eager(args, kwargs)

    def _eager(self, args, kwargs):
        self.status.eager_calls += 1
        return self.eager(*args, **kwargs)

    def _compiled_fn(self) -> Callable:
        if self._compiled is None:
            impl, module = type(self.module).forward, self.module

            def forward(*args, **kwargs):
                return impl(module, *args, **kwargs)

            # dynamo keeps its graphs, and its recompile limit, per code object: one per module
            forward.__code__ = forward.__code__.replace()
            forward.__qualname__ = forward.__name__ = f"fast_{self.name}"
            self._compiled = self.path.compile_fn(forward, self.path.device)
        return self._compiled

    def _queue(self, key, args, kwargs) -> None:
        if key in self.queued or key in self.failed or len(self.ready) >= MAX_GRAPHS:
            return
        self.queued.add(key)
        self.status.queued += 1
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        job = _Job(self, key, _example(args), _example(kwargs), self.path.epoch, modes)
        self.path._submit(job)

    def _fail(self, key, why: str) -> None:
        self.ready.discard(key)
        if key not in self.failed:
            self.failed.add(key)
            self.status.failed += 1
            log.warning("Fast path: %s %s; it runs eagerly (%s).", self.name, _shape(key), why)

    def compile_now(self, job: _Job) -> None:
        """On the compile thread: compile (or fetch from PyTorch's caches) and warm up."""
        t0 = time.perf_counter()
        grad, inference = job.modes
        # (inference_mode(False) would switch gradients on: enter it only when it was on)
        modes = torch.inference_mode() if inference else contextlib.nullcontext()
        with self.path.lock, modes, torch.set_grad_enabled(grad):
            self._compiled_fn()(*job.args, **job.kwargs)
            if self.path.device.type == "cuda":
                torch.cuda.synchronize(self.path.device)
        self.status.compile_seconds.append(time.perf_counter() - t0)


def _shape(key: tuple) -> str:
    """The first tensor's shape in a key, for log lines."""
    args = key[0][1] if key and isinstance(key[0], tuple) else ()
    for a in args:
        if isinstance(a, tuple) and a and a[0] == "tensor":
            return "x".join(str(d) for d in a[1])
    return ""


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "…"


# ---- the path: hooks, the compile thread, switches ------------------------------------------


class FastPath:
    """The fast path of one loaded bundle. ``compile_fn(fn, device)`` makes the compiled
    callable (``default_compile``; tests pass their own). Create it on the engine thread
    after a load; ``warm_up()`` queues the native size's graphs and returns at once."""

    def __init__(self, bundle, compile_fn: Callable | None = None, clone_outputs=None):
        use_compile_cache()
        self.bundle = bundle
        self.device = bundle.device
        self.compile_fn = compile_fn or default_compile
        self.clone_outputs = self.device.type == "cuda" if clone_outputs is None else clone_outputs
        self.enabled = True
        # on a CPU, the threads the graphs are compiled for and run with (process-wide)
        self.threads = cpu_threads() if self.device.type == "cpu" else None
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.lock = threading.Lock()  # held by a compile, and by each compiled call
        self.epoch = 0  # bumped around weight changes: a compile across one is redone
        self._changing = 0
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._jobs = 0  # jobs running now (``job()``)
        self._idle_since = time.monotonic()
        self.hooks = {"unet": _Hook(self, bundle.unet, "unet")}
        if getattr(bundle.vae, "decoder", None) is not None:
            self.hooks["vae_decoder"] = _Hook(self, bundle.vae.decoder, "vae_decoder")
        self._thread = threading.Thread(target=self._work, name="engine-compile", daemon=True)
        self._thread.start()
        _PATHS.add(self)

    # ---- switches (any thread) --------------------------------------------------------

    def weights_version(self) -> tuple:
        from .lora import lora_list

        return lora_list(self.bundle)

    @contextlib.contextmanager
    def paused(self):
        """Eager calls only inside (the bench's plain pipeline, a comparison)."""
        before, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = before

    @contextlib.contextmanager
    def weights_changing(self):
        """Around a change of the weights (a LoRA fuse): eager calls inside, and a compile
        that overlaps the change is thrown away and queued again."""
        self.epoch += 1
        self._changing += 1
        try:
            with self.paused():
                yield
        finally:
            self._changing -= 1
            self.epoch += 1

    @contextlib.contextmanager
    def job(self):
        """Around a job on the engine thread: no compile starts while one runs (one that
        started before runs on; a compile cannot be paused)."""
        self._jobs += 1
        try:
            yield
        finally:
            self._jobs -= 1
            self._idle_since = time.monotonic()

    def close(self) -> None:
        """Unhook the modules (they run eagerly from now on) and stop the compile thread
        after the compile in flight, if any."""
        self._closed = True
        for hook in self.hooks.values():
            hook.remove()
        self._queue.put(None)
        self._idle.set()  # what is still queued will not be compiled: nothing to wait for

    # ---- what is compiled -------------------------------------------------------------

    def warm_up(self, size: int | None = None, batches=(2, 1)) -> None:
        """Queue the graphs a job at ``size`` px (default: native) uses, in the order they
        pay: the UNet at the first batch size (2: classifier-free guidance), the decoder at
        batch 1, then the UNet at the other batch sizes (1: guidance off, DDIM inversion).
        SD-family signatures only (as ``engine.denoiser`` calls the UNet); SDXL compiles
        on first use."""
        from . import sdxl

        b = self.bundle
        side = (size or b.native_size) // b.vae_factor
        unet = "unet" in self.hooks and not sdxl.is_sdxl(b)
        for k, n in enumerate(batches if unet else ()):
            width = int(b.unet.config.cross_attention_dim)
            length = int(getattr(b.tokenizer, "model_max_length", 77))
            x = torch.zeros(n, b.latent_channels, side, side, device=self.device, dtype=b.dtype)
            t = torch.full((n,), 500, device=self.device, dtype=torch.long)
            emb = torch.zeros(n, length, width, device=self.device, dtype=b.dtype)
            self._queue_for("unet", (x, t), {"encoder_hidden_states": emb})
            if k == 0:
                self._queue_decoder(side)
        if not unet:
            self._queue_decoder(side)

    def _queue_decoder(self, side: int) -> None:
        if "vae_decoder" in self.hooks:
            b = self.bundle
            ch = int(b.vae.config.latent_channels)
            z = torch.zeros(1, ch, side, side, device=self.device, dtype=b.vae.dtype)
            post = getattr(b.vae, "post_quant_conv", None)
            if post is not None:  # the decoder's input as decode hands it over, layout too
                with torch.no_grad():
                    z = post(z)
            self._queue_for("vae_decoder", (z,), {})

    def _queue_for(self, name: str, args: tuple, kwargs: dict) -> None:
        hook = self.hooks[name]
        with torch.no_grad():
            hook._queue(hook.key(args, kwargs), args, kwargs)

    def status(self) -> dict[str, ModuleStatus]:
        for h in self.hooks.values():
            h.status.ready = len(h.ready)
        return {name: h.status for name, h in self.hooks.items()}

    def ready(self, name: str = "unet") -> bool:
        return bool(self.hooks[name].ready) if name in self.hooks else False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued compile is done (tests, bench, ``--fast`` in the CLI;
        never the engine thread). True if it finished in time."""
        return self._idle.wait(timeout)

    # ---- the compile thread -----------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        if self._closed:
            return
        with self._pending_lock:
            self._pending += 1
            self._idle.clear()
        self._queue.put(job)

    def _done(self) -> None:
        with self._pending_lock:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    def _work(self) -> None:
        _lower_priority()
        while True:
            job = self._queue.get()
            if job is None or self._closed:
                if job is not None:
                    self._done()
                return
            try:
                self._compile(job)
            finally:
                self._done()

    def _compile(self, job: _Job) -> None:
        hook = job.hook
        # not while a LoRA is being fused, nor beside a job
        while not self._closed and (
            self._changing
            or self._jobs
            or time.monotonic() - self._idle_since < IDLE_BEFORE_COMPILE
        ):
            time.sleep(0.05)
        if self._closed:
            hook.queued.discard(job.key)
            return
        # here, once idle, not on the engine thread: importing dynamo takes seconds. Every
        # (module, signature) is one dynamo cache entry of that module's code object.
        import torch._dynamo

        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, MAX_GRAPHS)
        epoch = self.epoch
        try:
            hook.compile_now(job)
        except torch.OutOfMemoryError:
            hook.queued.discard(job.key)
            hook._fail(job.key, "out of memory while compiling")
            return
        except Exception as e:
            if self.epoch != epoch or self._closed:
                hook.queued.discard(job.key)  # the weights changed under it: try again later
                return
            hook.queued.discard(job.key)
            hook._fail(job.key, f"compiling failed: {_short(e)}")
            return
        hook.queued.discard(job.key)
        if self.epoch != epoch:
            return  # compiled against weights that changed meanwhile: the next miss requeues
        hook.ready.add(job.key)
        log.info(
            "Fast path: %s %s compiled in %.1f s.",
            hook.name,
            _shape(job.key),
            hook.status.compile_seconds[-1],
        )


# ---- previews without a host–device sync per step ---------------------------------------


class PreviewPipe:
    """x̂₀ previews that do not stall the GPU (CUDA).

    Rendering a step's preview to a numpy array waits for that step's GPU work before the
    next step is even queued, so the GPU idles while the host renders and launches. Here a
    preview is rendered on the device and copied to pinned host memory without blocking,
    behind an event; it is handed on once the next step has been queued (the GPU is busy
    with it meanwhile), or at ``drain()``. Previews come out in step order, each one step
    later in the host's program but no later in time than the GPU finishes its step.
    ``copy(rgb) -> (host array, ready_fn)`` is the device-to-host copy (tests pass their own).
    """

    def __init__(self, previewer, copy: Callable | None = None):
        self.previewer = previewer
        self.copy = copy or _copy_to_pinned
        self.pending: list[tuple[Any, Any, Callable[[], None]]] = []

    def push(self, progress) -> list[tuple[Any, Any]]:
        """Queue ``progress``'s preview; returns the (progress, image) pairs now ready."""
        done = self.drain()  # the step before: its copy landed as this step ran
        rgb = render_on_device(self.previewer, progress.x0)
        host, wait = self.copy(rgb)
        self.pending.append((progress, host, wait))
        return done

    def drain(self) -> list[tuple[Any, Any]]:
        """Every queued preview, waiting for their copies (at a job's end, before another
        event, or for a preview that cannot wait)."""
        out = []
        for progress, host, wait in self.pending:
            wait()
            out.append((progress, host.numpy() if isinstance(host, torch.Tensor) else host))
        self.pending = []
        return out


def render_on_device(previewer, x0: torch.Tensor) -> torch.Tensor:
    """``engine.preview.Previewer``'s picture (uint8 HxWx3) left on the latents' device."""
    import torch.nn.functional as F

    lat = x0[:1].float()
    w, b = previewer.weight.to(lat.device), previewer.bias.to(lat.device)
    rgb = torch.einsum("nchw,cd->ndhw", lat, w) + b[None, :, None, None]
    size = (lat.shape[-2] * previewer.factor, lat.shape[-1] * previewer.factor)
    rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
    return ((rgb[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)


def _copy_to_pinned(rgb: torch.Tensor):
    host = torch.empty(rgb.shape, dtype=rgb.dtype, pin_memory=True)
    host.copy_(rgb, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event.synchronize


def _lower_priority() -> None:
    """Let eager work have the cores first: nice this thread (Linux: per thread; the
    compiler processes it starts inherit it)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


_PATHS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    # a compile thread still inside torch at interpreter exit can abort the process
    # (engine.engine explains); stop taking work and give the one in flight a moment
    for path in list(_PATHS):
        path.close()
    for path in list(_PATHS):
        path._thread.join(EXIT_WAIT)
