"""QAT tests run on one thread: the 2 cores are shared, and these tiny models gain nothing from two."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the 2 cores are shared; small problems gain nothing from a second thread
