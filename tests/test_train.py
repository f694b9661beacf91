"""How an epoch is split into compiled calls (`vae_jax.train.chunks`)."""

import pytest

from vae_jax.train import chunk_size, chunks


@pytest.mark.parametrize("steps", [1, 2, 7, 24, 64, 65, 128, 467, 469, 600, 1000, 3000])
@pytest.mark.parametrize("size", [1, 2, 3, 16, 64, 100])
def test_chunks_cover_the_epoch_once_in_order(steps, size):
    runs = list(chunks(steps, size))
    assert runs[0][0] == 0 and runs[-1][1] == steps
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:], strict=False))
    length = chunk_size(steps, size)
    assert all(stop - start == length for start, stop in runs[:-1])
    assert 0 < runs[-1][1] - runs[-1][0] <= length
    if steps % length == 0:  # one compiled program for the whole epoch
        assert {stop - start for start, stop in runs} == {length}


@pytest.mark.parametrize(
    ("steps", "size", "expected"),
    [
        (469, 64, 67),  # the seed recipe: 60,000 / 128 -> 7 x 67 instead of 7 x 64 + 21
        (600, 64, 60),  # batch 100: 60 and 75 divide 600; 60 is nearer
        (3000, 64, 60),  # batch 20 (the IWAE recipes)
        (24, 64, 24),  # an epoch shorter than a call: one call
        (8, 2, 2),  # already a divisor
        (467, 64, 64),  # a prime: no divisor within a factor of 2, so 7 x 64 + 19
        (7, 3, 3),  # 1 divides 7 but is not within a factor of 2 of 3
        (9, 5, 3),  # divisors 3 and 9 are both within a factor of 2 of 5; 3 is nearer
        (96, 64, 48),  # divisors 32, 48 and 96: 48 is nearest
        (4080, 64, 60),  # 60 and 68 are both 4 away (no nearer divisor): the smaller
    ],
)
def test_chunk_size_is_the_nearest_divisor_within_a_factor_of_two(steps, size, expected):
    assert chunk_size(steps, size) == expected
