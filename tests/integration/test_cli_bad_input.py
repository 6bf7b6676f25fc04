"""Bad files and arguments given to the command-line tools end in a Chinese message
naming the file, line or field and a non-zero exit code — never a traceback, a hang, a
half-written result or a lost record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from huren.adapters.db.tables import result
from huren.bootstrap import Container
from huren.cli import catalog as catalog_cli
from huren.cli import ingest as ingest_cli
from huren.cli import synth as synth_cli
from huren.cli.ingest import BulkLoader, CheckpointInvalid, hl7_records
from huren.cli.main import app
from huren.domain.errors import ValidationFailed
from huren.services.catalog_io import COLUMNS, CatalogKind
from tests.fixtures import world as w
from tests.fixtures.fhir.builders import contained_report, dumps

HL7_DIR = Path(__file__).parent.parent / "fixtures" / "hl7"
runner = CliRunner()


def _results(c: Container) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(result)).scalar_one())


def _lines(n: int, tag: str = "C") -> list[bytes]:
    return [dumps(contained_report(f"JY-{tag}-{k:05d}", n_obs=2)) for k in range(1, n + 1)]


@pytest.fixture
def cli(world: Container, monkeypatch: pytest.MonkeyPatch) -> Container:
    for module in (ingest_cli, catalog_cli, synth_cli):
        monkeypatch.setattr(module, "get_settings", lambda: world.settings)
    return world


def _fails(args: list[str], code: int, *expected: str) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == code, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    for text in expected:
        assert text in r.output, r.output
    return r.output


# ---------------------------------------------------------------- huren ingest: the file
def test_ingest_refuses_a_directory_a_missing_file_and_a_device(
    cli: Container, tmp_path: Path
) -> None:
    _fails(["ingest", str(tmp_path)], 2, "是目录")
    _fails(["ingest", str(tmp_path / "none.ndjson")], 2, "不存在")
    # /dev/zero is endless: before the fix it was read as one line forever
    _fails(["ingest", "/dev/zero"], 2, "不是普通文件")


def test_ingest_refuses_an_error_file_that_is_the_input_or_cannot_be_written(
    cli: Container, tmp_path: Path
) -> None:
    path = tmp_path / "in.ndjson"
    path.write_bytes(_lines(1)[0][:50] + b"\n")  # one bad line: an error to write
    # the input as its own error file grew without end before the fix
    _fails(["ingest", str(path), "--errors", str(path)], 2, "与导入文件相同")
    _fails(["ingest", str(path), "--errors", str(tmp_path / "no" / "e.ndjson")], 2, "不存在")
    _fails(["ingest", str(path), "--errors", str(tmp_path)], 2, "是目录")
    _fails(["ingest", str(path), "--batch-size", "0"], 2, "--batch-size")
    assert path.stat().st_size < 100


def test_ingest_of_a_line_nested_too_deep_reports_that_line_and_goes_on(
    cli: Container, tmp_path: Path
) -> None:
    path = tmp_path / "deep.ndjson"
    good = _lines(2)
    path.write_bytes(good[0] + b"\n" + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"\n" + good[1])
    out = _fails(["ingest", str(path)], 1, "错误 1 条")
    assert "累计保存结果 2 份" in out
    errors = [
        json.loads(x) for x in (tmp_path / "deep.ndjson.errors.ndjson").read_text().split("\n") if x
    ]
    assert [e["record"] for e in errors] == [2]
    assert "嵌套" in errors[0]["problems"][0]["message"]
    assert _results(cli) == 2


def test_ingest_skips_a_utf8_byte_order_mark(cli: Container, tmp_path: Path) -> None:
    path = tmp_path / "bom.ndjson"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(_lines(3)) + b"\r\n")
    report = BulkLoader(cli, path, "ndjson").run()
    assert (report.records, report.errors) == (3, 0)
    assert _results(cli) == 3


def test_hl7_file_with_cr_segment_ends_a_bom_and_mllp_framing_is_split_into_messages(
    tmp_path: Path,
) -> None:
    msgs = [
        (HL7_DIR / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r")
        for name in ("oru_r01_lab_lft_v251_utf8.hl7", "oru_r01_ct_chest_report_v24.hl7")
    ]
    path = tmp_path / "cr.hl7"
    path.write_bytes(b"\xef\xbb\xbf" + b"\x0b" + msgs[0] + b"\x1c\r\x0b" + msgs[1] + b"\x1c\r")
    records = list(hl7_records(path))
    assert len(records) == 2
    assert all(r.data.startswith(b"MSH") and b"\x1c" not in r.data for r in records)
    assert records[1].offset >= records[0].end


# ---------------------------------------------------------------- huren ingest: checkpoints
def _checkpointed(c: Container, tmp_path: Path) -> tuple[BulkLoader, Path, dict[str, object]]:
    """A file of 6 lines loaded up to a checkpoint after line 3."""
    path = tmp_path / "ck.ndjson"
    lines = _lines(6, "K")
    path.write_bytes(b"\n".join(lines) + b"\n")
    loader = BulkLoader(c, path, "ndjson", batch_size=3)
    loader.run()
    after_three = sum(len(x) + 1 for x in lines[:3])
    loader.write_checkpoint(after_three, 3, ingest_cli.LoadReport(stored=3), False)
    return loader, path, json.loads(loader.checkpoint_path.read_text())


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda ck: "{not json", "不是有效的 JSON"),
        (lambda ck: "[1, 2]", "JSON 对象"),
        (lambda ck: json.dumps({**ck, "offset": -5}), "offset 应为非负整数"),
        (lambda ck: json.dumps({**ck, "offset": "abc"}), "offset 应为非负整数"),
        (lambda ck: json.dumps({**ck, "records": None}), "records 应为非负整数"),
        (lambda ck: json.dumps({**ck, "offset": 10**9}), "超出文件长度"),
        (lambda ck: json.dumps({**ck, "offset": 100, "fingerprint": None}), "不在一条记录的开头"),
    ],
)
def test_a_broken_checkpoint_stops_the_load_naming_the_checkpoint_file(
    cli: Container, tmp_path: Path, edit: object, reason: str
) -> None:
    loader, path, ck = _checkpointed(cli, tmp_path)
    loader.checkpoint_path.write_text(edit(ck))  # type: ignore[operator]
    with pytest.raises(CheckpointInvalid, match=reason):
        BulkLoader(cli, path, "ndjson").run()
    out = _fails(["ingest", str(path)], 2, "断点文件", "--restart")
    assert "ck.ndjson.checkpoint.json" in out
    assert runner.invoke(app, ["ingest", str(path), "--restart"]).exit_code == 0
    assert _results(cli) == 6


def test_a_checkpoint_of_a_replaced_file_does_not_skip_the_new_files_records(
    cli: Container, tmp_path: Path
) -> None:
    _, path, _ = _checkpointed(cli, tmp_path)
    # the same name, new content of the same shape: resuming at the old offset would
    # silently skip the new file's first three records
    path.write_bytes(b"\n".join(_lines(6, "N")) + b"\n")
    _fails(["ingest", str(path)], 2, "断点文件", "已被替换或修改")
    assert runner.invoke(app, ["ingest", str(path), "--restart"]).exit_code == 0
    assert _results(cli) == 12


def test_a_checkpoint_still_resumes_after_records_are_appended(
    cli: Container, tmp_path: Path
) -> None:
    _, path, _ = _checkpointed(cli, tmp_path)
    with path.open("ab") as f:
        f.write(b"\n".join(_lines(2, "A")) + b"\n")
    report = BulkLoader(cli, path, "ndjson").run()
    assert report.records == 5  # lines 4–8: after the checkpoint only
    assert _results(cli) == 8


# ---------------------------------------------------------------- huren catalog
ITEMS = "项目编码,项目名称,类别,标本类型,参考时限(小时),价格(分),质量要求\n"


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ("JY-Z-1,x,检验,血清,nan,1,", "参考时限", "之间的整数"),
        ("JY-Z-1,x,检验,血清,inf,1,", "参考时限", "之间的整数"),
        (f"JY-Z-1,x,检验,血清,{2**70},1,", "参考时限", "之间的整数"),
        (f"JY-Z-1,x,检验,血清,24,{2**31},", "价格", "之间的整数"),
        ("JY-Z-1,x,检验,血清,24,nan,", "价格", "之间的整数"),
        ("JY-Z-1\x00,x,检验,血清,24,1,", "项目编码", "控制字符"),
        (f"{'X' * 33},x,检验,血清,24,1,", "项目编码", "过长"),
        (f"JY-Z-1,{'名' * 201},检验,血清,24,1,", "项目名称", "过长"),
        ('JY-Z-1,x,检验,血清,24,1,"{""min_images"": 1e999}"', "质量要求", "min_images"),
        (
            'JY-Z-1,x,检验,血清,24,1,"' + '{""a"":' * 3000 + "1" + "}" * 3000 + '"',
            "质量要求",
            "嵌套",
        ),
        (
            'JY-Z-1,x,检验,血清,24,1,"{""required_series"": [{""name"": ""x"", '
            '""slice_thickness_max_mm"": NaN}]}"',
            "质量要求",
            "NaN",
        ),
        (
            'JY-Z-1,x,检验,血清,24,1,"{""required_series"": [{""name"": ""x"", '
            '""slice_thickness_max_mm"": ""abc""}]}"',
            "质量要求",
            "slice_thickness_max_mm",
        ),
    ],
)
def test_catalog_rows_with_odd_values_are_rejected_naming_row_and_column(
    world: Container, row: str, field: str, reason: str
) -> None:
    with pytest.raises(ValidationFailed) as exc:
        world.catalog_io.import_file(CatalogKind.ITEMS, (ITEMS + row + "\n").encode(), "items.csv")
    assert any(
        p.field.startswith(f"row 2: {field}") and reason in p.message for p in exc.value.problems
    ), exc.value.problems


@pytest.mark.parametrize(
    ("kind", "text", "field"),
    [
        (
            CatalogKind.INSTITUTIONS,
            f"机构编码,机构名称,等级,所在辖区\n{'H' * 40},某医院,三级,HE-BD\n",
            "机构编码",
        ),
        (
            CatalogKind.CODE_MAPS,
            f"机构编码,本院编码,统一编码\n{w.HOSP_A},{'L' * 65},{w.CBC}\n",
            "本院编码",
        ),
        (CatalogKind.SCOPES, f"编码,名称,类型,简称\nSCX,某省,省,{'a' * 17}\n", "简称"),
        (
            CatalogKind.ITEM_LISTS,
            f"辖区,版本,生效日期,项目编码\nBJ,{'v' * 33},2030-01-01,{w.CBC}\n",
            "版本",
        ),
    ],
)
def test_catalog_values_wider_than_their_column_are_rejected(
    world: Container, kind: CatalogKind, text: str, field: str
) -> None:
    with pytest.raises(ValidationFailed) as exc:
        world.catalog_io.import_file(kind, text.encode(), f"{kind}.csv")
    assert any(p.field == f"row 2: {field}" and "过长" in p.message for p in exc.value.problems)


def test_item_list_file_whose_every_row_is_bad_lists_the_rows(world: Container) -> None:
    text = "辖区,版本,生效日期,项目编码\nBJ,V1,2026-02-30,JY-SH-001\nBJ,V1,0000-01-01,JY-SH-001\n"
    with pytest.raises(ValidationFailed) as exc:
        world.catalog_io.import_file(CatalogKind.ITEM_LISTS, text.encode(), "lists.csv")
    assert [p.field for p in exc.value.problems] == ["row 2: 生效日期", "row 3: 生效日期"]


def test_catalog_column_widths_are_those_of_the_database() -> None:
    from sqlalchemy import Table

    from huren.adapters.db import tables as t

    tables: dict[CatalogKind, Table] = {
        CatalogKind.SCOPES: t.scope,
        CatalogKind.ITEMS: t.item,
        CatalogKind.ITEM_LISTS: t.item_list_version,
        CatalogKind.INSTITUTIONS: t.institution,
        CatalogKind.QUALIFICATIONS: t.qualification,
        CatalogKind.CODE_MAPS: t.code_map,
    }
    renamed = {
        "group": "group_code",
        "institution": "institution_code",
        "item": "item_code",
        "scope": "scope_code",
    }
    for kind, table in tables.items():
        for c in COLUMNS[kind]:
            if not c.max_length:
                continue
            name = renamed.get(c.key, c.key)
            column = (table if name in table.c else t.item_list_entry).c[name]
            assert c.max_length == getattr(column.type, "length", None), (kind, c.key)


def test_catalog_import_refuses_a_directory_and_a_device(cli: Container, tmp_path: Path) -> None:
    _fails(["catalog", "import", "items", str(tmp_path)], 2, "是目录")
    _fails(["catalog", "import", "items", "/dev/zero"], 2, "不是普通文件")
    _fails(["catalog", "import", "items", str(tmp_path / "x.csv")], 2, "不存在")


def test_catalog_import_refuses_a_too_long_actor(cli: Container, tmp_path: Path) -> None:
    path = tmp_path / "maps.csv"
    path.write_text(f"机构编码,本院编码,统一编码\n{w.HOSP_A},NEW-1,{w.CBC}\n", "utf-8")
    _fails(["catalog", "import", "code_maps", str(path), "--actor", "a" * 65], 1, "actor")


def test_catalog_export_to_a_bad_path_fails_and_leaves_the_old_file(
    cli: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fails(["catalog", "export", "items", str(tmp_path)], 2, "是目录")
    _fails(["catalog", "export", "items", str(tmp_path / "no" / "items.csv")], 2, "不存在")
    target = tmp_path / "items.csv"
    target.write_bytes(b"old")

    def full_disk(self: Path, data: bytes) -> int:
        with self.open("wb") as f:
            f.write(data[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    _fails(["catalog", "export", "items", str(target)], 1, "无法写入")
    assert target.read_bytes() == b"old"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


# ---------------------------------------------------------------- huren synth
def test_synth_into_a_database_with_the_same_institutions_is_refused_before_writing(
    cli: Container,
) -> None:
    before = _results(cli)
    # the seeded world's hospitals have the codes the synthetic world gives its own
    _fails(["synth", "--seed", "1", "--results", "5", "--institutions", "10"], 2, "--append")
    assert _results(cli) == before


def test_synth_append_without_the_master_data_is_refused_before_writing(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(synth_cli, "get_settings", lambda: container.settings)
    _fails(["synth", "--seed", "1", "--results", "5", "--append"], 2, "--append", "缺少")
    assert _results(container) == 0


def test_synth_refuses_more_institutions_than_it_can_place(cli: Container) -> None:
    _fails(["synth", "--seed", "1", "--results", "5", "--institutions", "100000000"], 2, "最多")
