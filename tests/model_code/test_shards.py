"""Reading a shard never trusts it: hostile files are refused with ShardError, in bounded memory and time."""

import resource
import time

import numpy as np
import pytest

from model_code.shards import MAX_SHARD_BYTES, MAX_SHARD_ROWS, ShardError, load_shard_bytes, shard_bytes
from tests.fixtures.poison import (
    NOT_A_SHARD,
    deflate_bomb_batch,
    huge_header_batch,
    npy,
    npy_header,
    npz_of,
    truncated_batch,
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def images_and_labels(count: int = 20):
    rng = np.random.default_rng(count)
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count, dtype=np.uint8)


def test_a_real_shard_reads_back_exactly_and_writable():
    images, labels = images_and_labels()
    back_images, back_labels = load_shard_bytes(shard_bytes(images, labels))
    assert np.array_equal(back_images, images) and np.array_equal(back_labels, labels)
    back_labels[0] = 3  # callers may modify what they read
    assert back_images.dtype == np.uint8 and back_images.shape == (20, 28, 28)


def test_a_header_claiming_a_billion_images_is_refused_without_allocating_them():
    before = peak_rss_mb()
    started = time.perf_counter()
    with pytest.raises(ShardError, match=rf"1000000000 images.*at most {MAX_SHARD_ROWS}"):
        load_shard_bytes(huge_header_batch(), where="batch-0007.npz")
    assert time.perf_counter() - started < 1
    assert peak_rss_mb() - before < 50


def test_a_deflate_bomb_is_refused_before_it_is_unpacked():
    bomb = deflate_bomb_batch()
    assert len(bomb) < 1_000_000  # small on the wire
    before = peak_rss_mb()
    with pytest.raises(
        ShardError, match=rf"unpacks to 313600128 bytes; a shard holds at most {MAX_SHARD_ROWS} images"
    ):
        load_shard_bytes(bomb, where="batch-0008.npz")
    assert peak_rss_mb() - before < 100  # the 313 MB of images were never unpacked


def test_truncated_and_foreign_files_are_refused_by_name():
    with pytest.raises(ShardError, match="batch-0009.npz: not a readable .npz shard"):
        load_shard_bytes(truncated_batch(*images_and_labels()), where="batch-0009.npz")
    with pytest.raises(ShardError, match="batch-0010.npz: not a readable .npz shard"):
        load_shard_bytes(NOT_A_SHARD, where="batch-0010.npz")


def test_array_data_shorter_or_longer_than_its_header_is_refused():
    images, labels = images_and_labels()
    short = npz_of({"images.npy": npy(images)[:-10], "labels.npy": npy(labels)})
    with pytest.raises(ShardError, match="images.npy holds 15670 bytes of data; its header declares 15680"):
        load_shard_bytes(short)
    long = npz_of({"images.npy": npy(images) + b"extra", "labels.npy": npy(labels)})
    with pytest.raises(ShardError, match="images.npy holds 15685 bytes of data; its header declares 15680"):
        load_shard_bytes(long)


def test_only_images_and_labels_of_the_right_types_are_accepted():
    images, labels = images_and_labels()
    extra = npz_of({"images.npy": npy(images), "labels.npy": npy(labels), "notes.npy": npy(labels)})
    with pytest.raises(ShardError, match=r"unexpected member\(s\) \['notes.npy'\]"):
        load_shard_bytes(extra)
    missing = npz_of({"images.npy": npy(images)})
    with pytest.raises(ShardError, match=r"missing array\(s\) \['labels'\]"):
        load_shard_bytes(missing)
    floats = npz_of({"images.npy": npy(images.astype(np.float32)), "labels.npy": npy(labels)})
    with pytest.raises(ShardError, match="must be uint8"):
        load_shard_bytes(floats)
    pickled = npz_of({"images.npy": npy_header((1,), descr="|O") + b"\0" * 8, "labels.npy": npy(labels)})
    with pytest.raises(ShardError):
        load_shard_bytes(pickled)


def test_a_file_over_the_size_limit_is_refused_unread():
    with pytest.raises(ShardError, match=f"at most {MAX_SHARD_BYTES} bytes"):
        load_shard_bytes(bytes(MAX_SHARD_BYTES + 1), where="big.npz")


def test_fortran_ordered_arrays_read_as_the_same_images():
    images, labels = images_and_labels()
    data = npz_of({"images.npy": npy(np.asfortranarray(images)), "labels.npy": npy(labels)})
    back, _ = load_shard_bytes(data)
    assert np.array_equal(back, images)
