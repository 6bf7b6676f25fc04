"""Claim batch files for insurer verification: CSV (UTF-8, with or without BOM; GB18030
accepted) and Excel .xlsx (openpyxl) in; CSV and .xlsx reports out.

Columns: see ``huren.domain.insurer.COLUMNS`` (English names or the Chinese headers of a
claims export)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from openpyxl import Workbook, load_workbook

from huren.domain.errors import Problem, ProblemCollector, ValidationFailed
from huren.domain.insurer import COLUMNS, MAX_LINES, ClaimLine, claim_line_from_row

_ALIASES = {alias.strip().lower(): key for key, names in COLUMNS.items() for alias in names}

REPORT_HEADER = [
    ("claim_no", "结算单号"),
    ("line_no", "明细序号"),
    ("patient", "患者证件（脱敏）"),
    ("institution", "机构编码"),
    ("institution_name", "机构名称"),
    ("item_code", "互认项目编码"),
    ("item_name", "项目名称"),
    ("service_date", "服务日期"),
    ("prior", "开单时可互认结果"),
    ("reminder_shown", "是否推送提醒"),
    ("decision", "医师决定"),
    ("reason", "理由"),
    ("flags", "疑点"),
    ("summary", "核查说明"),
]


def _decode(data: bytes) -> str:
    for enc in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    raise ValidationFailed(
        "文件编码无法识别（请使用 UTF-8 或 GB18030）", problems=[Problem("file", "编码无法识别")]
    )


def _normalize(header: Sequence[Any]) -> list[str | None]:
    return [_ALIASES.get(str(h or "").strip().lower()) for h in header]


def _rows_to_lines(
    header: Sequence[Any], rows: Sequence[Sequence[Any]], first_row: int
) -> list[tuple[int, ClaimLine]]:
    keys = _normalize(header)
    if "claim_no" not in keys or "id_value" not in keys:
        raise ValidationFailed(
            "文件缺少必需的列",
            problems=[
                Problem(
                    "header",
                    "需要列 claim_no（结算单号）、id_value（证件号码）、institution、item_code 或 local_code、service_date",
                )
            ],
        )
    if len(rows) > MAX_LINES:
        raise ValidationFailed(
            f"一次最多核查 {MAX_LINES} 条明细", problems=[Problem("file", f"共 {len(rows)} 行")]
        )
    errors = ProblemCollector()
    lines: list[tuple[int, ClaimLine]] = []
    for n, row in enumerate(rows, start=first_row):
        if not any(str(v or "").strip() for v in row):
            continue
        values: dict[str, str] = {}
        for key, value in zip(keys, row, strict=False):
            if key is None:
                continue
            if hasattr(value, "date") and callable(value.date):
                value = value.date().isoformat()
            elif hasattr(value, "isoformat"):
                value = value.isoformat()
            elif isinstance(value, float) and value.is_integer():
                value = str(int(value))
            values[key] = "" if value is None else str(value)
        line = claim_line_from_row(values, f"第 {n} 行", errors)
        if line is not None:
            lines.append((n, line))
    errors.raise_if_any("文件中有无效的行，未作核查")
    if not lines:
        raise ValidationFailed("文件中没有结算明细", problems=[Problem("file", "没有数据行")])
    return lines


def parse_csv(data: bytes) -> list[tuple[int, ClaimLine]]:
    text = _decode(data)
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ValidationFailed("文件为空", problems=[Problem("file", "没有内容")])
    return _rows_to_lines(rows[0], rows[1:], 2)


def parse_xlsx(data: bytes) -> list[tuple[int, ClaimLine]]:
    try:
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a damaged file
        raise ValidationFailed(
            "无法读取 Excel 文件（需要 .xlsx）", problems=[Problem("file", str(exc)[:200])]
        ) from exc
    ws = wb.worksheets[0]
    rows = [list(r) for r in ws.iter_rows(values_only=True)]
    wb.close()
    if not rows:
        raise ValidationFailed("工作表为空", problems=[Problem("file", "没有内容")])
    return _rows_to_lines(rows[0], rows[1:], 2)


def parse_claims(filename: str, content_type: str, data: bytes) -> list[ClaimLine]:
    return [line for _, line in parse_claims_numbered(filename, content_type, data)]


def parse_claims_numbered(
    filename: str, content_type: str, data: bytes
) -> list[tuple[int, ClaimLine]]:
    """The claim lines of a batch file, each with its row number in the file (the header
    is row 1), so that a problem found later can name the row."""
    name = filename.lower()
    if name.endswith(".xlsx") or "spreadsheetml" in content_type:
        return parse_xlsx(data)
    if name.endswith(".csv") or content_type.startswith("text/"):
        return parse_csv(data)
    raise ValidationFailed(
        "不支持的文件类型（请上传 .csv 或 .xlsx）", problems=[Problem("file", filename or "未命名")]
    )


def report_rows(verdicts: Sequence[dict[str, Any]]) -> list[list[str]]:
    out = [[label for _, label in REPORT_HEADER]]
    for v in verdicts:
        prior = v.get("recognizable_prior")
        d = v.get("decision")
        out.append(
            [
                v["claim_no"],
                v["line_no"],
                v["patient"],
                v["institution"],
                v["institution_name"],
                v["item_code"],
                v["item_name"],
                v["service_date"],
                f"{prior['institution_name'] or prior['institution']} {prior['performed_at'][:10]} {prior['report_no']}"
                if prior
                else "无",
                "是" if v["reminder_shown"] else "否",
                {"accepted": "互认", "declined": "不予互认"}.get(d["action"], d["action"])
                if d
                else "无记录",
                (d["reason"] + (f"：{d['reason_text']}" if d["reason_text"] else ""))
                if d and d["action"] == "declined"
                else "",
                "；".join(v["flag_labels"]),
                v["summary"],
            ]
        )
    return out


def report_csv(verdicts: Sequence[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(report_rows(verdicts))
    return buf.getvalue().encode("utf-8-sig")  # BOM: Excel opens it as UTF-8


def report_xlsx(verdicts: Sequence[dict[str, Any]]) -> bytes:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "医保核查"
    for row in report_rows(verdicts):
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
