"""Prompt-to-Prompt: re-edit with the source's attention, so the picture keeps its layout.

Hertz et al. 2022, "Prompt-to-Prompt Image Editing with Cross-Attention Control". A source
branch (source prompt) and a target branch (edited prompt) run in one batched UNet call per
step. While they run, the target branch's attention is taken from the source branch:

- cross-attention, for the first τ_c of the steps (§3.2, eq. 2–4): the source's maps M_t
  through a token map A (M*_t = M_t A): swapped words map one to one (or, when the two words
  have different token counts, each new token takes the mean of the old word's tokens);
  words added by a refinement keep their own maps; re-weighted tokens are scaled (eq. 5);
- self-attention, for the first τ_s of the steps, at maps of ≤ 32×32 positions (the
  authors' null-text editing code injects these; finer maps carry texture, not layout).
  On SDXL at 1024² that is its inner level (32², ten transformer layers per block in the
  base), not its 64² level: SD 1.x's 32² is the same fraction of its image, but written-out
  self-attention at 64² would take gigabytes per layer (4096² probabilities per head and
  row), more than a consumer GPU holds beside SDXL;
- local blend (§3.2 "Local editing"; the authors' code): the cross-attention maps of the
  changed words in both prompts (recorded at maps of ≤ 32×32 positions, or down to half
  the latent side where that is more: SDXL's 64² level at 1024², the same fraction of the
  image as SD 1.x's 32²; cross-attention maps are small), summed over layers and steps at
  a low resolution (here
  relative to the prompt's mean map, see ``_relative``), max-pooled, normalised,
  thresholded and joined; outside that mask the target branch
  follows the source latents: x_tgt ← x_src + m ⊙ (x_tgt − x_src).

Only the conditional half of a guided batch is controlled (as in the authors' code); the
unconditional passes of both branches run unchanged. The source branch replays what made
the image: an inversion (its per-step unconditional embeddings; a direct inversion's
trajectory, onto which the source branch is put back every step, Ju et al. 2024, "PnP
Inversion") or, for a generated image, its own seed and settings.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..attention import hooked, probabilities
from ..denoiser import Denoiser
from ..schedule import prev_timesteps
from .common import Algorithm, Progress, randn

# self-attention is injected, and cross-attention recorded for local blend and heat maps, at
# maps up to this many positions (cross-attention also finer on large latents:
# AttentionControl.record_max_queries)
SELF_MAX_QUERIES = 32 * 32


@dataclass(frozen=True)
class TokenMap:
    """How the target prompt's tokens read the source prompt's attention columns.

    ``mapper[k, j]``: weight of source column k in target column j (both over the encoder's
    sequence, BOS at 0); ``own[j]``: 1 where the target token has no source counterpart
    (it keeps its own map); ``changed_source`` / ``changed_target``: positions of the words
    that differ (the default blend words)."""

    mapper: torch.Tensor  # K x K
    own: torch.Tensor  # K
    changed_source: tuple[int, ...]
    changed_target: tuple[int, ...]


def token_positions(n: int, window: int) -> list[int]:
    """Where ``n`` prompt tokens sit in the encoder's sequence: windows of ``window`` tokens,
    each wrapped in BOS ... EOS and padded to ``window + 2`` (see ``Denoiser.encode_text``)."""
    return [(k // window) * (window + 2) + 1 + k % window for k in range(n)]


def align_tokens(source: list[int], target: list[int], window: int, windows: int = 1) -> TokenMap:
    """Token map for two prompts' token ids (without BOS/EOS) in an encoder of ``windows``
    windows of ``window`` tokens: equal runs map one to one, a replaced run of the same
    length one to one (word swap), of a different length by averaging (each new token reads
    the mean of the old run's columns), inserted tokens keep their own maps (refinement),
    deleted ones drop out. Each window's BOS maps to the source window's BOS; its EOS and
    padding to the source window's, counted from the EOS. The alignment is difflib's longest
    matching blocks, which for a prompt and its edit is the global alignment of the paper's
    code."""
    size = windows * (window + 2)
    if max(len(source), len(target)) > windows * window:
        raise ValueError("a prompt is longer than the encoder's windows")
    ps, pt = token_positions(len(source), window), token_positions(len(target), window)
    mapper = torch.zeros(size, size)
    own = torch.zeros(size)
    changed_s: list[int] = []
    changed_t: list[int] = []
    ops = difflib.SequenceMatcher(a=source, b=target, autojunk=False).get_opcodes()
    for op, i1, i2, j1, j2 in ops:
        src, tgt = ps[i1:i2], pt[j1:j2]
        if op == "equal" or (op == "replace" and len(src) == len(tgt)):
            for s, t in zip(src, tgt, strict=True):
                mapper[s, t] = 1.0
        elif op == "replace":
            for t in tgt:
                mapper[src, t] = 1.0 / len(src)
        elif op == "insert":
            own[tgt] = 1.0
        if op != "equal":
            changed_s += src
            changed_t += tgt
    taken = set(pt)
    for w in range(windows):  # BOS, EOS and padding of every window
        ns = min(window, max(0, len(source) - w * window))
        nt = min(window, max(0, len(target) - w * window))
        base = w * (window + 2)
        for o in range(window + 2):
            if base + o in taken:
                continue
            o_src = 0 if o == 0 else min(window + 1, max(1, o - nt + ns))
            mapper[base + o_src, base + o] = 1.0
    return TokenMap(mapper, own, tuple(changed_s), tuple(changed_t))


@dataclass
class AttentionControl:
    """The Prompt-to-Prompt attention hook (see the module docstring) and its record.

    ``steps``: steps this run takes; ``cross_until`` / ``self_until``: τ_c and τ_s as
    fractions of them; ``weights``: per target position (K), scaling its cross-attention
    column while cross-attention is controlled (1 everywhere: no re-weighting); ``blend``:
    (source positions, target positions) whose maps make the local-blend mask, None: off.
    ``maps`` holds per branch and token the cross-attention summed over layers and steps at
    ``blend_side`` (2 x K x side x side, float32): all that is kept of the attention."""

    tokens: TokenMap
    steps: int
    cross_until: float = 0.8
    self_until: float = 0.4
    weights: torch.Tensor | None = None
    blend: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    threshold: float = 0.5
    blend_from: float = 0.2  # the authors' code starts blending after 20 % of the steps
    latent_hw: tuple[int, int] = (64, 64)
    prompt_end: int = 77  # positions up to the target's EOS (BOS and words), for the mean
    step: int = 0
    rows: int = 2  # the hook computes the conditional rows: source, target (or target alone)
    _sums: dict = field(default_factory=dict, repr=False)  # (h, w) → 2 x K x h x w
    _maps: torch.Tensor | None = field(default=None, repr=False)
    _on: dict = field(default_factory=dict, repr=False)  # (device, dtype) → _factors

    @property
    def blend_side(self) -> tuple[int, int]:
        """The blend resolution: a quarter of the latent side (16 for SD at 512², as in the
        paper), at least 8 so that small models still get a usable map."""
        h, w = self.latent_hw
        f = max(1, min(h, w) // max(8, min(h, w) // 4))
        return max(1, h // f), max(1, w // f)

    def _cross_now(self) -> bool:
        return self.step < self.cross_until * self.steps

    def _self_now(self) -> bool:
        return self.step < self.self_until * self.steps

    def reads_source(self) -> bool:
        """Whether this step needs the source branch's attention: while it is injected, and
        on every step while the local blend (both branches' maps, summed over the steps)
        decides where the edit goes."""
        return self._cross_now() or self._self_now() or self.blend is not None

    @property
    def record_max_queries(self) -> int:
        """The finest cross-attention maps recorded for local blend and heat maps: 32×32
        positions, or half the latent side where that is more (module docstring)."""
        h, w = self.latent_hw
        return max(SELF_MAX_QUERIES, (h // 2) * (w // 2))

    def wants(self, name: str, cross: bool, queries: int) -> bool:
        if cross:
            return self._cross_now() or queries <= self.record_max_queries
        return self._self_now() and queries <= SELF_MAX_QUERIES

    def attend(self, query, key, value, scale, mask, name: str, cross: bool) -> torch.Tensor:
        """Rows (cond source, cond target) of one layer → their attention output (with
        ``rows`` 1, the target alone: nothing is injected any more, its maps are recorded). The
        target's controlled probabilities are never written out: with A the token map and
        w the weights, (P_src A + P_tgt·own)·w times V equals P_src (A w V) + P_tgt (own w V),
        and the right-hand factors are prompt-sized (K x channels)."""
        if not cross:  # injected self-attention: both rows read the source's map
            p = probabilities(query[:1], key[:1], scale, None if mask is None else mask[:1])
            return p.to(value.dtype) @ value
        p = probabilities(query, key, scale, mask)
        if query.shape[2] <= self.record_max_queries:
            self._record(p)
        p = p.to(value.dtype)
        if not self._cross_now():
            return p @ value
        mapper, own_w, w = self._factors(value)
        v_src, v_tgt = value[0], value[1]
        read = mapper @ (w * v_tgt)  # heads x K x channels
        out = p[0] @ torch.stack([v_src, read])  # 2 x heads x Q x channels
        if own_w is not None:
            out[1] += p[1] @ (own_w * v_tgt)
        return out

    def _factors(self, like: torch.Tensor):
        """The token map, own·w (None when no token keeps its own map) and w as K x 1
        columns, on ``like``'s device and dtype: copied there once per job, not once per
        layer and step (on a GPU each copy from the host would be a wait)."""
        key = (like.device, like.dtype)
        if key not in self._on:
            k = self.tokens.own.shape[0]
            w = (self.weights if self.weights is not None else torch.ones(k))[:, None]
            own = self.tokens.own[:, None] * w if self.tokens.own.any() else None
            self._on[key] = tuple(
                None if t is None else t.to(like) for t in (self.tokens.mapper, own, w)
            )
        return self._on[key]

    def _record(self, probs: torch.Tensor) -> None:
        """Add this layer's head-averaged maps (both rows) to the record of its size."""
        h, w = self.latent_hw
        q = probs.shape[2]
        f = math.sqrt(h * w / q)
        lh, lw = round(h / f), round(w / f)
        maps = probs.mean(1).transpose(1, 2).reshape(len(probs), -1, lh, lw)  # rows x K x ..
        size = (lh, lw)
        if size not in self._sums:
            self._sums[size] = maps.new_zeros(2, *maps.shape[1:])
        self._sums[size][2 - len(maps) :] += maps  # the target alone: the source's stays
        self._maps = None

    @property
    def maps(self) -> torch.Tensor | None:
        """The record at the blend side: every size's sum resized there and added (resizing
        is linear, so this is the sum over layers of each layer's resized maps)."""
        if self._maps is None and self._sums:
            self._maps = sum(
                F.interpolate(m, size=self.blend_side, mode="bilinear", align_corners=False)
                for m in self._sums.values()
            )
        return self._maps

    def blend_mask(self) -> torch.Tensor | None:
        """The local-blend mask at latent size (1 x 1 x h x w, 0/1), or None when blending
        is off or has not started. Empty blend words give an all-zero mask (the source)."""
        if self.blend is None or self.maps is None or self.step < self.blend_from * self.steps:
            return None
        masks = []
        for branch, positions in enumerate(self.blend):
            if not positions:
                continue
            m = self._relative(branch, positions)[None, None]
            m = F.max_pool2d(m, 3, stride=1, padding=1)
            m = F.interpolate(m, size=self.latent_hw, mode="nearest")
            m = (m - m.amin()) / (m.amax() - m.amin()).clamp_min(1e-12)
            masks.append(m > self.threshold)
        if not masks:
            return torch.zeros(1, 1, *self.latent_hw)
        return torch.stack(masks).any(0).float()

    def _relative(self, branch: int, positions: tuple[int, ...]) -> torch.Tensor:
        """The words' attention over the image relative to the prompt's mean attention.
        The paper thresholds the words' own map; on the demo model every token's map
        shares a large common part (a word's map lies within 0.6–1.0 of its maximum
        everywhere on calibration scene 600,000), which the ratio removes; on a model with
        peaked maps the mean map is flat and the ratio changes little."""
        maps = self.maps[branch]
        return maps[list(positions)].sum(0) / maps[: self.prompt_end].mean(0).clamp_min(1e-12)

    def heat_maps(self, branch: int = 1) -> torch.Tensor | None:
        """Per token of the target (``branch`` 1) or the source (0), its cross-attention
        over the image (K x side x side, each normalised to [0, 1]), summed over layers and
        steps; for showing a word's map."""
        if self.maps is None:
            return None
        m = self.maps[branch]
        return m / m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]


def prompt_to_prompt(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps: list[int],
    source: torch.Tensor,
    target: torch.Tensor,
    guidance: float,
    nulls: list[torch.Tensor | None],
    control: AttentionControl,
    anchor: list[torch.Tensor] | None = None,
    correct: bool = False,
    mask: torch.Tensor | None = None,
    intersect: bool = False,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    label: str = "re-edit",
    show_mask: bool = False,
) -> Algorithm[torch.Tensor]:
    """Both branches from ``x`` down ``timesteps`` (DDIM, Song et al. 2021 eq. 12) with the
    source embedding ``source`` and the target one ``target``, per-step unconditional
    embeddings ``nulls``, under ``control``; returns the target latents.

    The source branch: without ``anchor`` it is generated beside the target (a generated
    image replayed from its seed; ``eta`` > 0 replays a stochastic generation, both branches
    drawing the same noise as ``ddim_sample`` draws it). With ``anchor`` (an inverted
    trajectory, ``anchor[i]`` at ``timesteps[i]``) the source branch *is* the trajectory:
    only its conditional pass runs, for its attention (3 rows per call instead of 4; 2,
    a plain re-edit's, once no attention is read from it: after τ_c and τ_s, unless the
    attention blend is forming, so its maps cover only the steps it ran), since
    an inversion made to be regenerated (null-text, negative-prompt) follows it, and a plain
    DDIM one drifts off it under guidance, which is the drift that spoils DDIM + P2P in
    PIE-Bench. With ``correct`` (direct inversion, Ju et al. 2024, Alg. 1) the source branch
    is also stepped, guided, and the target gets the step's difference added to the
    trajectory: x_tgt ← z*_{t−1} + (step_tgt − step_src). ``mask`` (latent size, 1 = edit; a
    painted mask) replaces the local-blend mask, or with ``intersect`` is multiplied with it
    once blending has started. Yields the target's x̂₀ (the source's where
    the blend keeps it) and the blend mask as it forms; with ``show_mask`` the given
    ``mask`` too (one found for the user, such as DiffEdit's, is news; a painted one is not)."""
    sched = denoiser.schedule
    n = len(timesteps)
    control.steps, control.latent_hw = n, tuple(x.shape[-2:])
    x_src = x_tgt = x
    with hooked(denoiser.bundle.unet, control):
        for i, (t, t_prev) in enumerate(zip(timesteps, prev_timesteps(timesteps))):
            control.step = i
            null = nulls[i] if guidance != 1.0 else None
            if anchor is not None:
                x_src = anchor[i]
            # 1. both branches in one call; the hook edits the target's attention (last row)
            if anchor is not None and not correct:
                # once no attention is read from it, the source row is left out: the step's
                # source is the trajectory, and its x̂₀ is shown as the picture it ends at
                both = control.reads_source()
                control.rows = 2 if both else 1
                rows, embs = ([x_src, x_tgt], [source, target]) if both else ([x_tgt], [target])
                if null is not None:
                    rows, embs = [x_tgt, *rows], [null, *embs]
                out = denoiser.outputs(torch.cat(rows), t, torch.cat(embs).to(source.dtype))
                o_t = out[-1:] if null is None else denoiser.guide(out[:1], out[-1:], guidance)
                eps, x0 = sched.eps_x0(o_t, x_tgt, t)
                if both:
                    e_src, x0_src = sched.eps_x0(out[-2:-1], x_src, t)
                else:
                    e_src, x0_src = eps, anchor[-1]  # the source's step is not taken below
                eps, x0 = torch.cat([e_src, eps]), torch.cat([x0_src, x0])
                z = None
            else:
                control.rows = 2
                emb = torch.cat([source, target.to(source.dtype)])
                p = denoiser.predict(torch.cat([x_src, x_tgt]), t, emb, guidance, null)
                eps, x0 = p.eps, p.x0
                z = randn(x.shape, generator, x.device, x.dtype) if eta > 0 else None
                z = None if z is None else torch.cat([z, z])
            # 2. the DDIM step; an anchored source goes back onto its trajectory
            step = sched.ddim_step(x0, eps, t, t_prev, eta if z is not None else 0.0, z)
            s_next, t_next = step[:1], step[1:]
            if anchor is not None:
                if correct:
                    t_next = anchor[i + 1] + (t_next - s_next)
                s_next = anchor[i + 1]
            # 3. local blend (or the painted mask): outside it, follow the source
            m = control.blend_mask() if mask is None or intersect else None
            if mask is not None:
                m = mask if m is None else mask * m.to(mask)
            if m is not None:
                m = m.to(t_next)
                t_next = s_next + m * (t_next - s_next)
            x_src, x_tgt = s_next, t_next
            shown = x0[1:] if m is None else x0[:1] + m * (x0[1:] - x0[:1])
            formed = m if mask is None or intersect or show_mask else None
            yield Progress(i + 1, n, t, x0=shown, label=label, mask=formed)
    return x_tgt
