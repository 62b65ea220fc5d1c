"""What every section shares: strict keys, documented fields, fingerprinting, paths (plain or inside an installed package)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from domainlm.io import is_url, url_exists


class Fingerprinted(dict):
    """A section as a stage's fingerprint records it. `skipped`: the values of the keys it leaves
    out as bookkeeping, which a record written before those keys were declared bookkeeping still
    holds (the pipeline reads such records as the same work, see `pipeline.same_work`)."""

    def __init__(self, data: dict[str, Any], skipped: dict[str, Any]):
        super().__init__(data)
        self.skipped = skipped


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    BOOKKEEPING: ClassVar[tuple[str, ...]] = ()
    """Keys that never change what a stage computes, only when it saves, keeps, logs, probes or
    shows progress: no fingerprint holds them, so changing one resumes the work instead of redoing
    it (a killed run resumes bit-identically; tests/test_fingerprints.py)."""
    LATER: ClassVar[dict[str, tuple[str, ...]]] = {}
    """Keys added after runs existed, each group under the key whose default means they are
    unused: fingerprints leave the group out while that key is at its default, so the runs made
    before them keep their fingerprints."""

    def fingerprinted(self, leave_out: tuple[str, ...] = ()) -> Fingerprinted:
        """The section as a fingerprint records it: the `model_dump` without the bookkeeping keys
        (and `leave_out`, keys another stage reads), a `LATER` group only when its key is away from
        its default, nested sections the same way."""
        data, skipped, fields = self.model_dump(mode="json"), {}, type(self).model_fields
        unused = {key for gate, keys in self.LATER.items()
                  if getattr(self, gate) == fields[gate].get_default(call_default_factory=True) for key in keys}
        for name in fields:
            value = getattr(self, name)
            if name in self.BOOKKEEPING or name in leave_out:
                skipped[name] = data.pop(name)
            elif name in unused:
                del data[name]
            elif isinstance(value, Section):
                data[name] = value.fingerprinted()
            elif isinstance(value, list) and any(isinstance(item, Section) for item in value):
                data[name] = [item.fingerprinted() for item in value]
        return Fingerprinted(data, skipped)


def picked(kind: type, section: BaseModel):
    """The settings dataclass `kind` filled from the section's keys of the same names: a part of a
    stage takes the few settings it reads, not the whole section."""
    return kind(**{f.name: getattr(section, f.name) for f in dataclasses.fields(kind)})


def unique_names(items: list, what: str) -> list:
    """`items` (with a `name`) unchanged, or a ValueError naming the repeated names (or a name that
    cannot be a folder name: names become folders of the run directory)."""
    names = [path_component(item.name, f"{what} name") for item in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique, repeated: {repeated}")
    return items


def resolve_path(value: str) -> Path | str:
    """Resolve `pkg://package/sub/path` (inside an installed Python package) or a plain path.

    The package is located on `sys.path` without importing anything: only the top-level name is
    looked up (which runs no module code), and a dotted name's further parts must be folders
    below it. FileNotFoundError when the package is not installed. A URL (`io.is_url`, read
    through fsspec) comes back unchanged, as a string (a Path would merge its `//`)."""
    if is_url(value):
        return value
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


def existing_file(value: str, context: Any = None) -> str:
    """`value` unchanged if the path (plain or `pkg://`) exists, or is among the paths an earlier
    experiment arm will write (`context["produced"]`, while a recipe's arms are validated at
    load), else a ValueError naming it."""
    produced = (context or {}).get("produced", ()) if isinstance(context, dict) else ()
    if value not in produced and not input_exists(value):
        raise ValueError(f"file not found: {value}")
    return value


def input_exists(value: str) -> bool:
    """Whether a configured input exists: a URL asked of its store, else a plain or `pkg://` path."""
    return url_exists(value) if is_url(value) else resolve_path(value).exists()
