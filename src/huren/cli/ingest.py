"""``huren ingest FILE``: back-load historical results (R3 全量上传) from NDJSON FHIR
resources or a file of HL7 v2 ORU^R01 messages.

- Streaming: the file is read record by record, never whole.
- Resumable: after each committed batch the byte offset of the next record is written to
  ``FILE.checkpoint.json``; a rerun continues from there (intake is idempotent, so a
  record stored just before an interruption is only answered as unchanged). The file is
  written after the batch's commit and replaced atomically, not fsynced: after an
  operating-system crash it may lag the database (a rerun answers those records as
  unchanged). On PostgreSQL it can never be ahead of what is committed. On SQLite,
  whose commits (synchronous=NORMAL) survive a process crash but not an operating-system
  crash — the embedded store's limit, for every acknowledgement alike — an fsynced
  checkpoint could be ahead of a lost commit just the same; the fsync only cost time (up
  to 0.2 s a batch on a busy disk, the time of storing a few thousand Observations).
- Per-record errors go to ``FILE.errors.ndjson`` (line or message number, byte offset,
  an HL7 message's MSH-10, field, message); they never stop the load. The checkpoint
  keeps the error file's length: a rerun cuts off what was written after it, so that a
  record read again after an interruption is not reported twice.
- A file that is not what ``--format`` reads (HL7 read as NDJSON and back, a JSON
  array, gzip, ZIP or UTF-16) is refused before anything is read, naming the remedy.
- Records are read in batches (``--batch-size``, 500) and stored in one transaction per
  institution of the batch. When a transaction is refused, its halves are stored on
  their own, down to the record at fault, which goes to the error file: a record is
  stored whole or not at all, and what is checkpointed is committed.

NDJSON lines are transaction Bundles or self-contained DiagnosticReports (Patient,
Organization and Observations in ``contained``)."""

from __future__ import annotations

import fcntl
import gc
import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from huren.adapters.fhir.ingest import UTF8_BOM, parse_line, sniff_kind
from huren.bootstrap import Container, build
from huren.cli.files import input_file_problem, write_problem
from huren.config import get_settings
from huren.domain.errors import DomainError, Problem
from huren.services.intake import Channel, InboundMessage, ReceiveOutcome

CHECKPOINT_EVERY = 1  # batches between checkpoint writes
FINGERPRINT_BYTES = 4096  # the bytes before a checkpoint's offset that it fingerprints
SNIFF_BYTES = 4096  # the bytes at the file's start that tell its kind
LOG_EVERY = 60.0  # seconds between progress lines when the output is not a terminal


@dataclass(frozen=True, slots=True)
class Record:
    number: int  # line (NDJSON) or message (HL7) number, 1-based
    offset: int  # byte offset of the record in the file
    end: int  # byte offset just after it
    data: bytes


@dataclass
class LoadReport:
    records: int = 0
    stored: int = 0  # results of the file stored, this run and the runs it resumes
    changed: int = 0  # of them, created or given a new version by this run
    duplicates: int = 0  # of them, found already stored unchanged by this run
    errors: int = 0
    resumed_from: int = 0
    finished_before: bool = False  # an earlier run read the whole file: nothing to do
    unmapped: dict[str, int] = field(default_factory=dict)


def content_problem(path: Path, fmt: str) -> str | None:
    """Why the file's first bytes show it is not a file ``fmt`` reads, or None. Read
    as the wrong format every record would be one error (a gzip file, HL7 read as NDJSON),
    or, read as HL7, a file without MSH would be one record held in memory whole."""
    with path.open("rb") as f:
        kind = sniff_kind(f.read(SNIFF_BYTES))
    if kind in _NOT_TEXT:
        return _NOT_TEXT[kind]
    if fmt == "ndjson":
        return {
            "hl7": "的内容是 HL7 v2 消息而不是 NDJSON，请加 --format hl7",
            "json-array": "的内容是 JSON 数组，NDJSON 应每行一个 JSON 对象（可用 jq -c '.[]' 转换）",
            "other": "的内容不是 NDJSON（每行应为一个 JSON 对象，以“{”开头）",
        }.get(kind or "")
    return {
        "ndjson": "的内容是 JSON 而不是 HL7 v2 消息，请用 --format ndjson",
        "json-array": "的内容是 JSON 而不是 HL7 v2 消息，请用 --format ndjson",
        "other": "的内容不是 HL7 v2 消息（应以 MSH 段或批量文件头 FHS/BHS 开头）",
    }.get(kind or "")


