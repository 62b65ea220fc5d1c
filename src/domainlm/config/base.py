"""What every section shares: strict keys, documented fields, paths (plain or inside an installed package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


def unique_names(items: list, what: str) -> list:
    """`items` (with a `name`) unchanged, or a ValueError naming the repeated names."""
    names = [item.name for item in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique, repeated: {repeated}")
    return items


def resolve_path(value: str) -> Path:
    """Resolve `pkg://package/sub/path` (inside an installed Python package) or a plain path."""
    if value.startswith("pkg://"):
        package, _, rest = value[len("pkg://") :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"Python package '{package}' is not installed (needed for {value})")
        return Path(list(spec.submodule_search_locations)[0]) / rest
    return Path(value)


def existing_file(value: str) -> str:
    """`value` unchanged if the path (plain or `pkg://`) exists, else a ValueError naming it."""
    if not resolve_path(value).exists():
        raise ValueError(f"file not found: {value}")
    return value
