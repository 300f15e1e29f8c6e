"""The ``wiseseg`` command line: a thin layer over the Python API.

Every user-fixable problem (:class:`wiseseg.errors.WisesegError`) is printed as one line,
``error: <message>``, with exit status 2. Set ``WISESEG_DEBUG=1`` (or pass ``--debug``) to see
tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from wiseseg.commandline import COMMAND_ORDER, COMMANDS
from wiseseg.errors import WisesegError

log = logging.getLogger("wiseseg")


def _discover_commands() -> None:
    import importlib
    import importlib.util
    import pkgutil

    import wiseseg

    for mod in pkgutil.iter_modules(wiseseg.__path__):
        if mod.ispkg and importlib.util.find_spec(f"wiseseg.{mod.name}.commands") is not None:
            importlib.import_module(f"wiseseg.{mod.name}.commands")
    if importlib.util.find_spec("wiseseg.commands") is not None:
        importlib.import_module("wiseseg.commands")


# --------------------------------------------------------------------------- entry point

class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too: ``error: <problem> (see <prog> --help)``, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from wiseseg import __version__

    parser = _Parser(
        prog="wiseseg",
        description="Instance segmentation from image-level labels (WISE).",
    )
    parser.add_argument("--version", action="version", version=f"wiseseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _discover_commands()
    rank = {n: i for i, n in enumerate(COMMAND_ORDER)}
    for name in sorted(COMMANDS, key=lambda n: (rank.get(n, len(rank)), n)):
        help_text, fn, configure = COMMANDS[name]
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        configure(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from wiseseg.allocator import keep_freed_memory

    keep_freed_memory()  # tensors reuse freed memory instead of faulting in fresh pages
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    debug = args.debug or os.environ.get("WISESEG_DEBUG") == "1"
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that closed the pipe shows here, not at exit
        return code
    except BrokenPipeError:  # `wiseseg data-stats | head -1`: the reader has all it wants
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as a program killed by the closed pipe reports
    except WisesegError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk outside the atomic writer (logs, caches, workers)
        from wiseseg.io import disk_full_message, is_disk_full

        if debug or not is_disk_full(e):
            raise
        print(f"error: {e.filename or 'writing'}: {disk_full_message(e)}; free space and "
              "rerun (finished work is kept)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (finished work is kept; rerun to resume)", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of what is still
    buffered does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (captured in tests)
        pass


if __name__ == "__main__":  # pragma: no cover
    # Run through the imported module so subcommands register where main() looks for them.
    from wiseseg.cli import main as _main

    sys.exit(_main())