_NOT_TEXT = {
    "gzip": "是 gzip 压缩文件，请先解压（gunzip）再导入",
    "zip": "是 ZIP 压缩包，请先解压再导入",
    "utf-16": "是 UTF-16 编码，请另存为 UTF-8（HL7 也可为 GB18030）再导入",
}


def ndjson_records(path: Path, start: int = 0, start_number: int = 0) -> Iterator[Record]:
    """The non-blank lines of a file; a UTF-8 byte order mark at its start is skipped."""
    with path.open("rb") as f:
        if start == 0 and f.read(len(UTF8_BOM)) == UTF8_BOM:
            start = len(UTF8_BOM)
        f.seek(start)
        offset, number = start, start_number
        for line in f:
            number += 1
            end = offset + len(line)
            if line.strip():
                yield Record(number, offset, end, line)
            offset = end


_BATCH_ENVELOPE = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})


def hl7_records(path: Path, start: int = 0, start_number: int = 0) -> Iterator[Record]:
    """Messages of a file: each starts at a segment beginning ``MSH``; MLLP framing
    bytes (VT, FS) and blank lines between messages are tolerated. Segments end in CR
    (the HL7 terminator), LF or CR LF; a UTF-8 byte order mark at the file's start is
    skipped, and so is the batch envelope (FHS, BHS, BTS, FTS; v2.5.1 §2.10.3) that
    interface engines write around the messages of an export file."""
    with path.open("rb") as raw:
        if start == 0 and raw.read(len(UTF8_BOM)) == UTF8_BOM:
            start = len(UTF8_BOM)
        raw.seek(start)
        # Latin-1 maps each byte to one character and back, so the text layer only splits
        # lines at CR, LF or CR LF (``newline=""``) and offsets stay byte offsets.
        text = io.TextIOWrapper(raw, encoding="latin-1", newline="")
        offset, number = start, start_number
        current: list[bytes] = []
        current_start = start
        for text_line in text:
            line = text_line.encode("latin-1")
            stripped = line.strip(b"\x0b\x1c\r\n ")
            if stripped[:3] in _BATCH_ENVELOPE:
                offset += len(line)
                continue
            if line.lstrip(b"\x0b\x1c").startswith(b"MSH") and current:
                number += 1
                yield Record(number, current_start, offset, b"\r".join(current) + b"\r")
                current = []
            if stripped:
                if not current:
                    current_start = offset
                current.append(stripped)
            offset += len(line)
        if current:
            number += 1
            yield Record(number, current_start, offset, b"\r".join(current) + b"\r")


def _transactions(
    batch: list[tuple[Record, InboundMessage]],
) -> Iterator[list[tuple[Record, InboundMessage]]]:
    """The records of a batch as transactions: one institution each (a message has one
    sender), and a report sent again later in the file (an amendment) starts a new one,
    so that it becomes a new version rather than a duplicate within one message."""
    groups: dict[str, list[list[tuple[Record, InboundMessage]]]] = {}
    keys: dict[str, set[tuple[str, str]]] = {}
    for record, msg in batch:
        chunks = groups.setdefault(msg.institution, [[]])
        seen = keys.setdefault(msg.institution, set())
        mine = {(s.report_no, s.local_code) for s in msg.submissions}
        if seen & mine:
            chunks.append([])
            seen.clear()
        seen |= mine
        chunks[-1].append((record, msg))
    for chunks in groups.values():
        yield from (c for c in chunks if c)


