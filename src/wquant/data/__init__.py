"""Text and token data: reading text files, evaluation windows and calibration batches.

>>> from wquant.data import calibration_windows, sentence_batches, read_paragraphs
>>> batches = calibration_windows(tokenizer, "calib.txt", nsamples=128, seqlen=512)
"""

from wquant.data.batches import calibration_windows, sentence_batches, token_windows
from wquant.data.text import MIN_PARAGRAPH_CHARS, is_heading, iter_lines, iter_paragraphs, read_paragraphs, read_text

__all__ = [
    "MIN_PARAGRAPH_CHARS",
    "calibration_windows",
    "is_heading",
    "iter_lines",
    "iter_paragraphs",
    "read_paragraphs",
    "read_text",
    "sentence_batches",
    "token_windows",
]
