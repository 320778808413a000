"""Evaluation text from files: strict UTF-8, streamed line by line, with clear errors for unusable files.

WikiText-style files put headings on their own lines (` = Title = `); a paragraph is any other line with at
least `min_chars` characters, so captions and stray fragments do not dilute embedding comparisons.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from wquant.errors import CorruptDataError, ParameterError
from wquant.validation import check_int_range

#: Shortest line kept as a paragraph; 30 characters drops captions, list stubs and empty headings.
MIN_PARAGRAPH_CHARS = 30


def _text_file(path: str | os.PathLike[str]) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ParameterError(f"text file {file} does not exist (or is not a file)")
    if file.stat().st_size == 0:
        raise ParameterError(f"text file {file} is empty; there is nothing to evaluate on")
    return file


def read_text(path: str | os.PathLike[str]) -> str:
    """The whole file as one string (CRLF → LF); refuses missing, empty, blank or non-UTF-8 files."""
    file = _text_file(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptDataError(
            f"text file {file} is not UTF-8 (byte {exc.start}: {exc.reason}); convert it with iconv -t UTF-8"
        ) from None
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise ParameterError(f"text file {file} holds only whitespace; there is nothing to evaluate on")
    return text


def iter_lines(path: str | os.PathLike[str]) -> Iterator[str]:
    """Lines of a UTF-8 file without their line ends, read lazily (files larger than memory are fine)."""
    file = _text_file(path)
    with file.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise CorruptDataError(
                    f"text file {file} is not UTF-8 at line {number} ({exc.reason}); convert it with iconv -t UTF-8"
                ) from None


def is_heading(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= 2 and stripped.startswith("=") and stripped.endswith("=")


def iter_paragraphs(
    path: str | os.PathLike[str], *, min_chars: int = MIN_PARAGRAPH_CHARS, limit: int | None = None
) -> Iterator[str]:
    """Non-heading lines with at least `min_chars` characters, stripped, at most `limit` of them."""
    check_int_range(min_chars, "min_chars", 1)
    if limit is not None:
        check_int_range(limit, "limit", 1)
    count = 0
    for line in iter_lines(path):
        if limit is not None and count >= limit:
            return
        text = line.strip()
        if len(text) >= min_chars and not is_heading(text):
            count += 1
            yield text


def read_paragraphs(
    path: str | os.PathLike[str], *, min_chars: int = MIN_PARAGRAPH_CHARS, limit: int | None = None
) -> list[str]:
    """iter_paragraphs as a list; refuses a file that yields none."""
    paragraphs = list(iter_paragraphs(path, min_chars=min_chars, limit=limit))
    if not paragraphs:
        raise ParameterError(f"text file {path} has no paragraph of at least {min_chars} characters")
    return paragraphs
