"""What every section shares: strict keys, documented fields, paths (plain or inside an installed package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


def unique_names(items: list, what: str) -> list:
    """`items` (with a `name`) unchanged, or a ValueError naming the repeated names (or a name that
    cannot be a folder name: names become folders of the run directory)."""
    names = [path_component(item.name, f"{what} name") for item in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique, repeated: {repeated}")
    return items


def resolve_path(value: str) -> Path:
    """Resolve `pkg://package/sub/path` (inside an installed Python package) or a plain path.

    The package is located on `sys.path` without importing anything: only the top-level name is
    looked up (which runs no module code), and a dotted name's further parts must be folders
    below it. FileNotFoundError when the package is not installed."""
    if not value.startswith("pkg://"):
        return Path(value)
    package, _, rest = value[len("pkg://") :].partition("/")
    top, *inner = package.split(".")
    spec = importlib.util.find_spec(top) if top.isidentifier() else None  # a top-level name imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package '{package}' is not installed (needed for {value})")
    folder = Path(list(spec.submodule_search_locations)[0]).joinpath(*inner)
    if not folder.is_dir():
        raise FileNotFoundError(f"Python package '{package}' is not installed (needed for {value})")
    return folder / rest


def path_component(value: str, what: str) -> str:
    """`value` unchanged if it can name a folder or file inside the run directory (a run, arm,
    task or model name); a ValueError for separators, `..`, or an empty name."""
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\x00" in value:
        raise ValueError(f"{what} {value!r} must be a plain name (it names a folder in the run directory): "
                         "no '/', '\\', and not '.' or '..'")
    return value


def existing_file(value: str) -> str:
    """`value` unchanged if the path (plain or `pkg://`) exists, else a ValueError naming it."""
    if not resolve_path(value).exists():
        raise ValueError(f"file not found: {value}")
    return value
