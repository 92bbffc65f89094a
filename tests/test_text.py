"""tools.text: untrusted text made inert for terminals."""

from __future__ import annotations

import os

import pytest

from tools.text import printable, printable_path


@pytest.mark.parametrize("raw,clean", [
    ("Yes.", "Yes."),
    ("Yes\x1b[2J\x1b[H.", "Yes."),  # clear screen, cursor home
    ("\x1b]0;owned\x07Yes", "Yes"),  # window title (OSC ... BEL)
    ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),  # hyperlink (OSC ... ST)
    ("a\x1b]52;c;ZXZpbA==", "a"),  # clipboard write, unterminated: swallowed to the end
    ("red\x1b[31m coat\x1b[0m", "red coat"),
    ("\x9b31mred", "red"),  # 8-bit CSI
    ("bell\x07 and NUL\x00 and DEL\x7f", "bell and NUL and DEL"),
    ("back\bspace", "backspace"),
    ("\u202eevil.exe\u202c", "evil.exe"),  # right-to-left override
    ("zero\u200bwidth", "zerowidth"),
    ("\ufeffBOM", "BOM"),
    ("lone \udcff surrogate", "lone \ufffd surrogate"),
    ("tabs\tand   spaces", "tabs and spaces"),
    ("one\r\ntwo\rthree\u2028four", "one two three four"),
    ("\x1bc reset", "reset"),
    ("naïve café 北京", "naïve café 北京"),  # ordinary non-ASCII text stays
    (None, ""),
    (42, "42"),
])
def test_printable(raw, clean):
    assert printable(raw) == clean


def test_printable_keeps_line_breaks_when_asked():
    assert printable("1. red\r\n2. \x1b[2Jblue\n\n\n\n3. no", newlines=True) == "1. red\n2. blue\n\n3. no"


def test_printable_cuts_long_text():
    assert printable("abcdefghij", max_len=5) == "abcd\u2026"
    assert printable("abc", max_len=5) == "abc"


def test_printable_path_shows_undecodable_bytes():
    assert printable_path(b"caf\xe9.jpg") == "caf\\xe9.jpg"
    name = os.fsdecode(b"x\xff\x1b[2J.png")  # a file name as os.listdir returns it (surrogateescape)
    shown = printable_path(name)
    assert shown == "x\\xff.png"  # the escape sequence is gone whole
    print(shown)  # printing it must not raise UnicodeEncodeError
