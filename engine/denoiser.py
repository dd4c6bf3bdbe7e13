"""The denoiser: UNet + text conditioning + classifier-free guidance → (ε̂, x̂₀).

Algorithms see only this object: they never touch the UNet, the tokenizer or the device.
Nor do they learn the model family: an SDXL embedding carries its pooled text vector and
aesthetic score as two extra rows (``engine.sdxl``), unpacked only in ``model_output``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import sdxl
from .errors import InputError
from .models import ModelBundle
from .prompts import plain_text, token_weights


@dataclass(frozen=True)
class Conditioning:
    """Text embeddings for one job. ``uncond`` is None when guidance is off."""

    cond: torch.Tensor  # 1 x L x D (SDXL: 1 x (L + 2) x D, see engine.sdxl)
    uncond: torch.Tensor | None = None


@dataclass(frozen=True)
class Prediction:
    eps: torch.Tensor
    x0: torch.Tensor


@dataclass(frozen=True)
class InpaintInputs:
    """What an inpainting UNet reads beside the latents (SD's inpainting recipe): the mask
    (1x1xhxw, 1 = generate) and the latents of the image with that region zeroed (1xCxhxw)."""

    mask: torch.Tensor
    masked_latents: torch.Tensor


@torch.no_grad()
def inpaint_inputs(bundle: ModelBundle, image: np.ndarray, mask: np.ndarray) -> InpaintInputs:
    """An inpainting UNet's extra inputs for ``image`` (uint8 HxWx3, sides multiples of
    ``vae_factor``) and ``mask`` (float HxW, 1 = generate), built as diffusers'
    ``StableDiffusionInpaintPipeline`` builds them: the mask binarised at 0.5; the image in
    [-1, 1] with the masked pixels set to 0 (``image * (mask < 0.5)``), VAE-encoded (our
    convention: the posterior mean) and scaled; the mask brought to latent size by nearest
    interpolation. A soft mask (differential inpainting) is binarised the same way."""
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None].to(bundle.device)
    m = (m >= 0.5).float()
    x = torch.from_numpy(np.array(image, copy=True)).to(bundle.device)
    x = x.permute(2, 0, 1)[None].float() / 127.5 - 1.0
    masked = x * (m < 0.5)
    from . import vae as vae_ops

    latents = vae_ops.encode_mean(bundle.vae, masked).to(bundle.dtype) * bundle.vae_scale
    small = F.interpolate(m, size=latents.shape[-2:])
    return InpaintInputs(small.to(bundle.dtype), latents)


class Denoiser:
    """Wraps a ``ModelBundle`` for the sampling loops.

    ``predict`` batches the conditional and unconditional passes into one UNet call and
    applies classifier-free guidance (Ho & Salimans 2022, eq. 6):
    ε̃ = ε(x, ∅) + w · (ε(x, c) − ε(x, ∅)); w = 1 skips the unconditional pass.
    """

    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.schedule = bundle.schedule
        self.device = bundle.device
        self.dtype = bundle.dtype
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        self.xl = sdxl.is_sdxl(bundle)
        self.refiner = bundle.family == sdxl.REFINER
        self.chunks = 1  # encoder windows every embedding of the current job is padded to
        self.unet_calls = 0  # counted per sample in the batch that a user asked for
        # an inpainting UNet's extra inputs for the current job (``inpainting``); None: the
        # whole picture is to be generated (text-to-image on an inpainting model)
        self.inpaint: InpaintInputs | None = None
        self._blank: dict[tuple[int, int], InpaintInputs] = {}
        self._visit_depth, self._visiting = 0, False  # see ``_encoder_visit``
        if sdxl.offloads_text_encoders(bundle):
            sdxl.place_text_encoders(bundle, on_device=False)  # they live on the CPU

    # ---- text ---------------------------------------------------------------------------

    MAX_CHUNKS = 8  # 600 tokens: far beyond any prompt that still steers the image

    @contextmanager
    def _encoder_visit(self):
        """Encodes inside the block share one visit of the text encoders to the device
        (``condition``: the prompt and the negative prompt); when the outermost block ends,
        the bundle's ``offload_text_encoders`` option (``sdxl.offloads_text_encoders``)
        sends them back to the CPU. They move only once an encode needs them
        (``_encoders_here``), so a block whose prompts are all cached moves nothing."""
        self._visit_depth += 1
        try:
            yield
        finally:
            self._visit_depth -= 1
            if self._visit_depth == 0 and self._visiting:
                self._visiting = False
                if sdxl.offloads_text_encoders(self.bundle):
                    sdxl.place_text_encoders(self.bundle, on_device=False)

    def _encoders_here(self) -> None:
        """The text encoders on the device for the encode about to run (in a visit)."""
        if not self._visiting:
            sdxl.place_text_encoders(self.bundle, on_device=True)
            self._visiting = True

    def _window(self) -> int:
        """Tokens of text one encoder pass holds (77 less BOS and EOS for CLIP)."""
        return self.bundle.tokenizer.model_max_length - 2

    def chunk_count(self, text: str) -> int:
        """How many encoder windows (75 tokens each for CLIP) the prompt needs; the weight
        syntax (``engine.prompts``) does not count, only the plain text's tokens."""
        tok = self.bundle.tokenizer
        ids = tok(plain_text(text), add_special_tokens=False, truncation=False, verbose=False)
        n = len(ids.input_ids)
        return max(1, math.ceil(n / self._window()))

    def fit_prompts(self, *texts: str) -> int:
        """Set the job's window count to what its longest prompt needs; returns it."""
        self.chunks = 1
        self.chunks = max([1] + [self.chunk_count(t) for t in texts if isinstance(t, str) and t])
        return self.chunks

    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """CLIP last hidden state for a prompt (cached), 1 x 77·k x D.

        A prompt longer than the encoder's window is split into windows of 75 tokens, each
        wrapped in BOS/EOS, encoded on its own and concatenated along the sequence, as
        AUTOMATIC1111 does; ``k`` is at least ``self.chunks`` (set per job, so every
        embedding in a job has the same length), padded with the empty prompt's encoding.
        A prompt within one window is encoded exactly as a single padded pass.

        The ``(word:1.3)`` weight syntax (``engine.prompts``) is read here: the encoder sees
        the plain text, and when any token's weight is not 1 each window is emphasised as
        AUTOMATIC1111 does (``_emphasize``). A prompt whose weights are all 1 is encoded
        exactly as its plain text; the cache key is the prompt as written."""
        n = self.chunk_count(text) if text else 1
        if n > self.MAX_CHUNKS:
            raise InputError(
                f"The prompt is about {n * self._window()} tokens; up to "
                f"{self.MAX_CHUNKS * self._window()} are supported. Shorten it."
            )
        k = max(n, self.chunks)
        key = (text, k)
        if key not in self._cache:
            with self._encoder_visit():
                self._encoders_here()
                self._cache[key] = self._encode(text, n, k)
        return self._cache[key]

    def _encode(self, text: str, n: int, k: int) -> torch.Tensor:
        """``encode_text`` without the cache, for ``n`` windows of text padded to ``k``."""
        if self.xl:
            return self._encode_xl(text, k)
        plain = plain_text(text)
        tw = token_weights(self.bundle.tokenizer, text) if plain != text else None
        if tw is not None and tw.weighted:
            w = self._window()
            parts = [
                self._encode_ids(tw.ids[i : i + w], tw.weights[i : i + w])
                for i in range(0, max(1, len(tw.ids)), w)
            ]
            parts += [self._encode_window("")] * (k - len(parts))
        elif n == 1:
            parts = [self._encode_window(plain)] + [self._encode_window("")] * (k - 1)
        else:
            parts = [self._encode_ids(c) for c in self._windows(plain)]
            parts += [self._encode_window("")] * (k - len(parts))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _encode_xl(self, text: str, k: int) -> torch.Tensor:
        """``encode_text`` for SDXL: the same windows, weights and padding as above, each
        window through both encoders (``sdxl.encode_window``); the pooled vector is the first
        window's (as AUTOMATIC1111 and ComfyUI do for long prompts; within 75 tokens it is
        exactly diffusers'). Packed with ``sdxl.pack``."""
        plain = plain_text(text)
        tw = token_weights(self.bundle.tokenizer, text) if plain != text else None
        w = self._window()
        if tw is not None and tw.weighted:
            ids, weights = tw.ids, tw.weights
        else:
            ids = self._windows(plain)
            ids, weights = [i for c in ids for i in c], None
        hidden, pooled = [], None
        for start in range(0, max(1, len(ids)), w):
            z, p = sdxl.encode_window(self.bundle, ids[start : start + w], self.device)
            if weights is not None:
                z = self._emphasize(z, weights[start : start + w])
            hidden.append(z)
            pooled = p if pooled is None else pooled
        empty = sdxl.encode_window(self.bundle, [], self.device)[0]
        hidden += [empty] * (k - len(hidden))
        score = sdxl.AESTHETIC_SCORE if self.refiner else None
        return sdxl.pack(torch.cat(hidden, dim=1), pooled, score).to(self.dtype)

    @torch.no_grad()
    def encode_negative(self, text: str) -> torch.Tensor:
        """The unconditional branch's embedding for a negative prompt: ``encode_text``,
        except on SDXL, where an empty negative prompt gives zeros (context and pooled
        vector) when the model asks for it (``force_zeros_for_empty_prompt``: the base does,
        as diffusers' pipeline with no negative prompt), and the refiner's negative
        aesthetic score is 2.5 (diffusers' default) instead of 6."""
        emb = self.encode_text(text)
        if not self.xl:
            return emb
        if text == "" and self.bundle.zero_empty_negative:
            emb = torch.zeros_like(emb)
        return sdxl.with_aesthetic(emb, sdxl.NEGATIVE_AESTHETIC_SCORE) if self.refiner else emb

    def _encode_window(self, text: str) -> torch.Tensor:
        """One padded encoder pass (truncating at the window) of a plain text."""
        tok = self.bundle.tokenizer
        ids = tok(
            text,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.bundle.text_encoder(ids)[0].to(self.dtype)

    def _windows(self, text: str) -> list[list[int]]:
        """A plain text's token ids in windows of ``_window()`` tokens."""
        tok = self.bundle.tokenizer
        ids = tok(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        w = self._window()
        return [ids[i : i + w] for i in range(0, len(ids), w)]

    def _encode_ids(self, chunk: list[int], weights: list[float] | None = None) -> torch.Tensor:
        """One encoder pass of one window's token ids, wrapped in BOS/EOS and padded; with
        ``weights`` (one per id) the hidden states are emphasised (``_emphasize``)."""
        tok = self.bundle.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = [tok.bos_token_id, *chunk, tok.eos_token_id]
        ids += [pad] * (tok.model_max_length - len(ids))
        t = torch.tensor([ids], device=self.device)
        z = self.bundle.text_encoder(t)[0]
        if weights is not None:
            z = self._emphasize(z, weights)
        return z.to(self.dtype)

    @staticmethod
    def _emphasize(z: torch.Tensor, weights: list[float]) -> torch.Tensor:
        """AUTOMATIC1111's emphasis on one window's hidden states ``z`` (1 x L x D):
        ``z *= w`` per token (positions 1..n; BOS, EOS and padding keep 1), then
        ``z *= old_mean / new_mean`` so the window's mean is what it was. Computed in
        float32.

        Unlike AUTOMATIC1111 the rescale is skipped where it is ill-conditioned: when the
        mean is rounding noise (below 1e-4 of the mean magnitude: a final layer norm with no
        bias, as in the random-weight tiny model, centres every token on 0) or the ratio is
        not a positive finite number, which would blow up or flip the whole embedding."""
        zf = z.float()
        mult = torch.ones(zf.shape[1], dtype=torch.float32, device=zf.device)
        mult[1 : 1 + len(weights)] = torch.tensor(weights, dtype=torch.float32)
        old_mean = zf.mean()
        zw = zf * mult[None, :, None]
        new_mean = zw.mean()
        ratio = old_mean / new_mean
        noise = 1e-4 * zf.abs().mean()
        if old_mean.abs() > noise and new_mean.abs() > noise and ratio > 0 and ratio.isfinite():
            zw = zw * ratio
        return zw.to(z.dtype)

    def condition(self, prompt: str, negative_prompt: str = "", guidance: float = 1.0):
        """Embeddings for a prompt; the negative prompt becomes the unconditional branch."""
        self.chunks = max(self.chunks, self.chunk_count(prompt), self.chunk_count(negative_prompt))
        with self._encoder_visit():  # one round trip for both prompts
            cond = self.encode_text(prompt)
            uncond = self.encode_negative(negative_prompt) if guidance != 1.0 else None
        return Conditioning(cond, uncond)

    def mean_shift(self, x: torch.Tensor, t: int, variance: float) -> torch.Tensor | None:
        """What a guided denoiser adds to an ancestral step's mean (classifier guidance,
        ``algorithms.classifier_guidance``); a plain denoiser adds nothing."""
        return None

    # ---- inpainting models -------------------------------------------------------------

    @contextmanager
    def inpainting(self, inputs: InpaintInputs | None):
        """Within this block an inpainting UNet reads ``inputs`` (``inpaint_inputs``) beside
        every batch of latents; algorithms stay unaware. A plain UNet ignores them."""
        before, self.inpaint = self.inpaint, inputs
        try:
            yield
        finally:
            self.inpaint = before

    def _unet_input(self, x: torch.Tensor) -> torch.Tensor:
        """The latents, and for an inpainting UNet its mask and masked-image latents
        concatenated after them (diffusers' order). Without a job's inputs the whole picture
        is generated: mask 1 and a blank (0 in [-1, 1]) image, as AUTOMATIC1111 runs
        text-to-image on an inpainting model."""
        if not self.bundle.inpainting:
            return x
        extra = self.inpaint or self._blank_inputs(tuple(x.shape[-2:]))
        n = x.shape[0]
        m, z = extra.mask.to(x), extra.masked_latents.to(x)
        return torch.cat([x, m.expand(n, -1, -1, -1), z.expand(n, -1, -1, -1)], dim=1)

    def _blank_inputs(self, hw: tuple[int, int]) -> InpaintInputs:
        if hw not in self._blank:
            f = self.bundle.vae_factor
            grey = np.full((hw[0] * f, hw[1] * f, 3), 127.5, dtype=np.float32)
            ones = np.ones(grey.shape[:2], dtype=np.float32)
            self._blank[hw] = inpaint_inputs(self.bundle, grey, ones)
        return self._blank[hw]

    # ---- one model call -----------------------------------------------------------------

    def model_output(self, x: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
        """Raw UNet output for a batch (broadcasting a single embedding over it)."""
        if emb.shape[0] != x.shape[0]:
            emb = emb.expand(x.shape[0], -1, -1)
        tt = torch.full((x.shape[0],), int(t), device=self.device, dtype=torch.long)
        x = self._unet_input(x)
        if self.xl:
            return self._model_output_xl(x, tt, emb)
        out = self.bundle.unet(x.to(self.dtype), tt, encoder_hidden_states=emb.to(self.dtype))
        return out.sample.to(x.dtype)

    def _model_output_xl(self, x: torch.Tensor, tt: torch.Tensor, emb: torch.Tensor):
        """The SDXL UNet call: context, pooled vector and micro-conditioning ids."""
        pooled_dim = int(self.bundle.text_encoder_2.config.projection_dim)
        context, pooled, score = sdxl.unpack(emb, pooled_dim)
        f = self.bundle.vae_factor
        ids = sdxl.time_ids((x.shape[-2] * f, x.shape[-1] * f), score, self.refiner)
        added = {"text_embeds": pooled.to(self.dtype), "time_ids": ids.to(self.dtype)}
        out = self.bundle.unet(
            x.to(self.dtype),
            tt,
            encoder_hidden_states=context.to(self.dtype),
            added_cond_kwargs=added,
        )
        return out.sample.to(x.dtype)

    def outputs(self, x: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
        """``model_output``, counted as one model call: what every caller outside this class
        uses, so that ``unet_calls`` is this object's to keep."""
        out = self.model_output(x, t, emb)
        self.unet_calls += 1
        return out

    @staticmethod
    def guide(out_u: torch.Tensor, out_c: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022, eq. 6) on network outputs; for
        v-prediction this equals mixing ε, because ε is affine in v at fixed x_t and t."""
        return out_u + guidance * (out_c - out_u)

    def predict(
        self,
        x: torch.Tensor,
        t: int,
        cond: Conditioning | torch.Tensor,
        guidance: float = 1.0,
        uncond: torch.Tensor | None = None,
    ) -> Prediction:
        """Guided ε̂ and x̂₀ at timestep t for latents x (N x C x h x w).

        ``cond`` may be a Conditioning or a raw embedding (then ``uncond`` gives the
        unconditional embedding, e.g. the optimised one of null-text inversion)."""
        if isinstance(cond, Conditioning):
            cond, uncond = cond.cond, cond.uncond if uncond is None else uncond
        n = x.shape[0]
        if guidance == 1.0 or uncond is None:
            out = self.outputs(x, t, cond)
        else:
            e_c = cond.expand(n, -1, -1) if cond.shape[0] != n else cond
            e_u = uncond.expand(n, -1, -1) if uncond.shape[0] != n else uncond
            out_u, out_c = self.outputs(torch.cat([x, x]), t, torch.cat([e_u, e_c])).chunk(2)
            out = self.guide(out_u, out_c, guidance)
        eps, x0 = self.schedule.eps_x0(out, x, t)
        return Prediction(eps, x0)
