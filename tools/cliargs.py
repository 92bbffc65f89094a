"""What every command line shares: a parser whose errors are one line, and value checks.

Every ``python -m ...`` entry point builds its parser with :class:`ArgumentParser` and checks its
numbers with the ``type=`` functions below, so a bad value is refused the same way everywhere,
before any model loads::

    $ python -m graphs.thi --query "a man" -k 0
    error: argument -k: must be an integer >= 1, not '0' (python -m graphs.thi --help)

Flag names mean one thing in every command (docs/usage.md, "Flags shared by every command"):
``--json`` prints one JSON object on stdout; ``--out FILE`` writes the command's result to a file.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr,
    ``error: MESSAGE (PROG --help)``, with exit status 2 (argparse's own prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} ({self.prog} --help)\n")


def _number(kind: type, text: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, not {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """A ``type=`` for integers >= ``low``."""

    def check(text: str) -> int:
        value = int(_number(int, text))
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, not {text!r}")
        return value

    check.__name__ = f"integer >= {low}"  # argparse names the type in some messages
    return check


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A ``type=`` for numbers within ``[low, high]`` (an end is excluded when ``*_open``; use
    ``math.inf`` for no upper bound)."""
    span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    words = (f"> {low:g}" if low_open else f">= {low:g}") if high == math.inf else f"within {span}"

    def check(text: str) -> float:
        value = float(_number(float, text))
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise argparse.ArgumentTypeError(f"must be a number {words}, not {text!r}")
        return value

    check.__name__ = f"number {words}"
    return check


#: k, rounds, --limit, epochs, workers...: at least one
positive_int = int_at_least(1)
#: seeds (numpy's generators take no negative seed), counts that may be zero
non_negative_int = int_at_least(0)
#: shares, weights, probabilities, confidences: within [0, 1]
unit_float = float_in(0.0, 1.0)
#: seconds, learning rates: above zero
positive_float = float_in(0.0, math.inf, low_open=True)
#: a gate on a cosine similarity: within [-1, 1]
cosine = float_in(-1.0, 1.0)


def add_output_arguments(parser: argparse.ArgumentParser, what: str, legacy_json: bool = False,
                         always_json: bool = False) -> None:
    """``--json`` (print ``what`` as one JSON object on stdout instead of text) and ``--out FILE``
    (also write it there). ``legacy_json``: ``--json FILE`` is still read as ``--out FILE``, with a
    warning (the evaluation commands' form until 2026-11-29; see :func:`legacy_json_file`).
    ``always_json``: the command prints JSON either way (``--json`` is accepted, changes nothing)."""
    doing = (f"print {what} as JSON on stdout (it always does)" if always_json
             else f"print {what} as JSON on stdout instead of text")
    if legacy_json:
        parser.add_argument("--json", nargs="?", const=True, default=False, metavar="FILE",
                            help=f"{doing}; --json FILE, the old form, still writes FILE like --out FILE")
    else:
        parser.add_argument("--json", action="store_true", help=doing)
    parser.add_argument("--out", metavar="FILE.json", help=f"also write {what} to this JSON file")


def legacy_json_file(args: argparse.Namespace, prog: str) -> None:
    """Read the old ``--json FILE`` as ``--out FILE`` (``args.json`` becomes False): one warning line
    on stderr. Refuses ``--json FILE`` together with ``--out`` (SystemExit 2, one line)."""
    if isinstance(args.json, str):
        if args.out:
            sys.stderr.write(f"error: --json FILE is the old form of --out FILE; give --out only ({prog} --help)\n")
            raise SystemExit(2)
        sys.stderr.write(f"warning: --json FILE is deprecated: use --out {args.json} (--json alone prints JSON)\n")
        args.out, args.json = args.json, False
