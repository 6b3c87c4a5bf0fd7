"""Deterministic answer text: what the simulated model says, its stream pieces and its citations.

The text is generated from a seeded generator and the retrieved results (sentences borrow words from
the chunks they cite); its token counts come from the real o200k tokenizer over exactly this text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from collector.simulator.core import _encoding

_WORDS = [
    "the",
    "retrieval",
    "index",
    "shows",
    "that",
    "our",
    "policy",
    "covers",
    "standard",
    "cases",
    "and",
    "the",
    "documented",
    "exceptions",
    "apply",
    "to",
    "each",
    "request",
    "within",
    "the",
    "agreed",
    "period",
    "customers",
    "may",
    "ask",
    "for",
    "a",
    "review",
    "when",
    "records",
    "are",
    "incomplete",
    "and",
    "support",
    "will",
    "confirm",
    "the",
    "details",
    "after",
    "checking",
    "the",
    "relevant",
    "sections",
]


ANSWER_SENTENCES: ContextVar[int | None] = ContextVar("answer_sentences", default=None)
"""Answer length asked for by the request's ``X-Runmeter-Answer-Sentences`` header (benchmarks use it
for long streams); set per request by the server's middleware."""

ANSWER_SENTENCES_HEADER = "X-Runmeter-Answer-Sentences"


@dataclass(frozen=True, slots=True)
class Source:
    """A retrieved result the answer may cite."""

    file_id: str
    filename: str
    text: str


@dataclass(slots=True)
class Citation:
    """One citation in the answer.

    ``marker`` is the Assistants-style text (``【m:i†name】``) inserted at ``start``..``end``; for
    Responses it is empty and ``start == end`` is the character index the annotation points at.
    """

    result_index: int
    file_id: str
    filename: str
    start: int
    end: int
    marker: str


@dataclass(slots=True)
class Answer:
    """The answer text, the pieces it streams in, and its citations."""

    text: str
    pieces: list[str] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)


def _pick_cited(rng: random.Random, n_results: int) -> list[int]:
    """Indexes of cited results: mostly the top-ranked, sometimes one further down."""
    if n_results == 0:
        return []
    k = min(n_results, rng.choice((1, 1, 2, 2, 3)))
    picks = sorted(set(range(min(k, n_results))))
    if n_results > k and rng.random() < 0.35:
        picks[-1] = rng.randrange(k, n_results)
    return sorted(set(picks))


def _sentence(rng: random.Random, source: Source | None) -> str:
    pool = _WORDS
    if source is not None:
        words = [w.strip(".,;:()\"'") for w in source.text.split()]
        words = [w for w in words if w.isalpha()]
        if len(words) >= 4:
            pool = words
    n = rng.randint(8, 16)
    words = [rng.choice(pool) for _ in range(n)]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def split_pieces(text: str, rng: random.Random) -> list[str]:
    """Split text into stream deltas of 1–3 tokens, as the real service streams them.

    Pieces are cut on token boundaries where the decoded bytes form whole characters, so joining
    them gives the text back exactly.
    """
    enc = _encoding()
    tokens = enc.encode(text)
    pieces: list[str] = []
    i = 0
    pending: list[int] = []
    while i < len(tokens):
        step = rng.randint(1, 3)
        pending.extend(tokens[i : i + step])
        i += step
        try:
            piece = enc.decode_bytes(pending).decode("utf-8")
        except UnicodeDecodeError:
            continue  # a multi-byte character spans tokens: keep going until it is whole
        pieces.append(piece)
        pending = []
    if pending:
        pieces.append(enc.decode_bytes(pending).decode("utf-8", errors="replace"))
    return [p for p in pieces if p]


def compose(
    rng: random.Random,
    sources: Sequence[Source],
    *,
    style: Literal["assistants", "responses"],
    message_index: int = 4,
    sentences: int | None = None,
) -> Answer:
    """An answer citing some of ``sources`` (indexes into the call's results).

    Assistants answers carry ``【m:i†filename】`` markers in the text; Responses answers carry none
    (their annotations point at a character index).
    """
    cited = _pick_cited(rng, len(sources))
    hinted = ANSWER_SENTENCES.get()
    n = sentences if sentences is not None else hinted if hinted is not None else rng.randint(2, 4)
    parts: list[str] = []
    citations: list[Citation] = []
    text = ""
    for s in range(n):
        src_idx = cited[s] if s < len(cited) else None
        src = sources[src_idx] if src_idx is not None else None
        sentence = _sentence(rng, src)
        text += ("" if not text else " ") + sentence
        if src_idx is not None and src is not None:
            if style == "assistants":
                marker = f"【{message_index}:{src_idx}†{src.filename}】"
                start = len(text)
                text += marker
                citations.append(Citation(src_idx, src.file_id, src.filename, start, len(text), marker))
            else:
                citations.append(Citation(src_idx, src.file_id, src.filename, len(text), len(text), ""))
    parts.append(text)
    return Answer(text=text, pieces=split_pieces(text, rng), citations=citations)
