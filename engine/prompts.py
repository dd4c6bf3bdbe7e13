"""Prompt weights: the ``(word:1.3)`` emphasis syntax users know from AUTOMATIC1111.

One parser serves plain generation (the denoiser scales the weighted tokens' hidden states,
see ``Denoiser.encode_text``) and attention control (``word_positions`` finds a word's
attention columns). Nothing here imports Qt or torch.

The syntax, as in AUTOMATIC1111's ``parse_prompt_attention``:

- ``(text:1.3)`` gives ``text`` the weight 1.3; ``(text)`` multiplies by 1.1; ``[text]``
  divides by 1.1; nested groups multiply;
- ``\\(``, ``\\)``, ``\\[``, ``\\]`` are literal brackets and ``\\\\`` a literal backslash;
  any other backslash is itself.

Where this module differs from AUTOMATIC1111, on purpose:

- An unmatched bracket is literal text. AUTOMATIC1111 applies an unclosed ``(`` to the rest
  of the prompt and drops a stray ``)``; here ``"a (red house"`` reads as exactly that.
  A closer pairs with the nearest open bracket of its kind; open brackets of the other kind
  in between stay literal (``"(a [b)"`` is ``"a [b"`` at 1.1).
- A group whose text after its last top-level ``:`` is not a plain decimal number
  (``(a:abc)``, ``(photo: close up)``, ``(a:)``, ``(a:1e3)``) is literal text, brackets and
  colon included; groups nested inside it are still parsed. AUTOMATIC1111 keeps the colon
  as text and multiplies by 1.1. ``[a:1.2]`` has no weight form: it is ``a:1.2`` divided by
  1.1 (AUTOMATIC1111's prompt editing ``[from:to:when]`` is not supported).
- Every token's final weight is clamped to [0, 10] (``WEIGHT_MIN``/``WEIGHT_MAX``).
  AUTOMATIC1111 does not clamp; a negative weight flips a token's hidden state, which does
  not mean "less of it", and weights beyond 10 only blow the embedding up.
- ``BREAK`` and other AUTOMATIC1111 keywords are ordinary words.
- The plain text is tokenized as a whole and the weights are laid onto its tokens
  (``token_weights``), so ``"(red)dish"`` tokenizes as ``"reddish"``. AUTOMATIC1111
  tokenizes every segment on its own.
"""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass
from typing import Any

__all__ = [
    "WEIGHT_MAX",
    "WEIGHT_MIN",
    "TokenWeights",
    "parse_weights",
    "plain_text",
    "token_weights",
    "without_silenced",
    "word_positions",
]

WEIGHT_MIN = 0.0
WEIGHT_MAX = 10.0
ROUND = 1.1  # ( ) multiplies, [ ] divides

_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*")
_ESCAPES = {"(", ")", "[", "]", "\\"}
_PAIRS = {")": "(", "]": "["}


def _lex(text: str) -> list[tuple[str, str]]:
    """Characters as (kind, char): kind is the bracket itself, or "t" for literal text."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(("t", text[i + 1]))
            i += 2
            continue
        out.append((c if c in "()[]" else "t", c))
        i += 1
    return out


def _match(lexed: list[tuple[str, str]]) -> dict[int, int]:
    """Pairs of matching bracket indices (opener → closer); the rest are literal."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for i, (kind, _) in enumerate(lexed):
        if kind in "([":
            stack.append(i)
        elif kind in ")]":
            for depth in range(len(stack) - 1, -1, -1):
                if lexed[stack[depth]][0] == _PAIRS[kind]:
                    pairs[stack[depth]] = i
                    del stack[depth:]  # openers of the other kind in between stay literal
                    break
    return pairs