def parse_record(record: Record, fmt: str, source: str) -> InboundMessage:
    """The intake message of one record; raises DomainError naming the field. A failure
    of the parser itself (an input it does not expect; the parsers refuse what they know
    of) is that record's error too: one bad record must not end a bulk load."""
    try:
        return _parsed(record, fmt, f"{source}:{record.number}")
    except DomainError:
        raise
    except Exception as exc:
        raise DomainError(
            f"第 {record.number} 条记录无法解析",
            problems=[Problem("record", f"解析失败（{type(exc).__name__}: {exc}）"[:500])],
        ) from exc


def _parsed(record: Record, fmt: str, control: str) -> InboundMessage:
    if fmt == "hl7":
        from huren.adapters.hl7v2.parse import Hl7Rejected, parse_oru

        try:
            return parse_oru(record.data, Channel.BULK).message
        except Hl7Rejected as exc:
            raise DomainError(
                exc.error, problems=[Problem(p.field, p.message) for p in exc.problems]
            ) from exc
    return parse_line(record.data, control_id=control, keep_raw=False).message


def hl7_control_id(data: bytes) -> str:
    """MSH-10 of a message (its control ID), or "" when there is none: as far as the
    HL7 adapter reads a header that it refuses."""
    from huren.adapters.hl7v2.parse import Hl7Rejected, read_header

    try:
        return read_header(data).control_id
    except Hl7Rejected as exc:
        return exc.header.control_id


class CheckpointInvalid(Exception):
    """The checkpoint file cannot be trusted for this data file; nothing was loaded."""

    def __init__(self, checkpoint: Path, reason: str) -> None:
        super().__init__(
            f"断点文件 {checkpoint} 无法使用: {reason}。"
            "如需从头导入请加 --restart（已保存的记录会判为重复，不会重复保存）"
        )


