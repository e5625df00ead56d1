"""The one error convention of every command: `error: <what, naming the file>` on one line, and an exit
status that says whose fault it was (docs/integrity.md has the table):

    0    done
    2    bad input: arguments, configs, missing / corrupt / foreign files, a run directory in use, a resume
         that would change the run's plan (EXIT_BAD_INPUT)
    3    runtime failure: a full disk or I/O error (ENOSPC, EIO, ...), a lost DDP peer, the pipeline's
         accounting not adding up, too many non-finite steps, any unexpected error (EXIT_RUNTIME)
    130  interrupted (Ctrl-C)

    if __name__ == "__main__":
        sys.exit(run_main(main))

No traceback unless asked for with `--debug` (anywhere on the command line; removed before `main`
parses it) or SPANBERT_DEBUG=1 in the environment. A traceback is a bug report, not a message for the user.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "SPANBERT_DEBUG"
EXIT_BAD_INPUT = 2  # argparse's status for bad usage; the same for bad inputs
EXIT_ERROR = EXIT_BAD_INPUT  # the older name
EXIT_RUNTIME = 3  # the input was fine, the run failed: disk, I/O, a lost peer, accounting
EXIT_INTERRUPTED = 130
# OS errors that are the machine's, not the user's input: a full disk, a failing device, a quota.
RUNTIME_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.ENOMEM, errno.EPIPE,
                            errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT})
# Errors whose message is the whole story (they name the file / field); anything else also gets its type.
_PLAIN = (ValueError, OSError, LookupError, RuntimeError)


def exit_status(e: BaseException) -> int:
    """The status for an error that ended a command (the table in the module docstring)."""
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(e, OSError):
        return EXIT_RUNTIME if e.errno in RUNTIME_ERRNOS else EXIT_BAD_INPUT
    if isinstance(e, ValueError | LookupError):
        return EXIT_BAD_INPUT
    return EXIT_RUNTIME  # RuntimeError (a dead DDP peer, accounting, non-finite), or a bug


class UsageError(ValueError):
    """argparse's complaint, raised instead of printing the usage block and exiting."""


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(e: BaseException) -> str:
    """The message of `e` on one line. An exception re-raised from a DataLoader worker carries the worker's
    whole traceback in its message; the original message is its last line."""
    msg = str(e).strip()
    if "Original Traceback" in msg:
        last = msg.splitlines()[-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    msg = " ".join(msg.split())  # newlines and runs of spaces -> one space
    if isinstance(e, RuntimeError):  # Beam re-raises a worker's error as "package.module.Type: message"
        msg = re.sub(r"^(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*: ", "", msg)
    if not msg:
        return type(e).__name__
    return msg if isinstance(e, _PLAIN) else f"{type(e).__name__}: {msg}"


@contextlib.contextmanager
def _argparse_raises() -> Iterator[None]:
    def error(self: argparse.ArgumentParser, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")

    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original  # type: ignore[method-assign]


def run_main(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Call main(argv) (default: sys.argv[1:] without --debug); failures -> one `error:` line, and the
    status of `exit_status` (2 bad input, 3 runtime failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    if debug:
        return main(argv) or 0
    try:
        with _argparse_raises():
            return main(argv) or 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):  # --help, or a command's own exit status
            return e.code or 0
        message, status = str(e.code), EXIT_BAD_INPUT  # sys.exit("message"): an error in the command's own words
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the point of this wrapper
        message, status = one_line(e), exit_status(e)
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return status