def _parse(lexed, pairs, lo: int, hi: int, weight: float, out: list[list[Any]]) -> None:
    """Append [text, weight] for lexed[lo:hi] at the enclosing ``weight``."""
    i = lo
    while i < hi:
        kind, ch = lexed[i]
        close = pairs.get(i)
        if close is None:
            out.append([ch, weight])
            i += 1
            continue
        if kind == "[":
            _parse(lexed, pairs, i + 1, close, weight / ROUND, out)
        else:
            # the last ":" at this group's own level, outside nested groups
            colon, j = None, i + 1
            while j < close:
                if j in pairs:
                    j = pairs[j] + 1
                    continue
                if lexed[j] == ("t", ":"):
                    colon = j
                j += 1
            if colon is None:
                _parse(lexed, pairs, i + 1, close, weight * ROUND, out)
            else:
                number = "".join(c for _, c in lexed[colon + 1 : close])
                if _NUMBER.fullmatch(number):
                    _parse(lexed, pairs, i + 1, colon, weight * float(number), out)
                else:  # malformed weight: the brackets and colon are text
                    out.append(["(", weight])
                    _parse(lexed, pairs, i + 1, close, weight, out)
                    out.append([")", weight])
        i = close + 1


def parse_weights(text: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) segments; adjacent equal weights are merged.

    Never raises: malformed syntax is literal text (see the module docstring). The texts
    concatenated are ``plain_text(text)``; weights are clamped to [0, 10]; empty segments
    (``"()"``, ``"(:1.3)"``) are dropped."""
    lexed = _lex(text)
    raw: list[list[Any]] = []
    _parse(lexed, _match(lexed), 0, len(lexed), 1.0, raw)
    merged: list[list[Any]] = []
    for ch, w in raw:
        w = min(WEIGHT_MAX, max(WEIGHT_MIN, w))
        if merged and merged[-1][1] == w:
            merged[-1][0] += ch
        else:
            merged.append([ch, w])
    return [(t, w) for t, w in merged if t]


def plain_text(text: str) -> str:
    """The prompt with the weight syntax removed: what the tokenizer sees."""
    return "".join(t for t, _ in parse_weights(text))


def without_silenced(text: str) -> str:
    """The prompt without its words of weight 0, still in the weight syntax (the other
    weights kept); the text itself when no word has weight 0.

    In an attention-controlled edit ``(word:0)`` means "without the word". Scaling its
    attention column to 0 (the paper's re-weighting) cannot do that: a text encoder that
    reads left to right carries a word into the hidden states of the words after it
    ("snowy mountains": the mountains' own tokens say snowy). Left out of the edited
    prompt, the word is a deletion that Prompt-to-Prompt aligns like any other."""
    segments = parse_weights(text)
    if all(w != 0.0 for _, w in segments):
        return text
    out = []
    for t, w in segments:
        if w == 0.0:
            out.append(" ")
            continue
        t = re.sub(r"([\\()\[\]])", r"\\\1", t)  # brackets and backslashes stay literal
        if w != 1.0:  # spaces outside the group, so the text reads as typed
            core = t.strip()
            weight = f"{w:.12f}".rstrip("0").rstrip(".")
            t = t[: len(t) - len(t.lstrip())] + f"({core}:{weight})" + t[len(t.rstrip()) :]
        out.append(t)
    return re.sub(r"\s+", " ", "".join(out)).strip()


@dataclass(frozen=True)
class TokenWeights:
    """Tokens of a prompt's plain text, without BOS/EOS.

    ``ids`` equal ``tokenizer(plain_text(text), add_special_tokens=False).input_ids``;
    ``weights[k]`` is token k's weight; ``words[k]`` the index of the whitespace-separated
    word of the plain text that token k belongs to."""

    ids: list[int]
    weights: list[float]
    words: list[int]

    @property
    def weighted(self) -> bool:
        """Whether any token's weight differs from 1."""
        return any(w != 1.0 for w in self.weights)


def _ids(tokenizer, text: str) -> list[int]:
    return list(
        tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
    )


def _words(segments: list[tuple[str, float]]) -> list[list[tuple[str, float]]]:
    """The plain text's whitespace-separated words, each as its (text, weight) pieces."""
    words: list[list[tuple[str, float]]] = []
    current: list[tuple[str, float]] = []
    for seg, w in segments:
        for part in re.split(r"(\s+)", seg):
            if not part:
                continue
            if part.isspace():
                if current:
                    words.append(current)
                current = []
            elif current and current[-1][1] == w:
                current[-1] = (current[-1][0] + part, w)
            else:
                current.append((part, w))
    if current:
        words.append(current)
    return words


def _word_tokens(tokenizer, pieces: list[tuple[str, float]]) -> tuple[list[int], list[float]]:
    """A word's tokens and their weights. A segment boundary that falls between BPE pieces
    (``"(red:1.3),"``: ``red`` and ``,``) splits the weights exactly; one inside a BPE piece
    (``"(red)dish"``) gives the whole word the weight of the characters' majority."""
    ids = _ids(tokenizer, "".join(p for p, _ in pieces))
    if len(pieces) > 1:
        split = [(_ids(tokenizer, p), w) for p, w in pieces]
        if [i for part, _ in split for i in part] == ids:
            return ids, [w for part, w in split for _ in part]
    chars: dict[float, int] = {}
    for p, w in pieces:
        chars[w] = chars.get(w, 0) + len(p)
    w = max(chars, key=lambda k: (chars[k], -abs(k - 1.0)))
    return ids, [w] * len(ids)


def token_weights(tokenizer, text: str) -> TokenWeights:
    """Token ids of the prompt's plain text with each token's weight and word index.

    The ids are the whole plain text's tokenization, always. CLIP's BPE splits text on a
    regex that never crosses whitespace, so every word tokenizes on its own and the words'
    tokens concatenated are the text's; should a tokenizer ever disagree, the words' tokens
    are aligned to the text's and a token no word claims takes its left neighbour's word."""
    segments = parse_weights(text)
    plain = "".join(t for t, _ in segments)
    ids = _ids(tokenizer, plain)
    w_ids: list[int] = []
    w_weights: list[float] = []
    w_words: list[int] = []
    for n, pieces in enumerate(_words(segments)):
        i, w = _word_tokens(tokenizer, pieces)
        w_ids += i
        w_weights += w
        w_words += [n] * len(i)
    if w_ids == ids:
        return TokenWeights(ids, w_weights, w_words)
    weights, words = [1.0] * len(ids), [-1] * len(ids)
    matcher = difflib.SequenceMatcher(None, w_ids, ids, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        weights[b : b + size] = w_weights[a : a + size]
        words[b : b + size] = w_words[a : a + size]
    for k in range(len(ids)):
        if words[k] < 0:
            words[k] = words[k - 1] if k else 0
            weights[k] = weights[k - 1] if k else 1.0
    return TokenWeights(ids, weights, words)


def _core(word: str) -> str:
    """A word for matching: lower case, punctuation stripped from both ends."""
    return word.strip(string.punctuation).lower()


def word_positions(tokenizer, text: str, words: str) -> list[int]:
    """Positions in the encoder's sequence of every token of every occurrence of ``words``.

    BOS is position 0, so the plain text's first token is position 1. ``words`` (one word or
    a phrase) matches whole whitespace-separated words of the plain text, case-insensitive,
    with punctuation stripped from the ends of words; the stripped punctuation's tokens are
    not included when they tokenize apart from the word. Only the first encoder window
    (``model_max_length - 2`` = 75 tokens for CLIP) is searched: attention control reads the
    first window's attention columns. An empty or absent phrase gives []."""
    want = [_core(w) for w in words.split()]
    want = [w for w in want if w]
    if not want:
        return []
    tw = token_weights(tokenizer, text)
    plain = plain_text(text).split()
    cores = [_core(w) for w in plain]
    window = tokenizer.model_max_length - 2
    out: list[int] = []
    for start in range(len(cores) - len(want) + 1):
        if cores[start : start + len(want)] != want:
            continue
        for n in range(start, start + len(want)):
            toks = [k for k, wn in enumerate(tw.words) if wn == n]
            toks = _core_tokens(tokenizer, plain[n], toks, [tw.ids[k] for k in toks])
            out += [k + 1 for k in toks if k < window]
    return sorted(set(out))


def _core_tokens(tokenizer, word: str, toks: list[int], ids: list[int]) -> list[int]:
    """The tokens of ``word`` (indices ``toks``) that belong to its core, not to the
    punctuation around it, when the parts tokenize apart; else all of them."""
    core_lo = len(word) - len(word.lstrip(string.punctuation))
    core_hi = len(word.rstrip(string.punctuation))
    if core_hi <= core_lo:
        return toks
    head, core, tail = word[:core_lo], word[core_lo:core_hi], word[core_hi:]
    h, c, t = (_ids(tokenizer, s) if s else [] for s in (head, core, tail))
    if h + c + t != ids:
        return toks
    return toks[len(h) : len(h) + len(c)]
