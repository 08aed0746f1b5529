"""Typed user errors.

Every mistake a user can make (a bad file, a bad value, an impossible request)
raises a :class:`PyEngineError` subclass whose message names the file or
option, the bad value and what is accepted.  The CLI prints such errors as one
``Error: ...`` line and exits 1; anything else escaping is a bug and keeps its
traceback.  Warnings of something a user should know but that does not stop the
work are :class:`PyEngineWarning` subclasses (``warnings.warn``); the CLI prints
each one once as a ``Warning: ...`` line.
"""

from __future__ import annotations

__all__ = [
    "BandWarning",
    "CatalogError",
    "ConfigError",
    "ExportCheckError",
    "FitsFormatError",
    "InputChangedError",
    "InputFileError",
    "ModelFileError",
    "ModelFileWarning",
    "MosaicMismatchError",
    "OutputError",
    "PixelScaleError",
    "PixelScaleWarning",
    "PyEngineError",
    "PyEngineWarning",
    "ResumeError",
    "RunnerUnavailable",
    "ScanOutputError",
    "WCSError",
]


class PyEngineError(Exception):
    """Base class of every error caused by user input rather than a bug."""


class InputFileError(PyEngineError):
    """A file is missing, unreadable or not what was asked for."""


class InputChangedError(InputFileError):
    """An input file shrank or was modified after it was opened (mid-scan)."""


class FitsFormatError(InputFileError):
    """A file is not valid FITS, is truncated, or its HDU cannot serve as an image."""


class WCSError(InputFileError):
    """A header's celestial WCS is missing or cannot be interpreted."""


class MosaicMismatchError(PyEngineError):
    """Band images do not share one pixel grid (shape or WCS)."""


class ConfigError(PyEngineError):
    """An option or argument has a value outside what is accepted."""


class PixelScaleError(MosaicMismatchError):
    """An image's pixel scale differs from the model's by more than the guard allows."""


class ModelFileError(InputFileError):
    """A model file is corrupt, incomplete, or describes something pyengine cannot run."""


class CatalogError(InputFileError):
    """A catalog cannot be read or lacks what is needed (positions, labels)."""


class OutputError(PyEngineError):
    """An output cannot be written (directory missing, not writable, bad extension)."""


class ScanOutputError(OutputError):
    """A journal tile or final output could not be written after tiles were journalled:
    they are kept, and ``--resume`` continues once the cause (say, a full disk) is fixed.
    ``reason`` is the write's own message, ``journal`` the folder, ``done`` the tiles kept."""

    def __init__(self, reason: str, journal, done: int, resume: str = "rerun with --resume"):
        super().__init__(f"{reason}; the {done} completed tiles are kept in {journal}; fix "
                         f"that (e.g. free disk space), then {resume}")
        self.reason, self.journal, self.done, self.resume = reason, journal, done, resume

    def __reduce__(self):  # pickled whole (a Dask worker's error reaches the client)
        return type(self), (self.reason, self.journal, self.done, self.resume)


class ResumeError(PyEngineError):
    """A resume journal is missing, damaged, or belongs to different inputs or options."""


class RunnerUnavailable(ConfigError):
    """The runner asked for cannot work here (library, device or file missing)."""


class ExportCheckError(PyEngineError):
    """An exported graph disagrees with its model beyond the stated tolerance."""


class PyEngineWarning(UserWarning):
    """Base class of pyengine's warnings to users (printed by the CLI as one line)."""


class ModelFileWarning(PyEngineWarning):
    """A model file loads but cannot be fully checked (written before its checksum existed)."""


class PixelScaleWarning(PyEngineWarning):
    """An image scanned although its pixel scale differs from the model's
    (``--allow-pixel-scale-mismatch``)."""


class BandWarning(PyEngineWarning):
    """Band names that contradict the images' own FILTER/BAND keys (accepted, but said)."""
