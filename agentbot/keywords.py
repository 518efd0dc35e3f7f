"""Keyword matching that ignores case and accents, in every script.

Words are whole words where a script separates words with spaces ("agentic" is not "agent"; a
Devanagari vowel sign is part of its word, so "कम" is not in "कमी"). Scripts written without spaces
(Chinese, Japanese, Thai, Lao, Khmer, Myanmar, …) have no boundaries to look for, so a keyword in
them matches anywhere in the message. The `regex` module provides the Unicode script and mark
classes the standard `re` lacks.
"""

from __future__ import annotations

import unicodedata

import regex

# Scripts written without spaces between words.
_UNSPACED = regex.compile(
    r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}\p{Yi}\p{Tai_Tham}"
    r"\p{New_Tai_Lue}\p{Tai_Le}\p{Balinese}\p{Javanese}]"
)
# Letters, digits, marks (vowel signs, viramas), connectors: what continues a word.
_WORD = r"[\w\p{M}]"
# Typographic apostrophes and the modifier letter apostrophe are written as '.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'", "`": "'"})
_STRIPPED_AFTER = 0x0530  # accents are dropped from Latin, Greek and Cyrillic letters only


def fold(text: str) -> str:
    """Lower-case, strip accents and unify apostrophes: "Atendênte" → "atendente", "l’agent" → "l'agent".

    Only marks on Latin, Greek and Cyrillic letters are accents; in other scripts (Devanagari, Thai…)
    a mark changes the word, so it stays."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    kept: list[str] = []
    base = ""
    for ch in decomposed:
        if unicodedata.combining(ch):
            if base and ord(base) < _STRIPPED_AFTER:
                continue
        else:
            base = ch
        kept.append(ch)
    return unicodedata.normalize("NFC", "".join(kept)).casefold()


def compile_keywords(words: list[str]) -> regex.Pattern[str] | None:
    folded = sorted({fold(w) for w in words if w.strip()}, key=len, reverse=True)
    if not folded:
        return None
    alternatives = [
        regex.escape(w) if _UNSPACED.search(w) else rf"(?<!{_WORD}){regex.escape(w)}(?!{_WORD})" for w in folded
    ]
    return regex.compile("|".join(alternatives))


def find_keyword(pattern: regex.Pattern[str] | None, text: str | None) -> str | None:
    if pattern is None or not text:
        return None
    match = pattern.search(fold(text))
    return match.group(0) if match else None
