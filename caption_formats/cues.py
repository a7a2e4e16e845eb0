"""Cutting finals into subtitle cues, as broadcasters do: at most 2 lines of 42 characters a cue, timed by the words.

A final that carries `words` (times on the stream's clock) is cut at word times: a cue runs from its first word's
start to its last word's end, a new cue starts at every change of voice, and a cue that would get too long (more
than 2 x 42 characters, or longer than MAX_CUE_SECONDS) is cut where a reader expects a break: after a sentence,
after a comma, or at a pause between words. A final without words (records kept before words existed) keeps its
own times, its text shared out over its cues in proportion to their characters.

A word's voice (the name shown for it): word["name"] if present, else the final's "speaker" (a room's stream
speaker), else none. The writers show it as a WebVTT voice span or an SRT "Name: " prefix, so the first line of a
voiced cue leaves room for that prefix in both formats (the cues, and their times, are the same in both).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

MAX_CHARS = 42  # characters a line (the broadcasters' usual limit)
MAX_CUE_SECONDS = 7.0  # a longer cue of slow speech is cut, as it would be for too many characters
MIN_SECONDS = 1.0  # a word-timed cue stays up at least this long, or long enough to read at READING_CPS ...
READING_CPS = 20.0  # ... unless the next cue of its stream starts sooner
MAX_INDENT = 30  # room kept on a first line for "Name: " (a name over 28 characters makes that SRT line too long)
SENTENCE_ENDS = ".?!…。？！"
CLAUSE_ENDS = ",;:—–、，；："
CLOSERS = "\"')]}»”’"


@dataclass
class Token:
    """A word (or, without word times, a piece of text between spaces); times in ms, None without word times."""
    text: str
    start: int | None = None
    end: int | None = None


@dataclass
class Run:
    """Consecutive words of one final said by one voice."""
    voice: str | None
    tokens: list[Token]

    @property
    def text(self) -> str:
        return " ".join(t.text for t in self.tokens)


@dataclass
class Cue:
    start: int  # ms on the stream's clock
    end: int
    voice: str | None
    lines: list[str]
    source: object = None  # the final's session: cues of one stream never overlap
    timed: bool = True  # from word times (else from the final's span, shared out by characters)


def _ms(seconds) -> int:
    return max(0, round(float(seconds) * 1000))


def _clean(text) -> str:
    return " ".join(str(text or "").split())


def runs(final: dict) -> list[Run]:
    """The final's words grouped by voice, in order; a final without (usable) words is one run of its text."""
    fallback = _clean(final.get("speaker")) or None
    out: list[Run] = []
    for w in final.get("words") or ():
        text = _clean(w.get("word"))
        if not text:
            continue
        voice = _clean(w.get("name")) or fallback
        start = _ms(w["start"])
        token = Token(text, start, max(start, _ms(w.get("end", w["start"]))))
        if out and out[-1].voice == voice:
            out[-1].tokens.append(token)
        else:
            out.append(Run(voice, [token]))
    if not out:
        text = _clean(final.get("text"))
        out = [Run(fallback, [Token(t) for t in text.split(" ")])] if text else []
    return out


def _lines(texts: list[str], indent: int) -> list[str] | None:
    """The cue's lines: one if it fits, else two broken at the word boundary that balances them best (the shorter
    line on top on a tie); None if the words do not fit in two lines."""
    ends = list(accumulate(len(t) + 1 for t in texts))  # ends[k - 1] - 1: length of the first k words joined
    total = ends[-1] - 1
    if indent + total <= MAX_CHARS:
        return [" ".join(texts)]
    best = None
    for k in range(1, len(texts)):
        top, bottom = indent + ends[k - 1] - 1, total - ends[k - 1]
        if top <= MAX_CHARS and bottom <= MAX_CHARS and (best is None or (abs(top - bottom), top) < best[0]):
            best = ((abs(top - bottom), top), k)
    return best and [" ".join(texts[:best[1]]), " ".join(texts[best[1]:])]


