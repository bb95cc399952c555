"""One error hierarchy for input a user can fix.

Every error in :class:`VprError` means "bad input" (a damaged checkpoint, a map of another model,
a bag without the topic, an option out of range): the command line prints its one-line message and
exits with status 2, and the node logs it and drops or refuses the input. Any other exception is a
bug and keeps its traceback. The classes also derive from the builtin they refine (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations


class VprError(Exception):
    """Base of every error caused by input (files, options, messages) rather than by a bug."""


class InputError(VprError, ValueError):
    """An option or argument value out of its range or of the wrong form."""


class MissingFileError(VprError, FileNotFoundError):
    """A file or folder named by the user does not exist."""


class CheckpointError(VprError, ValueError):
    """A file or state dict that is not a usable checkpoint for the requested model."""


class MapError(VprError, ValueError):
    """A map that cannot be used as asked (bad folder, wrong model, damaged files)."""


class ModelMismatchError(MapError):
    """The map was built by another model: its descriptors are not comparable."""


class CorruptMapError(MapError):
    """Map files missing, truncated or inconsistent with each other."""


class MapSaveError(MapError):
    """A map could not be written (disk full, permissions); the map in memory is intact."""


class BagError(VprError, ValueError):
    """A bag that cannot be read as asked: missing or damaged file, missing topic, wrong type."""


class BadFrame(VprError, ValueError):
    """An image message that cannot become an RGB frame; ``reason`` is a short, countable category."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class DatasetError(VprError, FileNotFoundError):
    """A benchmark dataset whose files are missing or do not follow the expected layout."""


class ModelOutputError(VprError, ValueError):
    """The model produced non-finite descriptors (damaged weights, an extreme input): never stored."""


class ExportError(VprError, ValueError):
    """An exported model file that does not reproduce the PyTorch model within its tolerance."""