class LoadRunning(Exception):
    """Another process is loading the same file; nothing was loaded."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"文件 {path} 正在由另一个 huren ingest 进程导入（例如上一次定时任务尚未结束）；"
            "请待其结束后再运行，届时会从断点续传"
        )


def errors_path_of(path: Path) -> Path:
    return path.with_name(path.name + ".errors.ndjson")


def checkpoint_path_of(path: Path) -> Path:
    return path.with_name(path.name + ".checkpoint.json")


class BulkLoader:
    """Streams a file into ``container.intake`` with checkpoints and an error file."""

    def __init__(
        self,
        container: Container,
        path: Path,
        fmt: str,
        *,
        errors_path: Path | None = None,
        checkpoint_path: Path | None = None,
        batch_size: int = 500,
    ) -> None:
        self.c = container
        self.path = path
        self.fmt = fmt
        self.errors_path = errors_path or errors_path_of(path)
        self.checkpoint_path = checkpoint_path or checkpoint_path_of(path)
        self.batch_size = batch_size
        self._logged = 0.0  # when a progress line was last printed (monotonic)

    # -- checkpoint
    def read_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint of this file and format, or None when there is none (or it is
        one of another file or format). Raises ``CheckpointInvalid`` when it cannot be
        read, or its offset is not where a record of this file starts after what was
        loaded: resuming there would skip records or read one from its middle."""
        try:
            text = self.checkpoint_path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointInvalid(self.checkpoint_path, f"无法读取（{exc}）") from exc
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CheckpointInvalid(self.checkpoint_path, "不是有效的 JSON") from exc
        if not isinstance(data, dict):
            raise CheckpointInvalid(self.checkpoint_path, "内容应为 JSON 对象")
        if data.get("file") != str(self.path.resolve()) or data.get("format") != self.fmt:
            return None
        for key in ("offset", "records", "stored", "errors"):
            value = data.get(key)
            if type(value) is not int or value < 0:
                raise CheckpointInvalid(
                    self.checkpoint_path, f"字段 {key} 应为非负整数，实际为 {value!r}"
                )
        offset: int = data["offset"]
        size = self.path.stat().st_size
        if offset > size:
            raise CheckpointInvalid(
                self.checkpoint_path,
                f"断点偏移 {offset} 超出文件长度 {size} 字节（文件可能已被替换或截断）",
            )
        fingerprint = data.get("fingerprint")
        if fingerprint is not None and fingerprint != self._fingerprint(offset):
            raise CheckpointInvalid(
                self.checkpoint_path,
                f"文件在断点（字节偏移 {offset}）之前的内容与断点记录的不一致（文件已被替换或修改）",
            )
        if 0 < offset < size and not self._at_record_start(offset):
            raise CheckpointInvalid(
                self.checkpoint_path, f"断点偏移 {offset} 不在一条记录的开头（位于一行中间）"
            )
        return data

    def _fingerprint(self, offset: int) -> str:
        """A digest of the file's first bytes and of the bytes just before ``offset``:
        what a checkpoint was written after (appending to the file keeps it)."""
        digest = hashlib.sha256()
        with self.path.open("rb") as f:
            digest.update(f.read(min(offset, FINGERPRINT_BYTES)))
            f.seek(max(0, offset - FINGERPRINT_BYTES))
            digest.update(f.read(min(offset, FINGERPRINT_BYTES)))
        return digest.hexdigest()

    def _at_record_start(self, offset: int) -> bool:
        with self.path.open("rb") as f:
            f.seek(offset - 1)
            return f.read(1) in (b"\n", b"\r")

    def write_checkpoint(self, offset: int, number: int, report: LoadReport, done: bool) -> None:
        tmp = self.checkpoint_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "file": str(self.path.resolve()),
                    "format": self.fmt,
                    "offset": offset,
                    "records": number,
                    "stored": report.stored,
                    "errors": report.errors,
                    "done": done,
                    "fingerprint": self._fingerprint(offset),
                    "errors_file": str(self.errors_path.resolve()),
                    "errors_length": (
                        self.errors_path.stat().st_size if self.errors_path.exists() else 0
                    ),
                },
                ensure_ascii=False,
            ),
            "utf-8",
        )
        os.replace(tmp, self.checkpoint_path)

    # -- load
    def run(self, *, restart: bool = False, progress: Progress | None = None) -> LoadReport:
        """Load the file, holding an ``flock`` on it: two loads of one file (a scheduled
        job started while the last one still runs) would each write the checkpoint and
        the error file over the other's. The kernel drops the lock of a process that
        dies; the lock is advisory, so whatever still writes the file is not hindered."""
        with self.path.open("rb") as held:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise LoadRunning(self.path) from exc
            except OSError:
                pass  # a file system without flock (some network mounts): not guarded
            return self._run(restart, progress)

    def _run(self, restart: bool, progress: Progress | None) -> LoadReport:
        report = LoadReport()
        start, number = 0, 0
        checkpoint = None if restart else self.read_checkpoint()
        size = self.path.stat().st_size  # records up to here are read (and maybe more)
        if checkpoint is not None:
            start, number = int(checkpoint["offset"]), int(checkpoint["records"])
            report.resumed_from = start
            report.stored, report.errors = int(checkpoint["stored"]), int(checkpoint["errors"])
            report.finished_before = bool(checkpoint.get("done")) and start == size
            self._cut_errors(checkpoint)
        if restart and self.errors_path.exists():
            self.errors_path.unlink()
        # Written now, before anything is stored, so that a checkpoint that cannot be
        # written stops the load at once (the offset is what is already committed).
        self.write_checkpoint(start, number, report, False)
        records = (hl7_records if self.fmt == "hl7" else ndjson_records)(self.path, start, number)
        task = None
        self._logged = time.monotonic()
        if progress is not None:
            task = progress.add_task("导入", total=self.path.stat().st_size, completed=start)
        batch: list[tuple[Record, InboundMessage]] = []
        with self.errors_path.open("a", encoding="utf-8") as errors:
            last: Record | None = None
            for record in records:
                report.records += 1
                last = record
                try:
                    batch.append((record, parse_record(record, self.fmt, self.path.name)))
                except DomainError as exc:
                    self._error(errors, record, exc, report)
                if len(batch) >= self.batch_size:
                    self._flush(batch, errors, report)
                    batch = []
                    self.write_checkpoint(record.end, record.number, report, False)
                    if progress is not None and task is not None:
                        progress.update(task, completed=record.end)
                        self._log(progress, record, size, report)
            self._flush(batch, errors, report)
            # Not the size now: what was appended to the file while it was read is
            # after the last record read, and a rerun is to read it.
            self.write_checkpoint(
                max(last.end if last else start, size),
                last.number if last else number,
                report,
                True,
            )
            if progress is not None and task is not None:
                progress.update(task, completed=max(last.end if last else start, size))
        return report

    def _log(self, progress: Progress, record: Record, size: int, report: LoadReport) -> None:
        """A progress line now and then where the bar is not drawn (the output is a log
        file or a pipe, where a bar would be one line per refresh, or nothing until the
        end of a load of hours)."""
        now = time.monotonic()
        if progress.console.is_terminal or now - self._logged < LOG_EVERY:
            return
        self._logged = now
        progress.console.print(
            f"已读取 {min(100.0, record.end * 100 / max(size, 1)):.1f}%（至第 {record.number} 条记录）；"
            f"累计保存结果 {report.stored} 份，错误 {report.errors} 条",
            highlight=False,
            markup=False,
        )

    def _cut_errors(self, checkpoint: dict[str, Any]) -> None:
        """Cut the error file back to its length at the checkpoint: the records after it
        are read again, and their errors written again."""
        length = checkpoint.get("errors_length")
        if type(length) is not int or checkpoint.get("errors_file") != str(
            self.errors_path.resolve()
        ):
            return
        try:
            if self.errors_path.stat().st_size > length:
                os.truncate(self.errors_path, length)
        except FileNotFoundError:
            pass

    def _flush(
        self, batch: list[tuple[Record, InboundMessage]], errors: Any, report: LoadReport
    ) -> None:
        for items in _transactions(batch):
            self._store(items, errors, report)

    def _store(
        self, items: list[tuple[Record, InboundMessage]], errors: Any, report: LoadReport
    ) -> None:
        """Store ``items`` in one transaction; when it is refused, store each half on its
        own, down to the single record at fault, which is reported. Every record is thus
        stored whole in exactly one committed transaction, or not at all."""
        if len(items) == 1:
            record, msg = items[0]
            try:
                self._count(self.c.intake.receive(msg), report)
            except DomainError as exc:
                self._error(errors, record, exc, report)
            return
        merged = InboundMessage(
            channel=Channel.BULK,
            institution=items[0][1].institution,
            control_id=f"{self.path.name}:{items[0][0].number}-{items[-1][0].number}"[:64],
            raw="",
            submissions=tuple(s for _, msg in items for s in msg.submissions),
        )
        try:
            outcome = self.c.intake.receive(merged)
        except DomainError:
            half = len(items) // 2
            self._store(items[:half], errors, report)
            self._store(items[half:], errors, report)
            return
        self._count(outcome, report)

    @staticmethod
    def _count(outcome: ReceiveOutcome, report: LoadReport) -> None:
        report.stored += len(outcome.results)
        report.duplicates += outcome.unchanged
        report.changed += len(outcome.results) - outcome.unchanged
        for code in outcome.unmapped_codes:
            report.unmapped[code] = report.unmapped.get(code, 0) + 1

    @staticmethod
    def _error(errors: Any, record: Record, exc: DomainError, report: LoadReport) -> None:
        report.errors += 1
        problems = exc.problems or [Problem("", exc.message)]
        entry: dict[str, Any] = {"record": record.number, "offset": record.offset}
        if record.data.startswith(b"MSH"):
            entry["message_id"] = hl7_control_id(record.data)  # MSH-10, to find it
        entry["error"] = exc.message
        entry["problems"] = [{"field": p.field, "message": p.message} for p in problems]
        errors.write(json.dumps(entry, ensure_ascii=False) + "\n")
        errors.flush()


