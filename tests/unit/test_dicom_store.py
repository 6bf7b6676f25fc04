"""The content-addressed DICOM store: files visible at once, durable through one journal
flush, and restored from the journal when a crash lost or tore them."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from huren.adapters.dicom.store import ContentAddressedStore
from tests.fixtures.dicom import Spec, instance_bytes


def _blob(n: int) -> tuple[bytes, str]:
    data = instance_bytes(Spec(study="store", instance=n))
    return data, hashlib.sha256(data).hexdigest()


def _journal(root: Path) -> list[Path]:
    return sorted((root / ".journal").glob("*.log"))


def test_a_staged_file_is_readable_before_and_after_it_is_made_durable(tmp_path: Path) -> None:
    store = ContentAddressedStore(tmp_path)
    data, h = _blob(1)
    durable = store.stage(data, h)
    assert store.read(h) == data
    durable()
    assert store.read(h) == data
    assert Path(store.path(h)).name == f"{h}.dcm"


def test_reopening_after_a_crash_restores_a_file_the_journal_holds(tmp_path: Path) -> None:
    store = ContentAddressedStore(tmp_path)
    data, h = _blob(2)
    store.put(data, h)
    store.close()  # the process ends before any checkpoint
    # What a power cut may leave of a file that was never flushed on its own.
    Path(store.path(h)).write_bytes(data[:100])
    reopened = ContentAddressedStore(tmp_path)
    assert reopened.read(h) == data
    assert _journal(tmp_path) == []


def test_reopening_restores_a_file_that_vanished(tmp_path: Path) -> None:
    store = ContentAddressedStore(tmp_path)
    data, h = _blob(3)
    store.put(data, h)
    store.close()
    Path(store.path(h)).unlink()
    assert ContentAddressedStore(tmp_path).read(h) == data


def test_a_torn_last_journal_record_is_ignored(tmp_path: Path) -> None:
    store = ContentAddressedStore(tmp_path)
    first, h1 = _blob(4)
    second, h2 = _blob(5)
    store.put(first, h1)
    store.put(second, h2)
    store.close()
    Path(store.path(h1)).unlink()
    Path(store.path(h2)).unlink()
    [segment] = _journal(tmp_path)
    segment.write_bytes(segment.read_bytes()[:-10])  # the crash hit the second append
    reopened = ContentAddressedStore(tmp_path)
    assert reopened.read(h1) == first
    assert not reopened.exists(h2)


def test_a_full_journal_segment_is_checkpointed_and_dropped(tmp_path: Path) -> None:
    store = ContentAddressedStore(tmp_path, checkpoint_bytes=50_000)
    blobs = [_blob(n) for n in range(10, 14)]
    for data, h in blobs:
        store.put(data, h)
    for _ in range(100):  # the checkpoint runs in the background
        if len(_journal(tmp_path)) <= 1:
            break
        time.sleep(0.05)
    assert len(_journal(tmp_path)) <= 1
    for data, h in blobs:
        assert store.read(h) == data


def test_stores_waiting_on_a_flush_are_made_durable_together_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes: list[int] = []
    all_staged = threading.Event()
    real = os.fdatasync

    def slow_first_flush(fd: int) -> None:
        flushes.append(fd)
        if len(flushes) == 1:
            all_staged.wait(10)  # a slow disk: everyone else appends meanwhile
        real(fd)

    monkeypatch.setattr("huren.adapters.dicom.store.os.fdatasync", slow_first_flush)
    store = ContentAddressedStore(tmp_path)
    blobs = [_blob(n) for n in range(20, 36)]
    durables = [store.stage(data, h) for data, h in blobs]
    all_staged.set()
    threads = [threading.Thread(target=d) for d in durables]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(flushes) <= 2  # 16 instances: the slow flush, then one for all the rest
    store.close()
    reopened_after_crash = ContentAddressedStore(tmp_path)
    for data, h in blobs:
        assert reopened_after_crash.read(h) == data


def test_without_fsync_nothing_is_journaled(tmp_path: Path) -> None:
    store = ContentAddressedStore(tmp_path, fsync=False)
    data, h = _blob(40)
    store.put(data, h)
    assert store.read(h) == data
    assert not (tmp_path / ".journal").exists()


def test_a_journal_still_written_by_a_live_process_is_left_alone(tmp_path: Path) -> None:
    server = ContentAddressedStore(tmp_path)
    data, h = _blob(41)
    server.put(data, h)
    ContentAddressedStore(tmp_path)  # e.g. a CLI command opening the same store
    assert len(_journal(tmp_path)) == 1
    server.close()
    ContentAddressedStore(tmp_path)
    assert _journal(tmp_path) == []


def test_begun_bytes_are_invisible_until_committed(tmp_path: Path) -> None:
    store = ContentAddressedStore(tmp_path)
    data, h = _blob(60)
    staged = store.begin(data, h)
    assert not store.exists(h)
    durable = staged.commit()
    assert store.read(h) == data
    durable()


def test_a_cancelled_record_is_not_restored_after_a_crash(tmp_path: Path) -> None:
    store = ContentAddressedStore(tmp_path)
    kept, h_kept = _blob(61)
    refused, h_refused = _blob(62)
    store.begin(refused, h_refused).cancel()
    store.stage(kept, h_kept)()
    store.close()
    Path(store.path(h_kept)).unlink()
    reopened = ContentAddressedStore(tmp_path)
    assert reopened.read(h_kept) == kept
    assert not reopened.exists(h_refused)


def test_cancelling_one_of_two_records_of_the_same_bytes_keeps_the_other(tmp_path: Path) -> None:
    store = ContentAddressedStore(tmp_path)
    data, h = _blob(63)
    first = store.begin(data, h)  # e.g. two associations sending the same file at once
    second = store.begin(data, h)
    first.cancel()
    second.commit()()
    store.close()
    Path(store.path(h)).unlink()
    assert ContentAddressedStore(tmp_path).read(h) == data


def test_a_checkpoint_waits_for_records_begun_but_not_yet_committed(tmp_path: Path) -> None:
    slow, h_slow = _blob(64)
    fast, h_fast = _blob(65)
    # The slow record alone stays under the limit; the fast one fills the segment and
    # starts the checkpoint while the slow one is still being checked.
    store = ContentAddressedStore(tmp_path, checkpoint_bytes=len(slow) + 100)
    pending = store.begin(slow, h_slow)
    store.stage(fast, h_fast)()
    time.sleep(0.3)
    assert len(_journal(tmp_path)) == 1  # waits: the slow file is not written yet
    pending.commit()()
    for _ in range(100):
        if not _journal(tmp_path):
            break
        time.sleep(0.05)
    assert _journal(tmp_path) == []  # checkpointed: both files flushed, segment dropped
    assert store.read(h_slow) == slow
    assert store.read(h_fast) == fast
