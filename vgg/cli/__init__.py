"""``python -m vgg``: the command line over the same engine and run folders as the app.

Subcommands: ``summary``, ``lr-find``, ``train``, ``evaluate RUN``, ``predict RUN_OR_CHECKPOINT
IMAGE...``, ``export RUN --format {pt,onnx} -o FILE``, ``runs`` and ``dataset``.
``python -m vgg <command> --help`` lists each one's options.

The library never prints; this package owns all output. ``parser`` builds the command line from
the config dataclasses, ``commands`` does the work and returns one result object per command,
``progress`` draws a tqdm bar on stderr and turns Ctrl-C into a clean cancel. Results go to
stdout as text or (``--json``) as exactly one JSON object. Every error a user can cause ends as
one line ``error: <message>`` on stderr: exit 2 for a malformed command line (as argparse), 1 for
anything else, 130 after Ctrl-C (a training is cancelled cleanly and its run folder kept). Set
``VGG_DEBUG=1`` to see tracebacks instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

from vgg.errors import VGGError, one_line
from vgg.files import jsonable

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def describe_exception(exc: BaseException) -> str:
    """The one line shown for an error: a VGGError's own text, else ``Type: message``."""
    if isinstance(exc, VGGError):
        return one_line(exc, 400) or exc.__class__.__name__
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "out of memory; choose a smaller batch size or input size"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = one_line(exc, 400)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: TextIO | None = None, line: str | None = None) -> None:
    stream = file or sys.stderr
    try:
        stream.write(f"warning: {one_line(message, 300)}\n")
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``python -m vgg``; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    from vgg.cli.commands import COMMANDS
    from vgg.cli.parser import build_parser
    from vgg.cli.progress import Interrupted

    out = out or sys.stdout
    err = err or sys.stderr
    debug = os.environ.get("VGG_DEBUG", "") not in ("", "0")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # --help and usage errors
            args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2, already printed on one line)
        return int(stop.code) if isinstance(stop.code, int) else EXIT_USAGE
    previous = warnings.showwarning
    if not debug:
        warnings.showwarning = _one_line_warning
    try:
        result = COMMANDS[args.command](args, err)
        if args.json:
            out.write(json.dumps(jsonable(result.json(), finite=True), indent=2, ensure_ascii=False,
                                 allow_nan=False) + "\n")
        else:
            out.write(result.text())
        out.flush()
        for line in result.errors:
            err.write(line + "\n")
        return result.exit_code
    except (KeyboardInterrupt, Interrupted) as stop:
        cause = stop.__cause__
        err.write(f"{cause}\n" if isinstance(cause, VGGError) else "\ninterrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `python -m vgg runs | head -1`
        return EXIT_OK
    except (VGGError, OSError, RuntimeError, ValueError, MemoryError) as exc:
        if debug:
            raise
        err.write(f"error: {describe_exception(exc)}\n")
        return EXIT_ERROR
    except Exception as exc:  # a bug: still one line, and how to see the details
        if debug:
            raise
        err.write(f"error: internal error ({describe_exception(exc)}); run with VGG_DEBUG=1 for details\n")
        return EXIT_ERROR
    finally:
        warnings.showwarning = previous
        try:
            out.flush()
        except (OSError, ValueError):
            pass
