"""Content-addressed file store for DICOM originals (implements ``services.imaging.BlobStore``).

A file lives at ``<root>/<h[0:2]>/<h[2:4]>/<h>.dcm`` where ``h`` is the SHA-256 of its bytes,
so the same bytes are stored once and a path never changes meaning. A file is written to a
temporary name in its directory and renamed into place, so a reader never sees half a
file. The bytes are kept exactly as received (transfer syntax included).

Durability (``fsync=True``). Making one new file durable on its own takes two flushes in a
row (the file, then its directory for the rename), each a few milliseconds. Instead, the
bytes are appended to a journal (``<root>/.journal/<n>.log``: length, SHA-256, bytes) and
the file is written without flushing; the call returned by ``commit`` waits until the
journal is flushed (``fdatasync``) up to that record — one flush, shared by every instance
appended meanwhile on other associations, so concurrent C-STOREs are made durable
together. The index commits only after it returns.

``begin`` appends the record and starts its flush at once, before the caller has even
parsed the bytes, so the disk works while the caller checks them; ``commit`` then writes
the file, ``cancel`` (bytes refused) appends a small record naming the cancelled one, so
that recovery does not bring back a file nobody kept. ``stage`` is both in one call.

A background checkpoint, when a journal segment has grown past ``checkpoint_bytes``, waits
for its records still begun but not committed or cancelled, fsyncs the files and
directories the segment covers and then deletes it. Opening the store replays the journal
left by a crash: a file missing, short or not matching its hash is written again from its
record unless the record was cancelled (a torn last record is ignored: it was never
acknowledged).

With ``fsync=False`` nothing is flushed: files still survive a process kill (the kernel
has them), not an OS crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("huren.dicom")

_HASH = re.compile(r"^[0-9a-f]{64}$")
_RECORD = struct.Struct("<4sQ32s")  # magic, length, sha256 digest
_MAGIC = b"HRJ1"
# A cancelled record: same header, the length field holds the offset of the record it
# cancels, no bytes follow.
_CANCEL = b"HRJX"
_JOURNAL_DIR = ".journal"


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _noop() -> None:
    return None


class _Segment:
    """One journal file: records appended, the files they cover, how far it is flushed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        # Held while this process writes it: recovery in another process (a CLI command
        # opening the same store) leaves a live segment alone.
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.size = 0
        self.synced = 0
        self.covers: list[Path] = []
        self.open_records = 0  # begun, neither committed nor cancelled
        self.closed = False
        self.error: OSError | None = None


_FLUSHER_IDLE = 2.0  # seconds without work before the flusher thread ends


class StagedBlob:
    """Bytes on their way into the store (see ``ContentAddressedStore.begin``)."""

    __slots__ = ("_data", "_done", "_existing", "_hash", "_record", "_store", "_target")

    def __init__(
        self,
        store: ContentAddressedStore,
        data: bytes,
        content_hash: str,
        target: Path,
        record: tuple[_Segment, int, int] | None,
        existing: bool,
    ) -> None:
        self._store = store
        self._data = data
        self._hash = content_hash
        self._target = target
        self._record = record  # segment, record start, record end
        self._existing = existing
        self._done = False

    def commit(self) -> Callable[[], None]:
        """Write the file so that readers see it; returns the call that waits until it is
        durable."""
        if self._done:
            raise RuntimeError("staged blob already committed or cancelled")
        store = self._store
        if self._existing:
            self._done = True
            return store._durable_existing(self._hash)
        try:
            store._write_file(self._target, self._data)
        except BaseException:
            self.cancel()  # not kept: its record must not hold up a checkpoint
            raise
        self._done = True
        if self._record is None:  # no fsync
            return _noop
        segment, _, end = self._record
        store._committed(segment, self._target)
        return lambda: store._sync(segment, end)

    def cancel(self) -> None:
        """The bytes are not kept: nothing is written, recovery will not restore them.
        No-op after ``commit``."""
        if self._done:
            return
        self._done = True
        if self._record is not None:
            self._store._cancel(self._hash, *self._record)


