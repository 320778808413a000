"""Text files: strict UTF-8, empty files refused, WikiText paragraphs."""

from __future__ import annotations

import pytest

from wquant.data import iter_lines, iter_paragraphs, read_paragraphs, read_text
from wquant.errors import CorruptDataError, ParameterError


def test_empty_blank_missing_and_non_utf8_files_are_refused(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n \r\n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("fine line\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ParameterError, match="empty"):
        read_text(empty)
    with pytest.raises(ParameterError, match="whitespace"):
        read_text(blank)
    with pytest.raises(ParameterError, match="does not exist"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(CorruptDataError, match="not UTF-8"):
        read_text(latin)
    with pytest.raises(CorruptDataError, match="line 2"):
        list(iter_lines(latin))
    with pytest.raises(ParameterError, match="no paragraph"):
        read_paragraphs(blank)


def test_paragraphs_skip_headings_and_short_lines(tmp_path) -> None:
    text = (
        " = Title = \r\n"
        " A first paragraph long enough to count as text . \r\n"
        " = = Section = = \r\n"
        " short \r\n"
        " A second paragraph , also long enough to be kept . \r\n"
        " A third paragraph that the limit will leave out of the list . \r\n"
    )
    path = tmp_path / "wiki.txt"
    path.write_bytes(text.encode("utf-8"))
    assert list(iter_paragraphs(path, limit=2)) == [
        "A first paragraph long enough to count as text .",
        "A second paragraph , also long enough to be kept .",
    ]
    assert len(read_paragraphs(path, min_chars=3)) == 4
    assert "\r" not in read_text(path)
