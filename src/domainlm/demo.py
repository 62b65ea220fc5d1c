"""Built-in demo data: the running Python's own documentation as a small "domain".

Every machine with Python has it offline: the docstrings of the standard library (read from source
with `ast`, nothing is imported or executed) and the language reference topics that `pydoc` ships
(`pydoc_data.topics`). Two tasks are derived from them, reproducibly:

- `docstring-module` (classification): which package a docstring documents, among ten large ones
  (tkinter, idlelib, asyncio, ...). Every package name is masked out of the text, so the label
  must be inferred from what the text talks about, not read off it.
- `docstring-params` (token classification): tag the words of a function's docstring that name one
  of its parameters (`PARAM`). The same word ("data", "timeout", "name") is a parameter in one
  docstring and plain English in another, so a word list cannot recover the tags; context can.

Docstrings are split train/dev/test by a hash of their qualified name; the corpus keeps only the
train split, so no dev/test text of either task is seen in pretraining.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Packages with the most docstrings that exist in every Python from 3.10 to 3.13.
MODULE_LABELS = (
    "asyncio", "email", "idlelib", "importlib", "logging",
    "multiprocessing", "tkinter", "turtle", "unittest", "xml",
)
_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}
_NAME_MASK = re.compile(r"\b(" + "|".join(MODULE_LABELS) + r")\b", re.IGNORECASE)
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Docstring:
    qualname: str  # e.g. "asyncio.tasks.gather"
    package: str  # top-level package or module
    text: str
    params: tuple[str, ...]  # parameter names of a function (empty for classes and modules)


def split_of(key: str) -> str:
    """Deterministic 80/10/10 split by hash of a key."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return tuple(n for n in names if n not in ("self", "cls"))


def _walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.AST]]:
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}.{node.name}"
            yield name, node
            yield from _walk(node.body, name)


@lru_cache(maxsize=1)
def stdlib_docstrings() -> tuple[Docstring, ...]:
    """Every docstring of at least five words in the standard library's Python sources."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_PARTS & set(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        package = rel.parts[0].removesuffix(".py")
        nodes = [(module, tree), *_walk(tree.body, module)]
        for qualname, node in nodes:
            text = ast.get_docstring(node)
            if not text or len(text.split()) < 5:
                continue
            params = _parameters(node) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else ()
            found.append(Docstring(qualname, package, inspect.cleandoc(text), params))
    return tuple(found)


def corpus_documents() -> Iterator[dict]:
    """The demo corpus: train-split docstrings plus the language reference topics."""
    import pydoc_data.topics

    for doc in stdlib_docstrings():
        if split_of(doc.qualname) == "train":
            yield {"id": doc.qualname, "text": doc.text}
    for name, text in sorted(pydoc_data.topics.topics.items()):
        # Topics are long reference pages; paragraphs make documents of a useful size.
        for i, paragraph in enumerate(p for p in re.split(r"\n\s*\n", text) if p.strip()):
            yield {"id": f"topics.{name}.{i}", "text": paragraph}


def module_task(split: str) -> list[dict[str, str]]:
    """Classification examples of one split: {"text": docstring with package names masked,
    "label": its package}."""
    return [
        {"text": _NAME_MASK.sub("[module]", doc.text), "label": doc.package}
        for doc in stdlib_docstrings()
        if doc.package in MODULE_LABELS and split_of(doc.qualname) == split
    ]


def params_task(split: str, max_words: int = 96) -> list[dict[str, list[str]]]:
    """Token-classification examples of one split: {"tokens": words, "tags": IOB2 tags}, B-PARAM
    on words that name a parameter of the function."""
    examples = []
    for doc in stdlib_docstrings():
        if not doc.params or split_of(doc.qualname) != split:
            continue
        words = _WORD.findall(doc.text)[:max_words]
        tags = ["B-PARAM" if w in doc.params else "O" for w in words]
        if "B-PARAM" in tags:
            examples.append({"tokens": words, "tags": tags})
    return examples


# The demo's tasks by name (`format: python-docs` in a recipe): each gives a split's examples.
TASKS = {"docstring-module": module_task, "docstring-params": params_task}