class ContentAddressedStore:
    def __init__(
        self, root: Path, *, fsync: bool = True, checkpoint_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._checkpoint_bytes = checkpoint_bytes
        self._lock = threading.Lock()  # journal appends, segment switch, _pending
        self._records_done = threading.Condition(self._lock)  # open_records reached 0
        self._sync_lock = threading.Lock()  # fdatasync against closing a segment
        self._flushed = threading.Condition()  # the flusher's work flag, ``synced`` moves
        self._flush_wanted = False
        self._flusher: threading.Thread | None = None
        self._segment: _Segment | None = None
        self._live: list[_Segment] = []  # segments not yet checkpointed
        self._next_segment = 0
        self._checkpointing = False
        # content hash → (segment, end offset of its record) until checkpointed: a second
        # stage of the same bytes waits for the first record's flush.
        self._pending: dict[str, tuple[_Segment, int]] = {}
        self._dirs: set[Path] = set()  # leaf directories known to exist
        if fsync:
            self._journal_dir = self.root / _JOURNAL_DIR
            self._journal_dir.mkdir(exist_ok=True)
            self._recover()

    def close(self) -> None:
        """Stop writing: the journal segments stay on disk, as after a crash, for the next
        store opened on this root to replay."""
        with self._lock, self._sync_lock:
            for segment in self._live:
                if not segment.closed:
                    segment.closed = True
                    os.close(segment.fd)
            self._live.clear()
            self._segment = None

    # ------------------------------------------------------------ paths
    def _path(self, content_hash: str) -> Path:
        if not _HASH.match(content_hash):
            raise ValueError(f"not a sha256 hex digest: {content_hash!r}")
        return self.root / content_hash[:2] / content_hash[2:4] / f"{content_hash}.dcm"

    def path(self, content_hash: str) -> str:
        return str(self._path(content_hash))

    def read(self, content_hash: str) -> bytes:
        return self._path(content_hash).read_bytes()

    def exists(self, content_hash: str) -> bool:
        return self._path(content_hash).exists()

    # ------------------------------------------------------------ writing
    def put(self, data: bytes, content_hash: str) -> None:
        """Write durably under ``content_hash`` (no-op when already there)."""
        self.stage(data, content_hash)()

    def stage(self, data: bytes, content_hash: str) -> Callable[[], None]:
        """Write ``data`` under ``content_hash`` so that readers see it, and return the
        call that makes it durable (``begin`` then ``commit``)."""
        return self.begin(data, content_hash).commit()

    def begin(self, data: bytes, content_hash: str) -> StagedBlob:
        """Start keeping ``data``: its journal record is appended and its flush starts at
        once on the flusher thread, so that whatever the caller does before ``commit``
        (checking the bytes, writing the file) overlaps the disk flush. Nothing is visible
        to readers before ``commit``. (Indexing waits for it: the index transaction holds
        SQLite's one writer lock, which must not wait on the disk.)"""
        target = self._path(content_hash)
        if target.exists() and target.stat().st_size == len(data):
            return StagedBlob(self, data, content_hash, target, None, existing=True)
        if not self._fsync:
            return StagedBlob(self, data, content_hash, target, None, existing=False)
        return StagedBlob(
            self, data, content_hash, target, self._append(data, content_hash), existing=False
        )

    def _durable_existing(self, content_hash: str) -> Callable[[], None]:
        if not self._fsync:
            return _noop
        with self._lock:
            pending = self._pending.get(content_hash)
        if pending is None:  # there before this process's journal: durable
            return _noop
        return lambda: self._sync(*pending)

    def _committed(self, segment: _Segment, target: Path) -> None:
        with self._lock:
            segment.covers.append(target)
            segment.open_records -= 1
            if not segment.open_records:
                self._records_done.notify_all()

    def _cancel(self, content_hash: str, segment: _Segment, start: int, end: int) -> None:
        with self._lock:
            if self._pending.get(content_hash) == (segment, end):
                del self._pending[content_hash]
            if not segment.closed:
                with contextlib.suppress(OSError):  # then recovery restores an orphan file
                    os.write(
                        segment.fd,
                        _RECORD.pack(_CANCEL, start, bytes.fromhex(content_hash)),
                    )
                    segment.size += _RECORD.size
            segment.open_records -= 1
            if not segment.open_records:
                self._records_done.notify_all()

    def _write_file(self, target: Path, data: bytes) -> None:
        if target.parent not in self._dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            if len(self._dirs) < 70_000:  # at most 65 536 leaf directories
                self._dirs.add(target.parent)
        tmp = target.with_name(f".incoming-{os.getpid()}-{threading.get_ident()}-{target.name}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _open_segment(self) -> _Segment:
        path = self._journal_dir / f"{os.getpid()}-{id(self):x}-{self._next_segment:06d}.log"
        self._next_segment += 1
        segment = _Segment(path)
        _fsync_path(self._journal_dir, directory=True)  # the new segment's name
        self._live.append(segment)
        return segment

    def _append(self, data: bytes, content_hash: str) -> tuple[_Segment, int, int]:
        header = _RECORD.pack(_MAGIC, len(data), bytes.fromhex(content_hash))
        with self._lock:
            if self._segment is None:
                self._segment = self._open_segment()
            segment = self._segment
            start = segment.size
            os.write(segment.fd, header + data)
            segment.size += len(header) + len(data)
            segment.open_records += 1
            end = segment.size
            self._pending[content_hash] = (segment, end)
            full = segment.size >= self._checkpoint_bytes and not self._checkpointing
            if full:
                self._checkpointing = True
                self._segment = None  # the next record starts a new segment
        with self._flushed:
            self._want_flush()
        if full:
            threading.Thread(
                target=self._checkpoint, args=(segment,), name="dicom-checkpoint", daemon=True
            ).start()
        return segment, start, end

    # ------------------------------------------------------------ flushing
    def _want_flush(self) -> None:
        """Ask the flusher for a flush (caller holds ``_flushed``)."""
        self._flush_wanted = True
        self._flushed.notify_all()
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="dicom-journal-flush", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        """Flush whatever is appended, again and again: records appended during one flush
        are covered by the next, so concurrent stores share flushes (group commit)."""
        while True:
            with self._flushed:
                while not self._flush_wanted:
                    if not self._flushed.wait(_FLUSHER_IDLE) and not self._flush_wanted:
                        self._flusher = None
                        return
                self._flush_wanted = False
            with self._lock:
                work = [(s, s.size) for s in self._live if s.synced < s.size]
            for segment, upto in work:
                self._flush(segment, upto)

    def _flush(self, segment: _Segment, upto: int) -> None:
        error: OSError | None = None
        with self._sync_lock:
            if segment.closed:
                return
            try:
                os.fdatasync(segment.fd)
            except OSError as exc:
                error = exc
        if error is not None:
            log.error("DICOM journal flush failed: %s", error)
            with self._lock:  # its state on disk is unknown now: start a new segment
                if self._segment is segment:
                    self._segment = None
        with self._flushed:
            if error is not None:
                segment.error = error
            else:
                segment.synced = max(segment.synced, upto)
            self._flushed.notify_all()

    def _sync(self, segment: _Segment, end: int) -> None:
        """Return once ``segment`` is flushed up to ``end``."""
        with self._flushed:
            while segment.synced < end:
                if segment.error is not None:
                    raise segment.error
                if self._flusher is None:
                    self._want_flush()
                self._flushed.wait(1.0)

    # ------------------------------------------------------------ checkpoint
    def _checkpoint(self, segment: _Segment) -> None:
        """Make the files of a full segment durable on their own, then drop it."""
        try:
            with self._lock:  # files of records begun but not yet written
                while segment.open_records:
                    self._records_done.wait()
            self._flush(segment, segment.size)
            if segment.error is not None:
                raise segment.error
            dirs: set[Path] = set()
            for path in segment.covers:
                _fsync_path(path)
                dirs.update((path.parent, path.parent.parent))
            for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                _fsync_path(d, directory=True)
            _fsync_path(self.root, directory=True)
            with self._sync_lock:
                segment.closed = True
                os.close(segment.fd)
            segment.path.unlink()
            _fsync_path(self._journal_dir, directory=True)
            with self._lock:
                self._live.remove(segment)
                for h, (seg, _) in list(self._pending.items()):
                    if seg is segment:
                        del self._pending[h]
        except OSError:
            log.exception("DICOM journal checkpoint failed; the segment is kept for recovery")
        finally:
            with self._lock:
                self._checkpointing = False

    # ------------------------------------------------------------ recovery
    @staticmethod
    def _records(path: Path) -> Iterator[tuple[str, bytes]]:
        """Valid records of a segment not cancelled, up to the first torn or corrupt
        one."""
        with open(path, "rb") as f:
            records: list[tuple[int, int, bytes]] = []  # start, length, digest
            cancelled: set[int] = set()
            while True:
                start = f.tell()
                header = f.read(_RECORD.size)
                if len(header) < _RECORD.size:
                    break
                magic, length, digest = _RECORD.unpack(header)
                if magic == _CANCEL:
                    cancelled.add(length)  # the start of the record it cancels
                    continue
                if magic != _MAGIC:
                    break
                f.seek(length, os.SEEK_CUR)
                records.append((start, length, digest))
            for start, length, digest in records:
                if start in cancelled:
                    continue
                f.seek(start + _RECORD.size)
                data = f.read(length)
                if len(data) < length or hashlib.sha256(data).digest() != digest:
                    return
                yield digest.hex(), data

    @staticmethod
    def _claim(path: Path) -> int | None:
        """An fd holding the lock of a segment left by a dead process; None while the
        process that writes it is alive."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _recover(self) -> None:
        """Replay the journal of a previous run: rewrite what is missing or wrong, flush
        every file it covers (a file may sit only in the page cache after a process kill),
        then drop it. Segments still written by a live process are left alone."""
        claimed: list[tuple[Path, int]] = []
        for path in sorted(self._journal_dir.glob("*.log")):
            fd = self._claim(path)
            if fd is not None:
                claimed.append((path, fd))
        repaired = 0
        dirs: set[Path] = set()
        try:
            for seg, _ in claimed:
                for content_hash, data in self._records(seg):
                    target = self._path(content_hash)
                    try:
                        intact = hashlib.sha256(target.read_bytes()).hexdigest() == content_hash
                    except OSError:
                        intact = False
                    if not intact:
                        self._write_file(target, data)
                        repaired += 1
                    _fsync_path(target)
                    dirs.update((target.parent, target.parent.parent))
            for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                _fsync_path(d, directory=True)
            if dirs:
                _fsync_path(self.root, directory=True)
            if repaired:
                log.warning("DICOM store: %d file(s) restored from the journal", repaired)
            for seg, _ in claimed:
                seg.unlink()
            if claimed:
                _fsync_path(self._journal_dir, directory=True)
        finally:
            for _, fd in claimed:
                os.close(fd)
