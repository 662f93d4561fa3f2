"""Seed-independent train/test assignment of generated instances.

An instance (a Countdown `(target, numbers)` pair, a Sudoku solution grid) belongs to the test split exactly when a
SHA-256 hash of its canonical key falls in the first `TEST_FRACTION` of the hash range. The assignment depends on
nothing else, so a test set generated with any seed shares no instance with a training set generated with any
other seed (d1's Sudoku test puzzles reuse training solution grids; only 288 valid 4x4 grids exist).
"""

import hashlib


TEST_FRACTION = 0.2
_BUCKETS = 10_000


def split_of(key: str, test_fraction: float = TEST_FRACTION) -> str:
    """`"test"` or `"train"` for the canonical instance `key`, from a stable hash (same on every machine and run)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % _BUCKETS
    return "test" if bucket < test_fraction * _BUCKETS else "train"
