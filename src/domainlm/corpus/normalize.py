"""Normalisation: Unicode form, control characters, whitespace (quality rules are in quality.py)."""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*(\n\s*)*")


def normalize_text(text: str, form: str = "NFKC") -> str:
    """Unicode-normalise, drop control characters, collapse runs of spaces and blank lines."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    text = _CONTROL.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()
