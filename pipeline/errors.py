"""Error types and exit codes shared by every ``medseg`` command.

Every error a user can cause is raised as a :class:`PipelineError` subclass whose message is one line that names the
file (or option) and the problem. :func:`pipeline.cli.main` prints that line, without a traceback unless ``--debug``
is given, and exits with the class's ``exit_code``.

Exit codes (documented in the README's Troubleshooting section):

====  =====================================================================
code  meaning
====  =====================================================================
0     success
1     a batch finished, but one or more cases failed (each was reported)
2     bad command line (unknown option, missing argument)
3     bad input data: unreadable/corrupt file, wrong shape, empty folder...
4     bad model: checkpoint does not fit the network, bundle config error
5     resource limit: out of memory (the message suggests ``--streaming``)
130   interrupted (Ctrl-C / SIGTERM); finished outputs are kept
====  =====================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CASES_FAILED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_MODEL = 4
EXIT_RESOURCE = 5
EXIT_INTERRUPTED = 130


class PipelineError(Exception):
    """Base class: a user-facing error with a one-line message and an exit code."""

    exit_code: int = EXIT_INPUT

    def __init__(self, message: str, *, path: object | None = None) -> None:
        self.path = None if path is None else str(path)
        text = " ".join(str(message).split())  # always one line
        if self.path is not None and self.path not in text:
            text = f"{self.path}: {text}"
        super().__init__(text)


class UsageError(PipelineError):
    """Bad or inconsistent command-line options."""

    exit_code = EXIT_USAGE


class InputDataError(PipelineError):
    """An input file or folder is missing, unreadable, or has the wrong content."""

    exit_code = EXIT_INPUT


class ModelError(PipelineError):
    """A checkpoint, network or bundle config that cannot be used."""

    exit_code = EXIT_MODEL


class ResourceError(PipelineError):
    """The job does not fit the machine (memory, disk)."""

    exit_code = EXIT_RESOURCE
