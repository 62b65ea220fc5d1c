"""Tagging schemes for token classification: entities as spans, and tags re-encoded between
IO, BIO (IOB2 or IOB1) and BIOES (BILOU's L/U read as E/S)."""

from __future__ import annotations

SCHEMES = ("io", "bio", "bioes")

_PREFIXES = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}  # BILOU's L/U are E/S


def _parse_tag(tag: str) -> tuple[str, str]:
    """(prefix in O/B/I/E/S, type). A bare type with no prefix ("Disease") is read as IO's "I-Disease"
    (gold files hold one only with `tagging: io`: the task readers refuse it otherwise, `tag_problem`)."""
    if tag == "O":
        return "O", ""
    head, dash, rest = tag.partition("-")
    if head in _PREFIXES:
        return _PREFIXES[head], rest if dash else ""
    return "I", tag


def tag_problem(tag: str, bare_types: bool = False) -> str | None:
    """What is wrong with one gold tag, or None for a valid one: `O`, a scheme prefix alone (`B`),
    or a prefix, a dash and a type (`B-Disease`; BILOU's L-/U- too). A bare type (`Disease`) is
    valid only with `bare_types` (IO tags written without their `I-`)."""
    if tag == "O":
        return None
    if not tag or tag != tag.strip():
        return "is empty" if not tag.strip() else "has whitespace around it"
    head, dash, rest = tag.partition("-")
    if head in _PREFIXES:
        return "has no entity type after its prefix" if dash and not rest.strip() else None
    if bare_types:
        return None
    return "is not O and has no scheme prefix (B-, I-, E-, S-, L-, U-)"


def spans(tags: list[str]) -> list[tuple[int, int, str]]:
    """Entities as (start, end exclusive, type) from tags in IO, BIO (IOB2 or IOB1) or BIOES/BILOU.

    Decoding is lenient, as in conlleval: a token continues the open entity only if it is I- or E-
    of the same type; anything else closes it, and any non-O token that does not continue one opens
    a new entity. An entity also closes after an E- or S- token. So "I-X I-X" (IO) is one entity,
    "B-X B-X" two, and an I- after O starts an entity.
    """
    found = []
    start, open_type = None, ""
    for i, tag in enumerate(tags):
        prefix, entity_type = _parse_tag(tag)
        if not (start is not None and prefix in ("I", "E") and entity_type == open_type):
            if start is not None:
                found.append((start, i, open_type))
            start, open_type = (None, "") if prefix == "O" else (i, entity_type)
        if prefix in ("E", "S") and start is not None:
            found.append((start, i + 1, open_type))
            start = None
    if start is not None:
        found.append((start, len(tags), open_type))
    return found


def to_scheme(tags: list[str], scheme: str) -> list[str]:
    """Re-encode a tag sequence in any scheme as "io", "bio" (IOB2) or "bioes".

    IO cannot mark where one entity ends and an adjacent one of the same type starts, so encoding
    such a pair as IO merges it into one entity when decoded again.
    """
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    out = ["O"] * len(tags)
    for start, end, entity_type in spans(tags):
        suffix = f"-{entity_type}" if entity_type else ""
        out[start:end] = [f"I{suffix}"] * (end - start)
        if scheme == "io":
            continue
        if scheme == "bioes" and end - start == 1:
            out[start] = f"S{suffix}"
            continue
        out[start] = f"B{suffix}"
        if scheme == "bioes":
            out[end - 1] = f"E{suffix}"
    return out