def _chunks(token: Token, width: int) -> list[Token]:
    """A token too long for any line (a URL, a run of text without spaces) in pieces of `width` characters,
    its time shared out by characters. The pieces are laid out as words (a line break, or rarely a space, between
    them): the line limit comes first."""
    if len(token.text) <= width:
        return [token]
    pieces = [token.text[i:i + width] for i in range(0, len(token.text), width)]
    if token.start is None or token.end is None:
        return [Token(p) for p in pieces]
    span, n = token.end - token.start, len(token.text)
    at = [token.start + span * i * width // n for i in range(len(pieces))] + [token.end]
    return [Token(p, at[i], at[i + 1]) for i, p in enumerate(pieces)]


def _break_strength(before: Token, after: Token) -> int:
    """How good a place to cut between two words is: a sentence's end, a clause's, a pause (ms between words)."""
    end = before.text.rstrip(CLOSERS)[-1:]
    score = 3 if end and end in SENTENCE_ENDS else 2 if end and end in CLAUSE_ENDS else 0
    if before.end is not None and after.start is not None:
        pause = after.start - before.end
        score += 3 if pause >= 1000 else 1 if pause >= 300 else 0
    return score


def _fits(tokens: list[Token], indent: int) -> bool:
    first, last = tokens[0].start, tokens[-1].end
    if first is not None and last is not None and len(tokens) > 1 and last - first > MAX_CUE_SECONDS * 1000:
        return False
    return _lines([t.text for t in tokens], indent) is not None


def cut(tokens: list[Token], indent: int) -> list[list[Token]]:
    """The run's tokens in cues: each as full as fits, except that when the run goes on, the cue ends at the best
    break (see _break_strength) among the places that keep it at least half full (the latest on a tie)."""
    groups, i = [], 0
    while i < len(tokens):
        j = i + 1  # tokens[i:j] fits: one token always does (see _chunks)
        while j < len(tokens) and _fits(tokens[i:j + 1], indent):
            j += 1
        if j < len(tokens):
            full = sum(len(t.text) + 1 for t in tokens[i:j])
            chars, best = 0, (-1, j)
            for k in range(i + 1, j + 1):
                chars += len(tokens[k - 1].text) + 1
                if 2 * chars >= full:
                    best = max(best, (_break_strength(tokens[k - 1], tokens[k]), k))
            j = best[1]
        groups.append(tokens[i:j])
        i = j
    return groups


def _final_cues(final: dict) -> list[Cue]:
    """One final's cues, a voice's run at a time, before settling (see cues)."""
    out = []
    for run in runs(final):
        indent = min(len(run.voice) + 2, MAX_INDENT) if run.voice else 0
        tokens = [piece for t in run.tokens for piece in _chunks(t, MAX_CHARS - indent)]
        timed = all(t.start is not None and t.end is not None for t in tokens)
        for group in cut(tokens, indent):
            lines = _lines([t.text for t in group], indent) or [" ".join(t.text for t in group)]
            # untimed tokens: times are set below, from the final's span
            start, end = (group[0].start or 0, max(t.end or 0 for t in group)) if timed else (0, 0)
            out.append(Cue(start, end, run.voice, lines, final.get("session"), timed))
    if out and not out[0].timed:
        # No word times: the final's own span, shared out in proportion to characters (spaces between cues too).
        start = _ms(final["start"])
        end = max(start, _ms(final["end"]))
        weights = [sum(len(line) + 1 for line in c.lines) for c in out]
        at = [start + (end - start) * w // sum(weights) for w in accumulate([0] + weights)]
        for c, a, b in zip(out, at, at[1:]):
            c.start, c.end = a, b
    return out


def cues(finals: list[dict]) -> list[Cue]:
    """All the finals' cues, in order, settled: a word-timed cue stays up long enough to be read; no cue ends
    before it starts (1 ms at least); no cue overlaps the next cue of its stream (its end is clipped to that
    start, or when both start in the same ms, the next one moves 1 ms later)."""
    out: list[Cue] = []
    previous: dict = {}
    for final in finals:
        timed = any(_clean(w.get("word")) for w in final.get("words") or ())
        for cue in _final_cues(final):
            if timed:
                chars = sum(len(line) for line in cue.lines)
                cue.end = max(cue.end, cue.start + round(1000 * max(MIN_SECONDS, chars / READING_CPS)))
            cue.end = max(cue.end, cue.start + 1)
            before = previous.get(cue.source)
            if before is not None and before.start <= cue.start < before.end:
                before.end = max(cue.start, before.start + 1)
                cue.start = max(cue.start, before.end)
                cue.end = max(cue.end, cue.start + 1)
            previous[cue.source] = cue
            out.append(cue)
    return out
