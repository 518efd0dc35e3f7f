"""Keyword matching that ignores case and accents and only matches whole words."""
from __future__ import annotations

import re
import unicodedata


def fold(text: str) -> str:
    """Lower-case and strip accents: "Atendênte" → "atendente"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def compile_keywords(words: list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    alternatives = "|".join(re.escape(fold(w)) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def find_keyword(pattern: re.Pattern[str] | None, text: str | None) -> str | None:
    if pattern is None or not text:
        return None
    match = pattern.search(fold(text))
    return match.group(0) if match else None
