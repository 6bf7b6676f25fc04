"""``huren ingest`` walked as an integration engineer back-loading years of results
(issue 7 item 6): files that are not what ``--format`` reads, a FHIR bulk export's
Observation file, what a rerun after an interruption reports and writes, a file grown
while it was read, a finished file run again, and progress where no bar is drawn."""

from __future__ import annotations

import fcntl
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from huren.adapters.db.tables import result
from huren.bootstrap import Container
from huren.cli import ingest as ingest_cli
from huren.cli.ingest import BulkLoader, LoadReport, Record
from huren.cli.main import app
from huren.services.intake import InboundMessage
from tests.fixtures.fhir.builders import contained_report, dumps, observation

HL7_DIR = Path(__file__).parent.parent / "fixtures" / "hl7"
LAB = HL7_DIR / "oru_r01_lab_lft_v251_utf8.hl7"
runner = CliRunner()


@pytest.fixture
def cli(world: Container, monkeypatch: pytest.MonkeyPatch) -> Container:
    monkeypatch.setattr(ingest_cli, "get_settings", lambda: world.settings)
    return world


def _results(c: Container) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(result)).scalar_one())


def _ndjson(path: Path, n: int, *, tag: str = "W", bad_at: frozenset[int] = frozenset()) -> Path:
    lines = [
        dumps(
            contained_report(f"JY-{tag}-{k:05d}", n_obs=2, national_id="110101198001011230")
            if k in bad_at
            else contained_report(f"JY-{tag}-{k:05d}", n_obs=2)
        )
        for k in range(1, n + 1)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _errors(path: Path) -> list[dict[str, Any]]:
    text = path.with_name(path.name + ".errors.ndjson").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines()]


# ---------------------------------------------------------------- a file of another kind
def _hl7_bytes() -> bytes:
    return LAB.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r")


@pytest.mark.parametrize(
    ("name", "content", "fmt", "expected"),
    [
        # the common slip: an HL7 export loaded without --format (NDJSON is the default)
        ("lis-2019.hl7", _hl7_bytes(), "ndjson", "--format hl7"),
        ("reports.ndjson", dumps(contained_report("JY-J-1")) + b"\n", "hl7", "--format ndjson"),
        ("reports.ndjson.gz", gzip.compress(dumps(contained_report("JY-G-1"))), "ndjson", "gzip"),
        ("lis.hl7.gz", gzip.compress(_hl7_bytes()), "hl7", "gzip"),
        ("array.ndjson", b"[" + dumps(contained_report("JY-A-1")) + b"]", "ndjson", "JSON 数组"),
        (
            "utf16.hl7",
            "\ufeff".encode("utf-16-le") + _hl7_bytes().decode().encode("utf-16-le"),
            "hl7",
            "UTF-16",
        ),
        ("export.ndjson", "报告号,项目\nJY1,ALT\n".encode("gb18030"), "ndjson", "不是 NDJSON"),
    ],
)
def test_a_file_that_is_not_what_format_reads_is_refused_before_anything_is_read(
    cli: Container, tmp_path: Path, name: str, content: bytes, fmt: str, expected: str
) -> None:
    # Before: every line was one error (a gzip or HL7 file read as NDJSON, exit 1 with
    # an error file as long as the file), or the whole NDJSON file one HL7 "message"
    # held in memory at once.
    path = tmp_path / name
    path.write_bytes(content)
    r = runner.invoke(app, ["ingest", str(path), "--format", fmt])
    assert r.exit_code == 2, r.output
    assert expected in r.output, r.output
    assert name in r.output, r.output
    assert not path.with_name(name + ".errors.ndjson").exists()
    assert _results(cli) == 0


