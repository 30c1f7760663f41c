"""The errors a user's mistake raises. The command line prints them as one ``error:`` line and
exits with code 2 (the traceback only with ``HYDRA_FULL_ERROR=1``); every message names the
problem and the fix."""
from __future__ import annotations

import errno


class UserError(ValueError):
    """A mistake in what was asked for: a setting, a file, an input."""


class ConfigError(UserError):
    """A setting that is unknown, of the wrong type or out of range."""


class SettingsError(UserError):
    """Settings that conflict with the record of a run folder or a checkpoint (core.records)."""


class InputError(UserError):
    """An input file or tensor that cannot be used: empty, truncated, wrongly shaped or scaled."""


class MissingFileError(InputError, FileNotFoundError):
    """A file the run needs (a checkpoint, a samples file, a data file) is not there."""


class DiskFullError(OSError):
    """The disk filled up while a file was written; the previous version of the file is kept."""

    def __init__(self, path):
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}; the previous "
                         "version of the file is kept. Free some space, then run again (training "
                         "resumes with train.resume=true)")
        self.path = path

    def __str__(self):
        return self.strerror


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` or an exception it was raised from is ENOSPC (torch.save wraps the
    OSError of a failed write in a RuntimeError that only mentions it in its text)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
