"""CSV and Excel (.xlsx) tables for catalog import and export (``TabularCodec``).

CSV is read as UTF-8 (with or without BOM) and, failing that, GB18030 — what regulators'
Excel saves as "CSV" on a Chinese Windows; it is written as UTF-8 with BOM so that Excel
opens it correctly. XLSX is read and written with openpyxl (first worksheet)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import PurePath

from openpyxl import Workbook, load_workbook

from huren.domain.errors import Problem, ValidationFailed
from huren.services.catalog_io import TableData

FORMATS = ("csv", "xlsx")


def format_of(filename: str) -> str:
    suffix = PurePath(filename).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValidationFailed(
            f"不支持的文件类型“{suffix or filename}”，请使用 CSV 或 Excel (.xlsx)",
            problems=[Problem("file", "文件扩展名应为 .csv 或 .xlsx")],
        )
    return suffix


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        if value.hour == value.minute == value.second == 0:
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            "无法识别文件编码（应为 UTF-8 或 GB18030）",
            problems=[Problem("file", "文件编码既不是 UTF-8 也不是 GB18030")],
        ) from exc


class TabularFiles:
    """Implements ``huren.services.catalog_io.TabularCodec``."""

    def read(self, data: bytes, filename: str) -> TableData:
        fmt = format_of(filename)
        rows: list[list[str]]
        if fmt == "csv":
            text = _decode(data)
            try:
                rows = list(csv.reader(io.StringIO(text, newline="")))
            except csv.Error as exc:
                raise ValidationFailed(
                    "CSV 文件格式错误", problems=[Problem("file", f"CSV 格式错误: {exc}")]
                ) from exc
        else:
            try:
                wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
            except Exception as exc:  # openpyxl raises many types for a broken file
                raise ValidationFailed(
                    "无法读取 Excel 文件", problems=[Problem("file", "不是有效的 .xlsx 文件")]
                ) from exc
            ws = wb.worksheets[0]
            rows = [[_cell_text(v) for v in row] for row in ws.iter_rows(values_only=True)]
            wb.close()
        if not rows:
            raise ValidationFailed("文件为空", problems=[Problem("row 1", "文件为空，缺少表头")])
        headers = [h.strip() for h in rows[0]]
        data_rows = [
            (number, [c.strip() for c in row])
            for number, row in enumerate(rows[1:], start=2)
            if any(c.strip() for c in row)
        ]
        return TableData(headers, data_rows)

    def write(self, headers: Sequence[str], rows: Sequence[Sequence[str]], filename: str) -> bytes:
        fmt = format_of(filename)
        if fmt == "csv":
            buf = io.StringIO(newline="")
            writer = csv.writer(buf, lineterminator="\r\n")
            writer.writerow(headers)
            writer.writerows(rows)
            return b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8")
        wb = Workbook(write_only=True)
        ws = wb.create_sheet("catalog")
        ws.append(list(headers))
        for row in rows:
            ws.append(list(row))
        out = io.BytesIO()
        wb.save(out)
        return out.getvalue()