def ingest(
    file: Annotated[Path, typer.Argument(help="NDJSON 或 HL7 文件")],
    fmt: Annotated[str, typer.Option("--format", help="ndjson | hl7")] = "ndjson",
    errors: Annotated[
        Path | None, typer.Option(help="错误记录文件（默认 FILE.errors.ndjson）")
    ] = None,
    restart: Annotated[bool, typer.Option("--restart", help="忽略断点，从头导入")] = False,
    batch_size: Annotated[int, typer.Option(help="每批读取的记录数（批内按机构成事务）")] = 500,
) -> None:
    """批量导入历史检查检验结果（FHIR NDJSON 或 HL7 v2 ORU^R01 文件），可断点续传。"""
    if fmt not in ("ndjson", "hl7"):
        typer.echo("--format 只能是 ndjson 或 hl7", err=True)
        raise typer.Exit(2)
    if batch_size < 1:
        typer.echo(f"--batch-size 应为正整数，实际为 {batch_size}", err=True)
        raise typer.Exit(2)
    problem = input_file_problem(file)
    side_files = {
        "错误记录文件": errors or errors_path_of(file),
        "断点文件": checkpoint_path_of(file),
    }
    for label, side in side_files.items():
        if problem is None and side.resolve() == file.resolve():
            problem = f"{label} {side} 与导入文件相同"
        problem = problem or write_problem(side)
    if problem is None and (kind := content_problem(file, fmt)) is not None:
        problem = f"文件 {file} {kind}"
    if problem is not None:
        typer.echo(f"错误: {problem}", err=True)
        raise typer.Exit(2)
    container = build(get_settings())
    # The objects of startup live as long as the process: kept out of the collector's
    # full passes, which a stream of short-lived parsed records otherwise triggers often.
    gc.freeze()
    loader = BulkLoader(container, file, fmt, errors_path=errors, batch_size=batch_size)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, transient=False) as progress:
            report = loader.run(restart=restart, progress=progress)
    except (CheckpointInvalid, LoadRunning) as exc:
        typer.echo(f"错误: {exc}", err=True)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        typer.echo("已中断: 断点之前的记录均已保存，重新运行同一命令即从断点续传", err=True)
        raise typer.Exit(130) from None
    except OSError as exc:
        # e.g. the disk filled up: what is checkpointed is committed, so a rerun resumes
        where = f" {exc.filename}" if exc.filename else ""
        typer.echo(
            f"错误: 读写文件失败{where}（{exc.strerror or exc}）；修正后重新运行即可续传", err=True
        )
        raise typer.Exit(1) from exc
    finally:
        container.close()
    if report.finished_before:
        typer.echo(
            f"该文件此前已全部导入（断点文件 {loader.checkpoint_path}），本次未读取任何记录；"
            "如需重新导入请加 --restart"
        )
    elif report.resumed_from:
        typer.echo(f"从断点续传: 字节偏移 {report.resumed_from}")
    elif report.records == 0:
        typer.echo(f"文件 {file} 中没有记录（空文件或只有空行），未导入任何内容", err=True)
    typer.echo(
        f"本次读取 {report.records} 条记录；累计保存结果 {report.stored} 份"
        f"（本次新增或更新 {report.changed} 份，已存在且未变 {report.duplicates} 份），"
        f"错误 {report.errors} 条"
    )
    if report.unmapped:
        codes = "、".join(f"{k}×{v}" for k, v in sorted(report.unmapped.items()))
        typer.echo(f"未对码的本院编码（已保存并标记）: {codes}")
    if report.errors:
        typer.echo(f"错误明细见 {loader.errors_path}")
        raise typer.Exit(1)