# ---------------------------------------------------------------- what the error file says
def test_a_line_of_a_fhir_bulk_export_observation_file_is_named_as_such(
    cli: Container, tmp_path: Path
) -> None:
    # Before: "DiagnosticReport.resourceType: 应为 DiagnosticReport" on every line of an
    # Observation.ndjson, not saying why nor what to send instead.
    obs = {
        **observation(
            0, "H130100001", ("ALT", "丙氨酸氨基转移酶", "1742-6", 56.0, "U/L", 9, 50, "H")
        ),
        "id": "obs-1",
        "subject": {"reference": "Patient/p-1"},
    }
    path = tmp_path / "Observation.ndjson"
    path.write_bytes(dumps(obs) + b"\n")
    r = runner.invoke(app, ["ingest", str(path)])
    assert r.exit_code == 1, r.output
    (entry,) = _errors(path)
    assert entry["record"] == 1
    assert "Observation" in entry["error"]
    assert entry["problems"][0]["field"] == "resourceType"
    assert "contained" in entry["problems"][0]["message"]


def test_an_hl7_error_names_the_message_control_id(cli: Container, tmp_path: Path) -> None:
    # Before: only the message's ordinal and byte offset; the engineer looks messages
    # up in the interface engine by MSH-10. (Blank lines and MLLP framing before the
    # first message are not taken for another kind of file.)
    good = _hl7_bytes()
    bad = b"\r".join(
        seg
        for seg in good.replace(b"LIS202606140001", b"LIS201901010077").split(b"\r")
        if not seg.startswith(b"PID")
    )
    path = tmp_path / "two.hl7"
    path.write_bytes(b"\r\n\r\n\x0b" + good + b"\x1c\r\n" + bad + b"\n")
    r = runner.invoke(app, ["ingest", str(path), "--format", "hl7"])
    assert r.exit_code == 1, r.output
    assert "本次读取 2 条记录" in r.output, r.output
    assert "错误 1 条" in r.output, r.output
    (entry,) = _errors(path)
    assert (entry["record"], entry["message_id"]) == (2, "LIS201901010077")
    assert entry["problems"][0]["field"]


# ---------------------------------------------------------------- reruns
class _Interrupted(Exception):
    pass


