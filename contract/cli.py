"""The one error convention of every command: `error: <what, naming the file>` on one line, exit status 2.

    if __name__ == "__main__":
        sys.exit(run_main(main))

Bad arguments (argparse), bad configs and missing or corrupt inputs all end the same way; no traceback
unless asked for with `--debug` (anywhere on the command line; removed before `main` parses it) or
SPANBERT_DEBUG=1 in the environment. A traceback is a bug report, not a message for the user.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "SPANBERT_DEBUG"
EXIT_ERROR = 2  # argparse's status for bad usage; the same for bad inputs
# Errors whose message is the whole story (they name the file / field); anything else also gets its type.
_PLAIN = (ValueError, OSError, LookupError, RuntimeError)


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
    """Call main(argv) (default: sys.argv[1:] without --debug); failures -> one `error:` line, status 2."""
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
        message = str(e.code)  # sys.exit("message"): an error in the command's own words
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the point of this wrapper
        message = one_line(e)
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return EXIT_ERROR
