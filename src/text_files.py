"""Reading the small text files a user hands over (labels CSVs, class lists, video lists): UTF-8,
a leading BOM dropped, any other encoding refused with one line naming the file."""
from __future__ import annotations

import codecs
from pathlib import Path

from src.errors import InputError


def read_text(path: Path, what: str) -> str:
    """A text file as UTF-8 (a leading BOM dropped); any other encoding or a binary file is an
    InputError naming the file and what was found."""
    data = Path(path).read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(f"{path}: {what} is UTF-16 text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}; "
                         "Latin-1 or another encoding?); save it as UTF-8") from None
    if "\x00" in text:
        raise InputError(f"{path}: {what} is not a text file (it holds NUL bytes)")
    return text
