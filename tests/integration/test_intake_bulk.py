"""Bulk back-loading (``huren ingest``): streaming NDJSON and HL7 files, per-record
errors to a file, resumable after an interruption, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from huren.adapters.db.tables import result
from huren.bootstrap import Container
from huren.cli.ingest import BulkLoader, LoadReport, Record, hl7_records
from huren.services.intake import InboundMessage
from tests.fixtures.fhir.builders import contained_report, dumps, lab_bundle

HL7_DIR = Path(__file__).parent.parent / "fixtures" / "hl7"


def _results(c: Container) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(result)).scalar_one())


def _ndjson(path: Path, n: int, *, bad_at: frozenset[int] = frozenset()) -> Path:
    lines = []
    for k in range(1, n + 1):
        national = "110101198001011230" if k in bad_at else None
        report = (
            contained_report(f"JY-B-{k:05d}", n_obs=3, national_id=national)
            if national
            else contained_report(f"JY-B-{k:05d}", n_obs=3)
        )
        lines.append(dumps(report))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_ndjson_file_is_loaded_with_bad_lines_reported_to_the_error_file(
    world: Container, tmp_path: Path
) -> None:
    path = _ndjson(tmp_path / "history.ndjson", 12, bad_at=frozenset({5}))
    report = BulkLoader(world, path, "ndjson", batch_size=4).run()
    assert (report.records, report.stored, report.errors) == (12, 11, 1)
    assert _results(world) == 11
    errors = [
        json.loads(x) for x in (tmp_path / "history.ndjson.errors.ndjson").read_text().splitlines()
    ]
    assert [e["record"] for e in errors] == [5]
    assert "居民身份证" in errors[0]["problems"][0]["message"]


def test_ndjson_observation_notes_are_kept_as_comments(world: Container, tmp_path: Path) -> None:
    """A bulk line's contained Observation.note goes the single POST's way (the fast
    decoding of self-contained reports has a model of its own to keep in step)."""
    report = contained_report("JY-B-NOTE1", n_obs=2)
    report["contained"][2]["note"] = [{"text": "标本轻度溶血"}]
    path = tmp_path / "notes.ndjson"
    path.write_bytes(dumps(report) + b"\n")
    assert BulkLoader(world, path, "ndjson").run().stored == 1
    with world.engine.connect() as conn:
        rid = conn.execute(select(func.max(result.c.id))).scalar_one()
    first, second = world.results.get_result(rid).observations
    assert (first.comment, second.comment) == ("标本轻度溶血", "")


def test_transaction_bundles_are_accepted_as_ndjson_lines(world: Container, tmp_path: Path) -> None:
    path = tmp_path / "bundles.ndjson"
    path.write_bytes(
        dumps(lab_bundle("JY-X-1", n_obs=2)) + b"\n" + dumps(lab_bundle("JY-X-2")) + b"\n"
    )
    report = BulkLoader(world, path, "ndjson").run()
    assert (report.stored, report.errors) == (2, 0)


class _Interrupted(Exception):
    pass


def test_interrupted_load_resumes_from_its_checkpoint_and_stores_each_once(
    world: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _ndjson(tmp_path / "big.ndjson", 20)
    loader = BulkLoader(world, path, "ndjson", batch_size=5)
    flushes = 0
    real_flush = loader._flush

    def crash_on_third(
        batch: list[tuple[Record, InboundMessage]], errors: Any, report: LoadReport
    ) -> None:
        nonlocal flushes
        flushes += 1
        if flushes == 3:
            raise _Interrupted
        real_flush(batch, errors, report)

    monkeypatch.setattr(loader, "_flush", crash_on_third)
    with pytest.raises(_Interrupted):
        loader.run()
    assert _results(world) == 10

    resumed = BulkLoader(world, path, "ndjson", batch_size=5).run()
    assert resumed.resumed_from > 0
    assert resumed.records == 10  # only the records after the checkpoint were read
    assert _results(world) == 20


def test_finished_load_run_again_reads_nothing(world: Container, tmp_path: Path) -> None:
    path = _ndjson(tmp_path / "done.ndjson", 3)
    BulkLoader(world, path, "ndjson").run()
    again = BulkLoader(world, path, "ndjson").run()
    assert again.records == 0
    assert _results(world) == 3


def test_hl7_file_is_split_into_messages_at_msh(tmp_path: Path) -> None:
    raw = b"".join(
        (HL7_DIR / name).read_bytes() + b"\n"
        for name in ("oru_r01_lab_lft_v251_utf8.hl7", "oru_r01_ct_chest_report_v24.hl7")
    )
    path = tmp_path / "messages.hl7"
    path.write_bytes(raw)
    records = list(hl7_records(path))
    assert len(records) == 2
    assert all(r.data.startswith(b"MSH") for r in records)
    assert records[1].offset >= records[0].end


def test_hl7_batch_file_envelope_is_not_a_record(world: Container, tmp_path: Path) -> None:
    # An engine's export: FHS BHS {MSH …} BTS FTS (v2.5.1 §2.10.3). The envelope was read
    # as a record of its own and counted as an error.
    messages = [
        (HL7_DIR / name).read_bytes().strip()
        for name in ("oru_r01_lab_lft_v251_utf8.hl7", "oru_r01_ct_chest_report_v24.hl7")
    ]
    path = tmp_path / "batch.hl7"
    path.write_bytes(
        b"FHS|^~\\&|LIS|H130100001|||20260612083000||||F0001\r"
        b"BHS|^~\\&|LIS|H130100001|||20260612083000||||B0001\r"
        + b"\r".join(messages)
        + b"\rBTS|2\rFTS|1\r"
    )
    records = list(hl7_records(path))
    assert [r.data[:3] for r in records] == [b"MSH", b"MSH"]
    assert not any(seg in r.data for r in records for seg in (b"BTS", b"FTS", b"BHS"))
    report = BulkLoader(world, path, "hl7").run()
    assert (report.records, report.errors) == (2, 0)


def test_hl7_file_is_loaded_through_the_hl7_parser(world: Container, tmp_path: Path) -> None:
    path = tmp_path / "messages.hl7"
    path.write_bytes((HL7_DIR / "oru_r01_lab_lft_v251_utf8.hl7").read_bytes())
    report = BulkLoader(world, path, "hl7").run()
    assert report.errors == 0
    assert report.stored >= 1
    assert _results(world) == report.stored
