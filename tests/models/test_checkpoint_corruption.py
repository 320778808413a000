"""The corrupted-file matrix: a saved model truncated at 10 offsets, or with any of 100 random bytes flipped
(in the tensors file or the manifest), is refused with CorruptDataError — never loaded, never another error."""

from __future__ import annotations

import random
import shutil

import pytest

from wquant.errors import CorruptDataError
from wquant.models import MANIFEST_FILE, TENSORS_FILE, QuantizeConfig, load_quantized, quantize_, save_quantized


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from transformers import BertConfig, BertModel

    net = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=32))  # fmt: skip
    quantize_(net, QuantizeConfig("int4/block32:absmax:bf16", overrides=(("*.value", "uniform0.3/tensor:rms+coded"),)))
    folder = tmp_path_factory.mktemp("ckpt")
    save_quantized(net, folder)
    load_quantized(folder)  # the intact one loads
    return folder


def damaged_copy(saved, tmp_path, name, mutate):
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    path = folder / name
    path.write_bytes(mutate(bytearray(path.read_bytes())))
    return folder


@pytest.mark.parametrize("name", [TENSORS_FILE, MANIFEST_FILE])
@pytest.mark.parametrize("fraction", [i / 10 for i in range(10)])
def test_truncation_at_ten_offsets_is_refused(saved, tmp_path, name, fraction):
    folder = damaged_copy(saved, tmp_path, name, lambda data: bytes(data[: int(len(data) * fraction)]))
    with pytest.raises(CorruptDataError):
        load_quantized(folder)


@pytest.mark.parametrize("name", [TENSORS_FILE, MANIFEST_FILE])
def test_a_hundred_random_byte_flips_are_all_refused(saved, tmp_path, name):
    size = (saved / name).stat().st_size
    rng = random.Random(7)
    for trial in range(100):
        position, mask = rng.randrange(size), rng.randrange(1, 256)

        def flip(data, position=position, mask=mask):
            data[position] ^= mask
            return bytes(data)

        folder = damaged_copy(saved, tmp_path / str(trial), name, flip)
        with pytest.raises(CorruptDataError):
            load_quantized(folder)
