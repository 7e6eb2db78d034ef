import pytest
import torch
from sparsecore_swat.compress import compress, decompress, pack_bits, unpack_bits


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 1001])
def test_bits_round_trip(n):
    mask = torch.rand(n) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(unpack_bits(packed, n), mask)


def test_compress_round_trip_and_size():
    x = torch.randn(4, 3, 10, 10)
    mask = x.abs() > 1.0
    packed = compress(x, mask)
    assert torch.equal(decompress(*packed), x * mask)
    assert packed.nbytes == 1200 // 8 + 4 * int(mask.sum())
