"""Make untrusted text inert before it reaches a terminal, a log or a report.

Strings from an MLLM server, a dataset's annotations or a file name may carry terminal escape
sequences (``ESC [ 2 J`` clears the screen, ``ESC ] 0 ; title BEL`` sets the window title), other
control characters, Unicode direction overrides that make text read differently from what it is,
or (file names that are not valid UTF-8, decoded with ``surrogateescape``) lone surrogates that
make ``print`` raise ``UnicodeEncodeError``. :func:`printable` removes all of them;
:func:`printable_path` does the same for a path and shows undecodable bytes as ``\\xNN``.

>>> printable("Yes\\x1b[2J\\x1b]0;pwned\\x07.")
'Yes.'
>>> printable("line one\\nline two")
'line one line two'
>>> printable("line one\\nline two", newlines=True)
'line one\\nline two'
>>> printable_path(b"caf\\xe9.jpg")
'caf\\\\xe9.jpg'
"""

from __future__ import annotations

import os
import re
import unicodedata

__all__ = ["printable", "printable_path"]

# ECMA-48 escape sequences, as terminals parse them:
#  * CSI: ESC [ (or the 8-bit C1 0x9b), parameter bytes 0x30-0x3f, intermediates 0x20-0x2f, a final
#    byte 0x40-0x7e (colours, cursor moves, "clear screen");
#  * OSC, DCS, SOS, PM, APC: ESC ] / P / X / ^ / _ (or C1 0x9d, 0x90, 0x98, 0x9e, 0x9f), a string, then
#    BEL or the string terminator ESC \ (or C1 0x9c) (window titles, hyperlinks, clipboard writes);
#    an unterminated string runs to the end of the text, as a terminal would swallow it;
#  * any other ESC + one character (ESC c resets the terminal).
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c|$)"
    r"|\x1b[\x20-\x7e]?",
    re.S)
_SPACES = re.compile(r"[ \t]+")
_BREAKS = re.compile(r"\r\n|[\r\n\u2028\u2029\x85\x0b\x0c]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _keep(ch: str, newlines: bool) -> bool:
    if ch == "\n":
        return newlines
    cat = unicodedata.category(ch)
    # Cc: C0/C1 controls and DEL; Cf: format characters (direction overrides and isolates,
    # zero-width joiners and spaces, the BOM); Cs: lone surrogates; Co/Cn: private use, unassigned
    return cat not in ("Cc", "Cf", "Cs", "Co", "Cn")


def printable(text: object, newlines: bool = False, max_len: int | None = None) -> str:
    """``text`` with every escape sequence and control or format character removed.

    Line breaks of any kind (``\\r\\n``, ``\\r``, U+2028, ...) become ``\\n`` when ``newlines`` is
    true and a space otherwise; runs of spaces and tabs become one space; the result is stripped.
    Lone surrogates become U+FFFD. With ``max_len``, a longer result is cut to ``max_len``
    characters ending in an ellipsis. Non-strings are converted with ``str`` first; ``None`` gives
    ``""``.
    """
    if text is None:
        return ""
    s = text if isinstance(text, str) else str(text)
    s = _ESCAPES.sub("", s)
    s = _SURROGATE.sub("\ufffd", s)
    s = _BREAKS.sub("\n", s).replace("\t", " ")
    s = "".join(ch for ch in s if ch == " " or _keep(ch, True))
    if newlines:
        s = "\n".join(_SPACES.sub(" ", line).strip() for line in s.split("\n"))
        s = re.sub(r"\n{3,}", "\n\n", s).strip()
    else:
        s = _SPACES.sub(" ", s.replace("\n", " ")).strip()
    if max_len is not None and len(s) > max_len:
        s = s[: max(0, max_len - 1)].rstrip() + "\u2026"
    return s


def printable_path(path: str | bytes | os.PathLike) -> str:
    """A path as text a terminal shows safely: undecodable bytes as ``\\xNN`` (so the file can still
    be told apart and found), then :func:`printable`."""
    raw = os.fsencode(path)
    text = raw.decode("utf-8", errors="backslashreplace")
    return printable(text)
