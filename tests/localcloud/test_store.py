"""The store (store.py): documents, transactions, key order, and atomic blobs."""

import pytest

from localcloud.store import Store


def test_store_documents_transactions_and_ordering(tmp_path):
    store = Store(tmp_path)
    try:
        for key in ["b/2", "b/10", "a", "b/ü", "b0", "b/"]:
            store.put("things", key, {"key": key})
        assert [k for k, _ in store.scan("things", prefix="b/")] == ["b/", "b/10", "b/2", "b/ü"]
        assert [k for k, _ in store.scan("things", prefix="b/", after="b/10", limit=2)] == ["b/2", "b/ü"]
        assert store.count("things") == 6 and store.count("things", prefix="b") == 5
        assert store.insert("things", "a", {"key": "other"}) is False
        assert store.get("things", "a") == {"key": "a"}

        with pytest.raises(RuntimeError), store.transaction():
            store.put("things", "new", {"x": 1})
            store.delete("things", "a")
            raise RuntimeError("abort")
        assert store.get("things", "new") is None and store.get("things", "a") == {"key": "a"}
    finally:
        store.close()

    reopened = Store(tmp_path)  # a restart loses nothing
    try:
        assert reopened.count("things") == 6
    finally:
        reopened.close()


def test_blobs_are_atomic_and_crash_leftovers_are_cleared(tmp_path):
    store = Store(tmp_path)
    blob = store.write_blob(b"complete")
    with store.blob_writer() as writer:
        writer.write(b"half-writ")  # never committed, as if the upload failed
    assert list((tmp_path / "tmp").iterdir()) == []
    leftover = store.blob_writer()
    leftover.write(b"a crash happened here")  # neither committed nor cleaned up
    copy = store.copy_blob(blob)
    store.close()

    store = Store(tmp_path)
    try:
        assert list((tmp_path / "tmp").iterdir()) == []
        assert store.open_blob(blob).read() == b"complete"
        store.delete_blob(blob)
        assert store.open_blob(copy).read() == b"complete"
        with pytest.raises(ValueError, match="not a blob id"):
            store.blob_path("../../etc/passwd")
    finally:
        store.close()