def test_a_record_read_again_after_an_interruption_is_reported_once(
    world: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Record 5 is refused while batch 4–6 is read; the load dies before that batch is
    # committed (Ctrl-C, SIGKILL). The rerun reads 4–6 again from the checkpoint: before,
    # record 5 was then in the error file twice (against 1 error counted).
    path = _ndjson(tmp_path / "h.ndjson", 9, bad_at=frozenset({5}))
    loader = BulkLoader(world, path, "ndjson", batch_size=3)
    flushes = 0
    real_flush = loader._flush

    def die_on_second(
        batch: list[tuple[Record, InboundMessage]], errors: Any, report: LoadReport
    ) -> None:
        nonlocal flushes
        flushes += 1
        if flushes == 2:
            raise _Interrupted
        real_flush(batch, errors, report)

    monkeypatch.setattr(loader, "_flush", die_on_second)
    with pytest.raises(_Interrupted):
        loader.run()
    assert [e["record"] for e in _errors(path)] == [5]

    report = BulkLoader(world, path, "ndjson", batch_size=3).run()
    assert (report.records, report.errors) == (6, 1)
    assert [e["record"] for e in _errors(path)] == [5]
    assert _results(world) == 8


def test_a_rerun_counts_results_already_stored_one_by_one(world: Container, tmp_path: Path) -> None:
    # Before: "重复" counted the batches found resent (2 here), not the 6 results: after
    # a SIGKILL the engineer could not tell whether the rerun stored anything again.
    path = _ndjson(tmp_path / "r.ndjson", 6)
    first = BulkLoader(world, path, "ndjson", batch_size=3).run()
    assert (first.stored, first.changed, first.duplicates) == (6, 6, 0)
    again = BulkLoader(world, path, "ndjson", batch_size=3).run(restart=True)
    assert (again.stored, again.changed, again.duplicates) == (6, 0, 6)
    assert _results(world) == 6


def test_the_summary_says_how_many_results_this_run_stored(cli: Container, tmp_path: Path) -> None:
    path = _ndjson(tmp_path / "s.ndjson", 4)
    assert runner.invoke(app, ["ingest", str(path)]).exit_code == 0
    r = runner.invoke(app, ["ingest", str(path), "--restart"])
    assert r.exit_code == 0, r.output
    assert "本次新增或更新 0 份，已存在且未变 4 份" in r.output, r.output


def test_a_finished_file_run_again_says_it_was_loaded(cli: Container, tmp_path: Path) -> None:
    # Before: "从断点续传: 字节偏移 N", as if an interrupted load were being continued.
    path = _ndjson(tmp_path / "done.ndjson", 2)
    assert runner.invoke(app, ["ingest", str(path)]).exit_code == 0
    r = runner.invoke(app, ["ingest", str(path)])
    assert r.exit_code == 0, r.output
    assert "此前已全部导入" in r.output, r.output
    assert "--restart" in r.output, r.output
    assert "从断点续传" not in r.output


def test_an_empty_file_is_said_to_be_empty(cli: Container, tmp_path: Path) -> None:
    for name, fmt in (("empty.ndjson", "ndjson"), ("blank.hl7", "hl7")):
        path = tmp_path / name
        path.write_bytes(b"" if fmt == "ndjson" else b"\r\n\r\n")
        r = runner.invoke(app, ["ingest", str(path), "--format", fmt])
        assert r.exit_code == 0, r.output
        assert "没有记录" in r.output, r.output


def test_records_appended_while_the_file_is_read_are_read_by_the_next_run(
    world: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interface engine still appending today's export: before, the final checkpoint
    # took the file's size after the read, past the record appended meanwhile, which
    # every later run then skipped.
    path = _ndjson(tmp_path / "growing.ndjson", 3)
    real = ingest_cli.ndjson_records

    def appending(p: Path, start: int = 0, number: int = 0) -> Iterator[Record]:
        yield from real(p, start, number)
        with p.open("ab") as f:
            f.write(dumps(contained_report("JY-W-LATE", n_obs=2)) + b"\n")

    monkeypatch.setattr(ingest_cli, "ndjson_records", appending)
    assert BulkLoader(world, path, "ndjson").run().records == 3
    monkeypatch.setattr(ingest_cli, "ndjson_records", real)
    later = BulkLoader(world, path, "ndjson").run()
    assert (later.records, later.errors) == (1, 0)
    assert _results(world) == 4


# ---------------------------------------------------------------- progress without a terminal
def test_progress_is_logged_now_and_then_when_the_output_is_not_a_terminal(
    cli: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: a load run under nohup or cron printed nothing until it ended (hours).
    path = _ndjson(tmp_path / "log.ndjson", 6)
    monkeypatch.setattr(ingest_cli, "LOG_EVERY", 0.0)
    r = runner.invoke(app, ["ingest", str(path), "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("已读取")]
    assert len(lines) == 3, r.output
    assert "第 2 条记录" in lines[0]
    assert "\x1b[" not in r.output
    monkeypatch.setattr(ingest_cli, "LOG_EVERY", 3600.0)
    quiet = runner.invoke(app, ["ingest", str(path), "--restart", "--batch-size", "2"])
    assert not any(line.startswith("已读取") for line in quiet.output.splitlines())


# ---------------------------------------------------------------- one load of a file at a time
def test_a_second_load_of_a_file_being_loaded_is_refused(cli: Container, tmp_path: Path) -> None:
    # A nightly job started while last night's still runs: before, both loaded the file,
    # each writing the checkpoint and the error file over the other's.
    path = _ndjson(tmp_path / "nightly.ndjson", 2)
    with path.open("rb") as running:
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = runner.invoke(app, ["ingest", str(path)])
    assert r.exit_code == 2, r.output
    assert "正在由另一个 huren ingest 进程导入" in r.output, r.output
    assert _results(cli) == 0
    assert runner.invoke(app, ["ingest", str(path)]).exit_code == 0
    assert _results(cli) == 2
