"""One family of user-facing errors.

Every `DomainlmError` is something the user can fix (a recipe key, an input file, a model
directory, a learning rate): its message is one line that names the key, file or line and what
was expected. The CLI prints it as `domainlm: error: ...` and exits with code 2; `--debug` shows
the traceback too. Anything else that escapes is a bug in domainlm and keeps its traceback.
"""

from __future__ import annotations


class DomainlmError(Exception):
    """A problem the user can fix; the message says where and what was expected."""


class ConfigError(DomainlmError, ValueError):
    """A recipe that cannot be used; the message names the key or path and what was expected."""


class InputError(DomainlmError, ValueError):
    """Input that cannot be read; the message names the file (and line, where there is one)."""


class StageError(DomainlmError, RuntimeError):
    """A stage cannot run (for example, the artifacts of a stage it reads are missing)."""


class ModelError(DomainlmError, RuntimeError):
    """A model directory or checkpoint that cannot be used (missing, corrupt, or an unsupported
    architecture); the message names the directory and the cause."""


class TrainingDiverged(DomainlmError, RuntimeError):
    """Too many consecutive pretraining steps produced a non-finite loss."""


class UnsupportedTask(DomainlmError, ValueError):
    """A model kind that does not apply to a task type (reported as skipped, not as a failure)."""
