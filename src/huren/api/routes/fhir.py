"""FHIR R4 at /fhir: transaction Bundles and single DiagnosticReports in, search / read /
vread / history out, bulk NDJSON via $import.

Errors on this router are OperationOutcome (application/fhir+json) naming the element;
the route class below catches them locally so the rest of the API keeps problem+json."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from huren.adapters.db.results import ResultQuery
from huren.adapters.fhir import render
from huren.adapters.fhir import systems as sid
from huren.adapters.fhir.ingest import (
    UTF8_BOM,
    IfNoneExist,
    ParsedBundle,
    parse_line,
    parse_report,
    parse_transaction,
    sniff_kind,
)
from huren.adapters.fhir.model import CodeGroup
from huren.api.auth import require_roles
from huren.api.deps import container as get_container
from huren.api.http_errors import (
    MethodNotAllowed,
    NotAcceptable,
    PreconditionFailed,
    UnsupportedMediaType,
)
from huren.api.routes.retrieval import document_response
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.china_time import CHINA_TZ, in_china_time
from huren.domain.errors import DomainError, Forbidden, NotFound, Problem, ValidationFailed
from huren.domain.identity import IdentifierKind, PatientIdentifier, validate_identifier
from huren.domain.results import StoredResult
from huren.domain.text import is_digits
from huren.services.intake import Channel, Disposition, ReceiveOutcome, Rejection, StoredRef

_ISSUE_CODE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    413: "too-costly",
    406: "not-supported",
    415: "not-supported",
    422: "invalid",
}


# The MIME types and ``_format`` values of FHIR JSON (R4 http.html#mime-type: ``json``,
# application/json and application/fhir+json; application/json+fhir of DSTU2 clients).
_JSON_TYPES = frozenset(
    {"json", "application/json", "application/fhir+json", "application/json+fhir"}
)


def _media_type(text: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case) and the parameters of one media range."""
    head, *rest = (part.strip() for part in text.split(";"))
    params = {}
    for part in rest:
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return head.lower(), params


def _fhir_version_ok(params: dict[str, str]) -> bool:
    """The ``fhirVersion`` MIME parameter (R4 http.html#version-parameter), if any, names
    R4 (4.0 or 4.0.1)."""
    version = params.get("fhirversion")
    return version is None or version in ("4.0", "4.0.1")


def _check_format(request: Request) -> None:
    """406 for a response format other than FHIR JSON: ``_format`` overrides Accept
    (R4 http.html#mime-type); an Accept header is satisfied by any JSON type or a wildcard
    with q > 0, so HAPI's default ``application/fhir+xml;q=1.0, application/fhir+json;q=1.0``
    and a browser's ``*/*`` get JSON."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        # An unescaped "+" in the query (``_format=application/fhir+json``) reads as a space.
        mtype, params = _media_type(fmt.replace(" ", "+"))
        if mtype not in _JSON_TYPES or not _fhir_version_ok(params):
            raise NotAcceptable(
                f"不支持的格式 _format={fmt}：本平台仅提供 FHIR JSON",
                problems=[Problem("_format", f"不支持的格式 {fmt}，请使用 json")],
            )
        return
    accept = request.headers.get("accept", "").strip()
    if not accept:
        return
    for media_range in accept.split(","):
        mtype, params = _media_type(media_range)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        json_ok = mtype in _JSON_TYPES or mtype in ("*/*", "application/*")
        if json_ok and q > 0 and _fhir_version_ok(params):
            return
    raise NotAcceptable(
        f"不支持 Accept: {accept}：本平台仅提供 FHIR JSON（application/fhir+json）",
        problems=[Problem("Accept", f"不支持的格式 {accept}，请使用 application/fhir+json")],
    )


def fhir_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        render.to_json(body), status_code=status, media_type=render.FHIR_JSON, headers=headers
    )


def outcome_response(
    status: int, problems: Sequence[Problem], message: str, headers: dict[str, str] | None = None
) -> Response:
    body = render.operation_outcome(
        problems, code=_ISSUE_CODE.get(status, "exception"), message=message
    )
    return fhir_response(body, status, headers)


class FhirRoute(APIRoute):
    """Maps every error of a FHIR route (including authentication) to OperationOutcome."""

    def matches(self, scope: Any) -> tuple[Match, Any]:
        """HEAD wherever GET is served (RFC 9110 §9.3.2; R4 http.html lets a client ask for
        the headers of a read), without a HEAD operation in the OpenAPI document."""
        methods = self.methods or set()
        if scope.get("type") == "http" and scope.get("method") == "HEAD" and "GET" in methods:
            return super().matches({**scope, "method": "GET"})
        return super().matches(scope)

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("method") == "HEAD" and "GET" in (self.methods or set()):
            await self.app(scope, receive, send)
        else:
            await super().handle(scope, receive, send)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        # The original document of a report is served as sent (its own media type).
        negotiates = not self.path.startswith("/fhir/Binary")

        async def route(request: Request) -> Response:
            response = await answer(request)
            if request.method == "HEAD":  # the GET's headers (Content-Length too), no body
                return Response(b"", response.status_code, dict(response.headers))
            return response

        async def answer(request: Request) -> Response:
            try:
                if negotiates:
                    _check_format(request)
                return await handler(request)
            except DomainError as exc:
                problems = exc.problems or [Problem("", exc.message)]
                return outcome_response(
                    exc.status, problems, exc.message, getattr(exc, "headers", None)
                )
            except RequestValidationError as exc:
                problems = [
                    Problem(
                        ".".join(str(p) for p in e.get("loc", ()) if p != "query"),
                        str(e.get("msg", "")),
                    )
                    for e in exc.errors()
                ]
                return outcome_response(422, problems, "请求参数未通过校验")
            except StarletteHTTPException as exc:
                return outcome_response(
                    exc.status_code, [Problem("", str(exc.detail))], str(exc.detail)
                )

        return route


router = APIRouter(prefix="/fhir", tags=["FHIR R4"], route_class=FhirRoute)

CONTAINER = Annotated[Container, Depends(get_container)]
# Interface engines of hospitals write; the platform operator may back-load history.
WRITER = Annotated[Principal, Depends(require_roles(Role.INTEGRATION, Role.OPERATOR))]
READER = Annotated[
    Principal,
    Depends(require_roles(Role.INTEGRATION, Role.CLINICIAN, Role.OPERATOR, Role.REGULATOR)),
]

MAX_BODY = 20 * 1024 * 1024


async def _body(request: Request) -> bytes:
    header = request.headers.get("content-type", "application/fhir+json")
    ctype, params = _media_type(header)
    if ctype == "json" or ctype not in _JSON_TYPES or not _fhir_version_ok(params):
        raise UnsupportedMediaType(
            "请求内容类型应为 application/fhir+json",
            problems=[Problem("Content-Type", f"不支持的内容类型 {header}")],
        )
    _check_encoding(request)
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ValidationFailed(
            "请求内容过大", problems=[Problem("Bundle", "单个请求不超过 20 MB，请使用 $import")]
        )
    return body


def _own_institution(principal: Principal) -> str:
    return principal.institution or "" if principal.role is Role.INTEGRATION else ""


def _check_sender(principal: Principal, parsed: ParsedBundle) -> None:
    own = _own_institution(principal)
    if own and parsed.message.institution != own:
        raise Forbidden(
            f"接口账号属于机构 {own}，不能上传机构 {parsed.message.institution} 的结果",
            problems=[
                Problem(
                    "DiagnosticReport.performer",
                    f"检查检验机构 {parsed.message.institution} 与接口账号所属机构 {own} 不一致",
                )
            ],
        )


HEADER = "If-None-Exist"


def _if_none_exist(parsed: ParsedBundle, header: str) -> ParsedBundle:
    """The ``If-None-Exist`` header of a single DiagnosticReport's create (R4
    http.html#ccreate), as ``Bundle.entry.request.ifNoneExist`` is read in a Bundle:
    ``identifier=system|value`` naming a report number of the sender's institution. Its
    own number changes nothing (a report is identified by institution and number);
    another is looked up (``_receive``): found once, it is answered and nothing stored."""
    sub = parsed.message.submissions[0]
    query = parse_qs(header.rpartition("?")[2], keep_blank_values=True)
    tokens = query.get("identifier", [])
    system, bar, value = tokens[0].partition("|") if len(tokens) == 1 else ("", "", "")
    if bar and value == sub.report_no:
        return parsed
    own_system = sid.REPORT_NO_PREFIX + sub.institution
    if len(query) != 1 or not bar or not value or system not in ("", own_system):
        raise ValidationFailed(
            "条件创建的条件不受支持，未保存任何内容",
            problems=[
                Problem(
                    HEADER,
                    f"仅支持以本机构的报告单编号为条件：identifier={own_system}|编号，"
                    f"收到 {header[:200]}",
                )
            ],
        )
    return replace(parsed, if_none_exist=(IfNoneExist(-1, 0, value),))


def _ingest(
    c: Container,
    principal: Principal,
    raw: bytes,
    single: bool,
    if_none_exist: str | None = None,
) -> tuple[ParsedBundle, ReceiveOutcome]:
    """Parse and store in one worker thread; a refused message is recorded for the
    integration engineer's page before the error goes back."""
    own = _own_institution(principal)
    try:
        parsed = (
            parse_report(raw, default_institution=own)
            if single
            else parse_transaction(raw, default_institution=own)
        )
        if if_none_exist:
            parsed = _if_none_exist(parsed, if_none_exist)
        _check_sender(principal, parsed)
        return parsed, _receive(c, parsed)
    except DomainError as exc:
        detail = "; ".join(f"{p.field}: {p.message}" for p in exc.problems) or exc.message
        c.intake.reject(
            Rejection(
                Channel.FHIR,
                own or None,
                "sha256:" + hashlib.sha256(raw).hexdigest()[:48],
                raw.decode("utf-8", "replace"),
                detail,
            )
        )
        raise


def _receive(c: Container, parsed: ParsedBundle) -> ReceiveOutcome:
    """Store a parsed message; the conditional creates that find an existing report
    (``_existing_reports``) are answered with it and not stored. The outcome's results
    are those of the message's submissions, in order."""
    if not parsed.if_none_exist:
        return c.intake.receive(parsed.message)
    existing = _existing_reports(c, parsed)
    if not existing:
        return c.intake.receive(parsed.message)
    rest, index = _without(parsed, existing)
    outcome = (
        c.intake.receive(rest.message) if rest.message.submissions else ReceiveOutcome(0, False, ())
    )
    results = tuple(
        existing[k] if k in existing else outcome.results[index[k]] for k in range(len(index))
    )
    return replace(outcome, results=results)


def _patient_ids(c: Container, outcome: ReceiveOutcome) -> dict[int, int]:
    """{result: patient} of the outcome's results; read only where intake did not say
    (an earlier message's answer to a resend)."""
    known = {r.result_id: r.patient_id for r in outcome.results if r.patient_id is not None}
    missing = [r.result_id for r in outcome.results if r.patient_id is None]
    return known | (c.results.patient_ids(missing) if missing else {})


def _transaction_response(
    c: Container, parsed: ParsedBundle, outcome: ReceiveOutcome
) -> dict[str, Any]:
    refs = outcome.results
    pids = _patient_ids(c, outcome)
    # Reports answered by the existing report their condition names (``_receive``).
    matched = {
        cond.submission
        for cond in parsed.if_none_exist
        if refs[cond.submission].report_no == cond.report_no
    }
    entries: list[dict[str, Any]] = []
    for plan in parsed.entries:
        response: dict[str, Any]
        if plan.submission in matched:
            ref = refs[plan.submission]
            rid = f"DiagnosticReport/{ref.result_id}"
            if plan.kind == "report":
                note = (
                    f"条件创建（ifNoneExist）匹配到已有报告（报告单编号 {ref.report_no}），未新建"
                )
                response = {
                    "status": "200 OK",
                    "location": f"{rid}/_history/{ref.version}",
                    "etag": f'W/"{ref.version}"',
                    "outcome": render.informational([note]),
                }
            else:
                whose = "引用该患者" if plan.kind == "patient" else "所属"
                note = f"{whose}的报告按条件创建（ifNoneExist）匹配到已有报告 {rid}，本条目未保存"
                response = {"status": "200 OK", "outcome": render.informational([note])}
        elif plan.kind in ("report", "observation", "findings", "panel"):
            ref = refs[plan.submission]
            created = ref.disposition is Disposition.CREATED
            status = "201 Created" if created else "200 OK"
            if plan.kind == "observation":
                rid = f"Observation/{render.observation_id(ref.result_id, plan.seq)}"
            else:
                rid = f"DiagnosticReport/{ref.result_id}"
            response = {
                "status": status,
                "location": f"{rid}/_history/{ref.version}",
                "etag": f'W/"{ref.version}"',
            }
            notes = [plan.note] if plan.note else []
            if plan.kind == "report" and ref.item_code is None:
                notes.insert(0, f"本院编码 {ref.local_code} 尚未对码，结果已保存并标记为未对码")
            if notes:
                response["outcome"] = render.informational(notes)
        elif plan.kind == "patient":
            pid = pids.get(refs[plan.submission].result_id)
            response = {"status": "200 OK", "location": f"Patient/{pid}"}
        else:
            response = {"status": "200 OK", "outcome": render.informational([plan.note])}
        entries.append({"response": response})
    return render.bundle("transaction-response", entries, timestamp=c.clock.now())


@router.get("/metadata", summary="CapabilityStatement")
async def metadata(request: Request, c: CONTAINER) -> Response:
    base = c.settings.base_url or str(request.base_url).rstrip("/")
    return fhir_response(render.capability_statement(f"{base}/fhir", c.clock.now(), "0.1.0"))


@router.post("", summary="transaction Bundle")
@router.post("/", include_in_schema=False)  # clients that post to the base URL with its slash
async def transaction(request: Request, c: CONTAINER, principal: WRITER) -> Response:
    raw = await _body(request)
    body = await run_in_threadpool(_transaction, c, principal, raw)
    return fhir_response(body, 200)


def _transaction(c: Container, principal: Principal, raw: bytes) -> dict[str, Any]:
    """Store the Bundle and build its transaction-response, in one worker thread."""
    parsed, outcome = _ingest(c, principal, raw, False)
    return _transaction_response(c, parsed, outcome)


def _existing_reports(c: Container, parsed: ParsedBundle) -> dict[int, StoredRef]:
    """{submission: the stored report answered instead} of the conditional creates of a
    Bundle that name another report number of the sender's institution and find it (R4
    http.html#ccreate: one match, nothing is created and the match is returned with 200;
    none, the resource is created; several, 412)."""
    existing: dict[int, StoredRef] = {}
    institution = parsed.message.institution
    for cond in parsed.if_none_exist:
        query = ResultQuery(
            institution=institution, report_no=cond.report_no, include_entered_in_error=True
        )
        found = c.results.search(replace(query, limit=2))
        where = f"Bundle.entry[{cond.entry}].request.ifNoneExist" if cond.entry >= 0 else HEADER
        if len(found) > 1:
            # R4 http.html#ccreate: "Multiple matches: The server returns a 412
            # Precondition Failed error indicating the client's criteria were not
            # selective enough".
            raise PreconditionFailed(
                "条件创建的条件匹配到多份报告，未保存任何内容",
                problems=[
                    Problem(
                        where,
                        f"机构 {institution} 的报告单编号 {cond.report_no} 对应多份报告"
                        "（不同检查检验项目），条件不够具体",
                    )
                ],
            )
        if found:
            r = found[0]
            existing[cond.submission] = StoredRef(
                r.id,
                r.version,
                Disposition.UNCHANGED,
                r.report_no,
                r.local_code,
                r.item_code,
                None,
                patient_id=r.patient_id,
            )
    return existing


def _without(
    parsed: ParsedBundle, existing: dict[int, StoredRef]
) -> tuple[ParsedBundle, list[int]]:
    """The Bundle without the submissions answered by an existing report, and the new
    index of each kept submission (-1 for one left out)."""
    kept: list[int] = []
    index: list[int] = []
    for k in range(len(parsed.message.submissions)):
        index.append(-1 if k in existing else len(kept))
        if k not in existing:
            kept.append(k)
    subs = tuple(parsed.message.submissions[k] for k in kept)
    return replace(parsed, message=replace(parsed.message, submissions=subs)), index


@router.post(
    "/DiagnosticReport", summary="单个 DiagnosticReport（Patient、Observation 放在 contained）"
)
async def create_report(request: Request, c: CONTAINER, principal: WRITER) -> Response:
    raw = await _body(request)
    _parsed, outcome = await run_in_threadpool(
        _ingest, c, principal, raw, True, request.headers.get("if-none-exist")
    )
    ref = outcome.results[0]
    result = await run_in_threadpool(c.results.get_result, ref.result_id)
    updated = await run_in_threadpool(c.results.updated_at, ref.result_id)
    status = 201 if ref.disposition is Disposition.CREATED else 200
    loc = f"DiagnosticReport/{ref.result_id}/_history/{ref.version}"
    return fhir_response(
        render.diagnostic_report(result, updated, c.results.documents(result.id, result.version)),
        status,
        {"Location": loc} | _version_headers(ref.version, updated),
    )


# ---------------------------------------------------------------- $import (NDJSON)
# What the first bytes of a body show it is not (``sniff_kind``, as ``huren ingest``
# refuses such a file): read as NDJSON every line would be one error.
_NOT_NDJSON = {
    "gzip": "请求体是 gzip 压缩数据：本接口不解压，请解压后以 NDJSON 文本上传",
    "zip": "请求体是 ZIP 压缩包：请解压后以 NDJSON 文本上传",
    "utf-16": "请求体是 UTF-16 编码：请以 UTF-8 编码上传",
    "hl7": "请求体是 HL7 v2 消息而不是 NDJSON：请发送到 HL7 v2 接口",
    "json-array": "请求体是 JSON 数组：NDJSON 应每行一个 JSON 对象（可用 jq -c '.[]' 转换）",
}
# A line is one resource: no longer than a single request may be (``MAX_BODY``).
MAX_LINE = MAX_BODY
_SNIFF_BYTES = 4096


class _BulkCounts:
    """The summary of a bulk load, counted by disposition as ``huren ingest`` counts
    (cli/ingest.py ``BulkLoader._count``): a result stored or given a new version, or
    found already stored unchanged (a resent line; a resent message answers with the
    results of its first sending)."""

    def __init__(self) -> None:
        self.lines = self.changed = self.unchanged = 0
        self.issues: list[Problem] = []

    def count(self, outcome: ReceiveOutcome) -> None:
        self.unchanged += outcome.unchanged
        self.changed += len(outcome.results) - outcome.unchanged

    def summary(self) -> str:
        return (
            f"共 {self.lines} 行，保存结果 {self.changed} 份（新增或更新），"
            f"已存在且未变 {self.unchanged} 份，错误 {len(self.issues)} 处"
        )


def _check_encoding(request: Request) -> None:
    """415 for a Content-Encoding other than identity (RFC 9110 §8.4: a server refuses a
    coding it does not apply): the body would be read as compressed bytes."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"不支持 Content-Encoding: {encoding}",
            problems=[
                Problem(
                    "Content-Encoding",
                    f"不支持内容编码 {encoding}：请上传未压缩的内容（不带 Content-Encoding，或为 identity）",
                )
            ],
        )


def _check_head(head: bytes) -> None:
    kind = sniff_kind(head)
    if kind in _NOT_NDJSON:
        raise UnsupportedMediaType(
            "请求体不是 NDJSON 文本", problems=[Problem("body", _NOT_NDJSON[kind])]
        )


@router.post(
    "/$import", summary="批量导入 NDJSON（每行一个 transaction Bundle 或 DiagnosticReport）"
)
async def bulk_import(request: Request, c: CONTAINER, principal: WRITER) -> Response:
    """Synchronous bulk load: each line is stored in its own transaction; a bad line is
    reported (OperationOutcome issue with its line number) and does not stop the rest.
    The body is read as it arrives: each chunk is searched for newlines once, and a
    line longer than ``MAX_LINE`` is reported and skipped, not held."""
    _check_encoding(request)
    own = _own_institution(principal)
    counts = _BulkCounts()

    def handle(line: bytes, n: int) -> None:
        if not line.strip():
            return
        try:
            parsed = parse_line(line, default_institution=own)
            _check_sender(principal, parsed)
            outcome = _receive(c, parsed)
        except DomainError as exc:
            for p in exc.problems or [Problem("", exc.message)]:
                counts.issues.append(Problem(f"line {n}: {p.field}", p.message))
            return
        counts.count(outcome)

    pending: list[bytes] = []  # the current line's bytes before this chunk
    pending_len = 0
    skipping = False  # the current line is too long: reported, read past its end
    head = b""  # the body's first bytes, until they are sniffed
    sniffed = False

    async def lines_of(chunk: bytes) -> None:
        nonlocal pending_len, skipping
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            if skipping:
                skipping = False
            else:
                counts.lines += 1
                line = b"".join((*pending, chunk[start:nl])) if pending else chunk[start:nl]
                if len(line) > MAX_LINE:
                    _too_long(counts)
                else:
                    await run_in_threadpool(handle, line, counts.lines)
            pending.clear()
            pending_len = 0
            start = nl + 1
        if skipping or start == len(chunk):
            return
        pending.append(chunk[start:])
        pending_len += len(chunk) - start
        if pending_len > MAX_LINE:
            counts.lines += 1
            _too_long(counts)
            pending.clear()
            pending_len = 0
            skipping = True

    async for chunk in request.stream():
        if not sniffed:
            head += chunk
            if len(head) < _SNIFF_BYTES:
                continue
            _check_head(head)
            chunk, sniffed = head.removeprefix(UTF8_BOM), True
        await lines_of(chunk)
    if not sniffed:
        _check_head(head)
        await lines_of(head.removeprefix(UTF8_BOM))
    if pending:
        counts.lines += 1
        await run_in_threadpool(handle, b"".join(pending), counts.lines)
    body = render.operation_outcome(counts.issues, severity="error", code="invalid")
    body["issue"] = [
        {"severity": "information", "code": "informational", "diagnostics": counts.summary()},
        *(body["issue"] if counts.issues else []),
    ]
    return fhir_response(body, 200)


def _too_long(counts: _BulkCounts) -> None:
    counts.issues.append(
        Problem(
            f"line {counts.lines}",
            f"该行超过 {MAX_LINE // (1024 * 1024)} MB（单个资源的上限），未读取；"
            "请检查换行（NDJSON 每行一个资源）",
        )
    )


@router.post("/{resource_type}", summary="其他资源类型")
async def create_other(resource_type: str, c: CONTAINER, principal: WRITER) -> Response:
    if resource_type in ("Observation", "Patient", "ImagingStudy", "Specimen", "ServiceRequest"):
        raise ValidationFailed(
            f"{resource_type} 不能单独上传",
            problems=[
                Problem(
                    resource_type,
                    "结果按报告单保存：请以 transaction Bundle 上传，或在 DiagnosticReport 的 contained 中提交",
                )
            ],
        )
    raise NotFound(f"不支持的资源类型 {resource_type}")


# ---------------------------------------------------------------- search
# A FHIR date search value (R4 search.html#date): the precision given (year, month, day,
# minute, second or fraction) is the range it stands for; no zone is China time.
_DATE_VALUE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _date_range(text: str) -> tuple[datetime, datetime]:
    """[start, end) of a date search value at its precision; ValueError if it is none."""
    m = _DATE_VALUE.match(text)
    if m is None:
        raise ValueError(text)
    year, month, day, hour, _minute, second, fraction, _zone = m.groups()
    if month is None:
        start = datetime(int(year), 1, 1, tzinfo=CHINA_TZ)
        return start, start.replace(year=start.year + 1)
    if day is None:
        start = datetime(int(year), int(month), 1, tzinfo=CHINA_TZ)
        following = (start + timedelta(days=32)).replace(day=1)
        return start, following
    if hour is None:
        start = datetime(int(year), int(month), int(day), tzinfo=CHINA_TZ)
        return start, start + timedelta(days=1)
    iso = text.replace("Z", "+00:00")
    start = in_china_time(datetime.fromisoformat(iso))
    if fraction:
        step = timedelta(microseconds=max(1, 10 ** (6 - min(len(fraction) - 1, 6))))
    else:
        step = timedelta(seconds=1) if second is not None else timedelta(minutes=1)
    return start, start + step


def _date_bounds(values: Sequence[str], name: str) -> tuple[datetime | None, datetime | None]:
    """FHIR date search (R4 search.html#date, #prefix): each value a range at its
    precision, the prefixes eq/ge/gt/le/lt/sa/eb applied to a point in time (the time
    performed, the last update), repeated parameters all holding (their intersection).
    ne and ap are refused, naming the parameter, rather than read as eq."""
    low: datetime | None = None
    high: datetime | None = None
    for v in values:
        prefixed = v[:2].isalpha() and v[2:3].isdigit()
        prefix = v[:2] if prefixed else "eq"
        text = v[2:] if prefixed else v
        if prefix not in ("eq", "ge", "gt", "le", "lt", "sa", "eb"):
            raise ValidationFailed(
                f"{name} 参数无效",
                problems=[
                    Problem(name, f"不支持的日期前缀 {prefix}（支持 eq ge gt le lt sa eb）: {v}")
                ],
            )
        try:
            start, end = _date_range(text)
        except ValueError as exc:
            raise ValidationFailed(
                f"{name} 参数无效",
                problems=[
                    Problem(
                        name, f"无效的日期: {v}（应为 YYYY、YYYY-MM、YYYY-MM-DD 或带时区的时间）"
                    )
                ],
            ) from exc
        # The point t matches: eq start <= t < end; ge t >= start; gt, sa t >= end;
        # lt, eb t < start; le t < end.
        lower = {"eq": start, "ge": start, "gt": end, "sa": end}.get(prefix)
        upper = {"eq": end, "le": end, "lt": start, "eb": start}.get(prefix)
        if lower is not None:
            low = lower if low is None else max(low, lower)
        if upper is not None:
            high = upper if high is None else min(high, upper)
    return low, high


def _patient_reference(c: Container, request: Request, name: str, value: str) -> int:
    """The patient id of a reference search value (R4 search.html#reference): ``123``,
    ``Patient/123``, or the absolute URL of this server's Patient/123."""
    text = value
    for base in {c.settings.base_url, str(request.base_url).rstrip("/")} - {""}:
        text = text.removeprefix(f"{base.rstrip('/')}/fhir/")
    pid = text.removeprefix("Patient/")
    if not is_digits(pid):
        raise ValidationFailed(
            f"{name} 参数无效",
            problems=[Problem(name, f"应为 Patient/{{id}} 或本平台的患者地址: {value}")],
        )
    return int(pid)


# The patient parameters (R4 search.html#reference, #chaining): the reference itself
# (``subject:Patient`` names its type), or the patient's identifier, as the modifier
# ``:identifier`` or the chain ``.identifier``.
_PATIENT_REFERENCE = ("patient", "subject", "patient:Patient", "subject:Patient")
_PATIENT_IDENTIFIER = (
    "patient.identifier",
    "patient:identifier",
    "subject.identifier",
    "subject:identifier",
    "subject:Patient.identifier",
)


def _patient_ids_from(c: Container, request: Request) -> list[int] | None:
    """The patients a search is restricted to: each parameter's values (comma: any of
    them) and every parameter given (all of them), R4 search.html#combining."""
    params = request.query_params
    ids: set[int] | None = None
    for name in (*_PATIENT_REFERENCE, *_PATIENT_IDENTIFIER):
        for v in params.getlist(name):
            found: set[int] = set()
            for one in v.split(","):
                if name in _PATIENT_REFERENCE:
                    found.add(_patient_reference(c, request, name, one))
                else:
                    found.update(c.results.find_patients(_token_identifier(one, name)))
            ids = found if ids is None else ids & found
    return None if ids is None else sorted(ids)


def _token_identifier(value: str, name: str) -> PatientIdentifier:
    system, bar, code = value.partition("|")
    if not bar:
        raise ValidationFailed(
            f"{name} 参数应为 system|value",
            problems=[Problem(name, "标识检索须注明 system，如 …/sid/national-id|1101…")],
        )
    kind = sid.IDENTIFIER_SYSTEMS.get(system)
    assigner = ""
    if kind is None and system.startswith(sid.MRN_PREFIX):
        kind, assigner = IdentifierKind.MRN, system.removeprefix(sid.MRN_PREFIX)
    if kind is None:
        raise ValidationFailed(
            f"{name} 的 system 不受支持", problems=[Problem(name, f"不支持的标识系统 {system}")]
        )
    return validate_identifier(PatientIdentifier(kind, code, assigner), name)


def _code_tokens(values: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(local codes, item codes, LOINC codes) of token parameters (system|code; a code
    without its system may be any of the three)."""
    local: list[str] = []
    items: list[str] = []
    loinc: list[str] = []
    for token in ",".join(values).split(",") if values else []:
        system, bar, code = token.partition("|")
        if not bar:
            code, system = system, ""
        if system == sid.LOINC:
            loinc.append(code)
        elif system == sid.ITEM:
            items.append(code)
        elif system:
            local.append(code)
        else:
            local.append(code)
            items.append(code)
            loinc.append(code)
    return local, items, loinc


# R4 Observation search parameters on codes (observation.html#search): ``code`` the
# Observation's, ``component-code`` its components', ``combo-code`` either.
_OBSERVATION_CODES = ("code", "component-code", "combo-code")


# The search parameters served (R4 search.html; the CapabilityStatement lists them), and
# the result parameters (search.html#return). ``_offset`` and ``_skip`` place a page (the
# ``next`` link carries them); ``_format`` is read by ``_check_format``.
_COMMON_SEARCH = frozenset(
    {
        *_PATIENT_REFERENCE,
        *_PATIENT_IDENTIFIER,
        "code",
        "date",
        "_lastUpdated",
        "_count",
        "_offset",
        "_include",
        "_sort",
        "_total",
        "_format",
        "_pretty",
    }
)
_SEARCH_PARAMS = {
    "DiagnosticReport": _COMMON_SEARCH | {"identifier", "_id"},
    "Observation": _COMMON_SEARCH | {"component-code", "combo-code", "_skip"},
}
# The one order served (results by time performed, newest first; R4 search.html#sort).
_SORTS = ("-date",)
_DEFAULT_COUNT = 50
_MAX_COUNT = 500


def _strict(request: Request) -> bool:
    """``Prefer: handling=strict`` (R4 search.html#errors)."""
    prefer = request.headers.get("prefer", "")
    return any(
        p.strip().replace(" ", "") == "handling=strict"
        for p in prefer.split(";") + prefer.split(",")
    )


def _search_params(request: Request, kind: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(the parameters used, what was ignored) of a search. A parameter or value not
    served is refused under ``Prefer: handling=strict`` and otherwise ignored, said in an
    OperationOutcome of the Bundle and left out of its self link (R4 search.html#errors);
    a modifier not served is always refused (search.html#modifiers), as it could only
    widen what is returned: ``subject:missing=true`` is not ``subject``."""
    allowed = _SEARCH_PARAMS[kind]
    used: list[tuple[str, str]] = []
    ignored: list[str] = []
    problems: list[Problem] = []
    for name, value in request.query_params.multi_items():
        base, colon, modifier = name.partition(":")
        if name in allowed:
            ok = (
                (name != "_include" or value in render.SEARCH_INCLUDES[kind])
                and (name != "_sort" or value in _SORTS)
                and (name != "_total" or value in ("none", "estimate", "accurate"))
            )
            if ok:
                used.append((name, value))
            else:
                ignored.append(f"{name}={value}")
        elif colon and base in {n.partition(":")[0] for n in allowed}:
            problems.append(Problem(name, f"不支持修饰符 :{modifier}（{kind} 的 {base} 参数）"))
        else:
            ignored.append(name)
    if problems:
        raise ValidationFailed("检索参数含不支持的修饰符", problems=problems)
    if ignored and _strict(request):
        raise ValidationFailed(
            "检索参数不受支持（Prefer: handling=strict）",
            problems=[
                Problem(i.partition("=")[0], f"不支持的检索参数或取值: {i}") for i in ignored
            ],
        )
    return used, ignored


def _int_param(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not is_digits(text):
        raise ValidationFailed(
            f"{name} 参数无效", problems=[Problem(name, f"应为非负整数: {text}")]
        )
    return int(text)


def _query(
    c: Container, request: Request, code_params: Sequence[str] = ("code",)
) -> tuple[ResultQuery, int]:
    """The search as a ResultQuery, and the page size asked for (its ``limit`` is one
    more, to know whether there is a next page)."""
    params = request.query_params
    local, items, loinc = _code_tokens([v for name in code_params for v in params.getlist(name)])
    performed_from, performed_to = _date_bounds(params.getlist("date"), "date")
    updated_from, updated_to = _date_bounds(params.getlist("_lastUpdated"), "_lastUpdated")
    count = min(_int_param(request, "_count", _DEFAULT_COUNT), _MAX_COUNT)
    offset = _int_param(request, "_offset", 0)
    identifier = params.get("identifier")
    institution = None
    report_no = None
    if identifier:
        system, bar, value = identifier.partition("|")
        report_no = value if bar else system
        if bar and system.startswith(sid.REPORT_NO_PREFIX):
            institution = system.removeprefix(sid.REPORT_NO_PREFIX)
    query = ResultQuery(
        patient_ids=_patient_ids_from(c, request),
        institution=institution,
        item_codes=items or None,
        local_codes=local or None,
        loinc=loinc or None,
        performed_from=performed_from,
        performed_to=performed_to,
        updated_from=updated_from,
        updated_to=updated_to,
        report_no=report_no,
        limit=count + 1,
        offset=offset,
    )
    return query, count


def _search(c: Container, query: ResultQuery) -> list[tuple[StoredResult, datetime]]:
    if query.patient_ids is not None and not query.patient_ids:
        return []
    return c.results.search_with_updated(query)


def _entry(request: Request, resource: dict[str, Any], mode: str = "match") -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    return {
        "fullUrl": f"{base}/fhir/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "search": {"mode": mode},
    }


def _link(request: Request, params: Sequence[tuple[str, str]]) -> str:
    url = str(request.url.replace(query=""))
    return f"{url}?{urlencode(params)}" if params else url


def _searchset(
    request: Request,
    used: Sequence[tuple[str, str]],
    ignored: Sequence[str],
    entries: list[dict[str, Any]],
    total: int | None,
    next_at: Sequence[tuple[str, str]] | None,
) -> dict[str, Any]:
    """A searchset: ``self`` the parameters used, ``next`` (when there is more) the same
    with the next page's place (R4 http.html#paging); ``total`` when known; what was
    ignored said in an OperationOutcome entry (search.mode ``outcome``)."""
    body = render.bundle("searchset", entries, total=total, self_link=_link(request, used))
    if next_at is not None:
        keep = [(k, v) for k, v in used if k not in ("_offset", "_skip")]
        body["link"].append({"relation": "next", "url": _link(request, [*keep, *next_at])})
    if ignored:
        outcome = render.operation_outcome(
            [Problem(i.partition("=")[0], f"已忽略不支持的检索参数或取值: {i}") for i in ignored],
            severity="warning",
            code="not-supported",
        )
        body["entry"].append({"resource": outcome, "search": {"mode": "outcome"}})
    return body


def _patient_resource(c: Container, pid: int) -> dict[str, Any]:
    view = c.results.patient(pid)
    birth = view.birth_date.isoformat() if view.birth_date else ""
    return render.patient(
        view.id,
        c.results.patient_identifiers(view.id),
        c.results.patient_name(view.id),
        view.sex,
        birth,
    )


def _patients(c: Container, request: Request, pids: Iterable[int]) -> list[dict[str, Any]]:
    """The Patient resources of an ``_include`` of the subject, once each."""
    return [_entry(request, _patient_resource(c, pid), "include") for pid in dict.fromkeys(pids)]


def _total(offset: int, shown: int, more: bool) -> int | None:
    """Bundle.total (R4: the number of matches, not of this page) when this page tells
    it: the last page reached from the first."""
    if more or (offset and not shown):
        return None
    return offset + shown


# How many of their patients' reports a search by ``_id`` reads to find the ones named.
_ID_SCAN = 10_000


def _search_by_id(
    c: Container, query: ResultQuery, ids: Sequence[str]
) -> list[tuple[StoredResult, datetime]]:
    """``_id`` (R4 search.html#id, any of the ids given) with the other parameters: the
    search over the patients of the reports named, kept to those reports, then paged."""
    wanted = {int(i) for i in ids if is_digits(i)}
    patients = set(c.results.patient_ids(sorted(wanted)).values())
    if query.patient_ids is not None:
        patients &= set(query.patient_ids)
    scan = replace(query, patient_ids=sorted(patients), offset=0, limit=_ID_SCAN)
    found = [f for f in _search(c, scan) if f[0].id in wanted]
    return found[query.offset : query.offset + query.limit]


def _report_loinc(c: Container, query: ResultQuery) -> ResultQuery:
    """A LOINC ``code`` of a DiagnosticReport search (R4 diagnosticreport.html#search:
    ``code``, "the code for the report"), matched on the report's own code as well as on
    its Observations': the items of the catalog carrying that LOINC (the report's local
    code is mapped to its item, 对码), and a report whose code was sent as that LOINC
    alone (stored as its local code)."""
    if not query.loinc:
        return query
    wanted = set(query.loinc)
    items = [code for code, item in c.catalog.get().items.items() if item.loinc in wanted]
    return replace(
        query,
        item_codes=[*(query.item_codes or ()), *items] or None,
        local_codes=[*(query.local_codes or ()), *query.loinc],
    )


def _search_reports(c: Container, request: Request, principal: Principal) -> dict[str, Any]:
    used, ignored = _search_params(request, "DiagnosticReport")
    query, count = _query(c, request)
    query = _report_loinc(c, query)
    ids = [v for text in request.query_params.getlist("_id") for v in text.split(",")]
    found = _search_by_id(c, query, ids) if ids else _search(c, query)
    more = len(found) > count
    found = found[:count]
    includes = {v for k, v in used if k == "_include"}
    documents = c.results.documents_of([(r.id, r.version) for r, _ in found])
    entries = []
    included: list[dict[str, Any]] = []
    for r, updated in found:
        docs = documents.get((r.id, r.version), ())
        entries.append(_entry(request, render.diagnostic_report(r, updated, docs)))
        if "DiagnosticReport:result" in includes:
            included.extend(_entry(request, o, "include") for o in render.observations(r, updated))
    if includes & {"DiagnosticReport:subject", "DiagnosticReport:patient"}:
        included.extend(_patients(c, request, (r.patient_id for r, _ in found)))
    c.results.record_access(principal, "fhir.search", [r for r, _ in found])
    total = _total(query.offset, len(found), more)
    more = more and count > 0
    next_at = [("_offset", str(query.offset + count))] if more else None
    return _searchset(request, used, ignored, entries + included, total, next_at)


@router.get("/DiagnosticReport", summary="检索 DiagnosticReport")
async def search_reports(request: Request, c: CONTAINER, principal: READER) -> Response:
    return fhir_response(await run_in_threadpool(_search_reports, c, request, principal))


def _code_filters(params: Any) -> list[tuple[str, set[str], set[str]]]:
    """The code parameters of an Observation search (``_OBSERVATION_CODES``) that are
    given, each as (name, local codes, LOINC codes): read once per search, not once per
    Observation."""
    filters = []
    for name in _OBSERVATION_CODES:
        if values := params.getlist(name):
            local, _items, loinc = _code_tokens(values)
            filters.append((name, set(local), set(loinc)))
    return filters


def _observation_matches(
    r: StoredResult,
    group: CodeGroup,
    filters: Sequence[tuple[str, set[str], set[str]]],
    item_codes: Sequence[str] | None,
) -> bool:
    """Whether an Observation (``render.observation_resources``) answers the code
    parameters (``_code_filters``): ``code`` on Observation.code, ``component-code`` on a
    component's code, ``combo-code`` on either (R4 observation.html#search); an item code
    on the report's."""
    if item_codes is not None and r.item_code in item_codes:
        return True
    if not filters:
        return True
    rows = r.observations
    own = [(group.code, rows[group.start].loinc if group.own else "")]
    parts = [(code, rows[i].loinc) for i, code in group.components]
    candidates = {"code": own, "component-code": parts, "combo-code": own + parts}
    for name, local, loinc in filters:
        if not any(code in local or (lc and lc in loinc) for code, lc in candidates[name]):
            return False
    return True


def _search_observations(c: Container, request: Request, principal: Principal) -> dict[str, Any]:
    """Observations, paged by Observation (R4 search.html#count: a page holds at most
    ``_count``): the reports are read in order from ``_offset`` (a report's place), the
    first ``_skip`` matching Observations of the first one left out; the next link
    carries where the page stopped."""
    used, ignored = _search_params(request, "Observation")
    query, count = _query(c, request, _OBSERVATION_CODES)
    skip = _int_param(request, "_skip", 0)
    filters = _code_filters(request.query_params)
    entries: list[dict[str, Any]] = []
    readers: list[StoredResult] = []
    next_at: list[tuple[str, str]] | None = None
    batch = max(count, 10)
    at = query.offset
    while next_at is None:
        found = _search(c, replace(query, offset=at, limit=batch))
        for n, (r, updated) in enumerate(found):
            matches = [
                o
                for group, o in render.observation_resources(r, updated)
                if _observation_matches(r, group, filters, query.item_codes)
            ]
            first = skip if at + n == query.offset else 0
            for k in range(first, len(matches)):
                if len(entries) == count:
                    next_at = [("_offset", str(at + n)), ("_skip", str(k))]
                    break
                entries.append(_entry(request, matches[k]))
                if not readers or readers[-1] is not r:
                    readers.append(r)
            if next_at is not None:
                break
        if len(found) < batch or count == 0:
            break
        at += batch
    matched = len(entries)
    if {v for k, v in used if k == "_include"}:
        entries.extend(_patients(c, request, (r.patient_id for r in readers)))
    c.results.record_access(principal, "fhir.search", readers)
    more = next_at is not None and count > 0
    total = matched if query.offset == 0 and skip == 0 and next_at is None else None
    return _searchset(request, used, ignored, entries, total, next_at if more else None)


@router.get("/Observation", summary="检索 Observation")
async def search_observations(request: Request, c: CONTAINER, principal: READER) -> Response:
    return fhir_response(await run_in_threadpool(_search_observations, c, request, principal))


# ---------------------------------------------------------------- read, vread, history
def _version_headers(version: int, updated: datetime) -> dict[str, str]:
    """ETag and Last-Modified of a read (R4 http.html#read: the version as a weak ETag,
    meta.lastUpdated as Last-Modified, an HTTP-date, RFC 9110 §8.8.2)."""
    return {
        "ETag": f'W/"{version}"',
        "Last-Modified": format_datetime(updated.astimezone(UTC), usegmt=True),
    }


def _result_id(text: str) -> int:
    if not is_digits(text):
        raise NotFound(f"DiagnosticReport/{text} 不存在")
    return int(text)


def _read_report(c: Container, principal: Principal, rid: int, version: int | None) -> Response:
    result = c.results.get_result(rid, version)
    updated = (
        c.results.updated_at(rid)
        if version is None
        else c.results.version_recorded_at(rid, result.version)
    )
    c.results.record_access(principal, "fhir.read", [result])
    return fhir_response(
        render.diagnostic_report(result, updated, c.results.documents(rid, result.version)),
        headers=_version_headers(result.version, updated),
    )


def _read_binary(c: Container, principal: Principal, bid: str, fhir_json: bool) -> Response:
    """A report's original document (``render.binary_id``: result-version-seq), read as
    the report is (``fhir.read`` recorded): its bytes as sent, or — asked for
    application/fhir+json — a Binary resource (R4 binary.html)."""
    parts = bid.split("-")
    if len(parts) != 3 or not all(is_digits(p) for p in parts):
        raise NotFound(f"Binary/{bid} 不存在")
    rid, version, seq = (int(p) for p in parts)
    result = c.results.get_result(rid, version)
    doc = c.results.document(rid, result.version, seq)
    if doc is None:
        raise NotFound(f"Binary/{bid} 不存在：结果 {rid} 第 {version} 版没有第 {seq} 份文档")
    c.results.record_access(principal, "fhir.read", [result])
    if fhir_json:
        return fhir_response(
            {
                "resourceType": "Binary",
                "id": bid,
                "contentType": doc.content_type,
                "data": base64.b64encode(doc.data).decode(),
            }
        )
    return document_response(c, doc)


@router.get("/Binary/{bid}", summary="read（报告原件）")
async def read_binary(bid: str, request: Request, c: CONTAINER, principal: READER) -> Response:
    fhir_json = "fhir+json" in request.headers.get("accept", "") or (
        request.query_params.get("_format", "") in ("json", "application/fhir+json")
    )
    return await run_in_threadpool(_read_binary, c, principal, bid, fhir_json)


@router.get("/DiagnosticReport/{rid}", summary="read")
async def read_report(rid: str, c: CONTAINER, principal: READER) -> Response:
    return await run_in_threadpool(_read_report, c, principal, _result_id(rid), None)


@router.get("/DiagnosticReport/{rid}/_history/{vid}", summary="vread")
async def vread_report(rid: str, vid: str, c: CONTAINER, principal: READER) -> Response:
    if not is_digits(vid):
        raise NotFound(f"DiagnosticReport/{rid} 没有版本 {vid}")
    return await run_in_threadpool(_read_report, c, principal, _result_id(rid), int(vid))


def _history_bundle(
    c: Container, request: Request, rid: int, kind: str, seq: int = 0
) -> dict[str, Any]:
    entries = []
    versions = c.results.versions(rid)
    # Every version's documents in one statement (a DiagnosticReport's presentedForm).
    documents = (
        c.results.documents_of([(rid, v.version) for v in versions])
        if kind == "DiagnosticReport"
        else {}
    )
    for v in reversed(versions):
        r = c.results.get_result(rid, v.version)
        if kind == "DiagnosticReport":
            res = render.diagnostic_report(r, v.recorded_at, documents.get((rid, v.version), ()))
        else:
            # The versions in which that id is an Observation (not a component's row).
            wanted = render.observation_id(rid, seq)
            found = next(
                (o for o in render.observations(r, v.recorded_at) if o["id"] == wanted), None
            )
            if found is None:
                continue
            res = found
        method = "POST" if v.version == 1 else "PUT"
        entries.append(
            {
                "fullUrl": f"{str(request.base_url).rstrip('/')}/fhir/{kind}/{res['id']}",
                "resource": res,
                "request": {"method": method, "url": f"{kind}/{res['id']}"},
                "response": {
                    "status": "201 Created" if v.version == 1 else "200 OK",
                    "lastModified": render.instant(v.recorded_at),
                    "etag": f'W/"{v.version}"',
                },
            }
        )
    return render.bundle("history", entries, total=len(entries))


@router.get("/DiagnosticReport/{rid}/_history", summary="history")
async def report_history(rid: str, request: Request, c: CONTAINER, principal: READER) -> Response:
    body = await run_in_threadpool(_history_bundle, c, request, _result_id(rid), "DiagnosticReport")
    return fhir_response(body)


def _obs_ids(text: str) -> tuple[int, int]:
    parsed = render.parse_observation_id(text)
    if parsed is None:
        raise NotFound(f"Observation/{text} 不存在")
    return parsed


def _not_an_observation(result: StoredResult, oid: str, seq: int) -> NotFound:
    """Observation/{oid} is not there: a 404 naming the Observation that holds it when it
    is the row of a component (read before components were read back in their
    Observation, Observation/{id}-2 was the diastolic value of Observation/{id}-1)."""
    holding = render.observation_holding(result, seq)
    if holding is None:
        return NotFound(f"Observation/{oid} 不存在")
    hid, k = holding
    message = (
        f"Observation/{oid} 不是一个 Observation：该值是 Observation/{hid} 的 component[{k}]，"
        f"请读取 Observation/{hid}（与发送时一样，组分在其 Observation 之中返回）"
    )
    return NotFound(message, problems=[Problem("Observation.id", message)])


def _read_observation(
    c: Container, principal: Principal, oid: str, version: int | None
) -> Response:
    rid, seq = _obs_ids(oid)
    result = c.results.get_result(rid, version)
    updated = (
        c.results.updated_at(rid)
        if version is None
        else c.results.version_recorded_at(rid, result.version)
    )
    wanted = render.observation_id(rid, seq)
    obs = next((o for o in render.observations(result, updated) if o["id"] == wanted), None)
    if obs is None:
        raise _not_an_observation(result, oid, seq)
    c.results.record_access(principal, "fhir.read", [result])
    return fhir_response(obs, headers=_version_headers(result.version, updated))


@router.get("/Observation/{oid}", summary="read")
async def read_observation(oid: str, c: CONTAINER, principal: READER) -> Response:
    return await run_in_threadpool(_read_observation, c, principal, oid, None)


@router.get("/Observation/{oid}/_history/{vid}", summary="vread")
async def vread_observation(oid: str, vid: str, c: CONTAINER, principal: READER) -> Response:
    if not is_digits(vid):
        raise NotFound(f"Observation/{oid} 没有版本 {vid}")
    return await run_in_threadpool(_read_observation, c, principal, oid, int(vid))


@router.get("/Observation/{oid}/_history", summary="history")
async def observation_history(
    oid: str, request: Request, c: CONTAINER, principal: READER
) -> Response:
    rid, seq = _obs_ids(oid)

    def load() -> dict[str, Any]:
        body = _history_bundle(c, request, rid, "Observation", seq)
        if not body["entry"]:
            raise _not_an_observation(c.results.get_result(rid), oid, seq)
        return body

    return fhir_response(await run_in_threadpool(load))


@router.get("/Patient/{pid}", summary="read")
async def read_patient(pid: str, c: CONTAINER, principal: READER) -> Response:
    if not is_digits(pid):
        raise NotFound(f"Patient/{pid} 不存在")

    def load() -> dict[str, Any]:
        resource = _patient_resource(c, int(pid))
        c.results.record_access(principal, "fhir.read", [], patient_id=int(pid))
        return resource

    return fhir_response(await run_in_threadpool(load))


@router.get("/_history", summary="系统级历史")
async def system_history(request: Request, c: CONTAINER, principal: READER) -> Response:
    since_text = request.query_params.get("_since")
    since = _date_bounds([f"ge{since_text}"], "_since")[0] if since_text else None
    try:
        count = min(int(request.query_params.get("_count", "100")), 500)
    except ValueError as exc:
        raise ValidationFailed("_count 参数无效", problems=[Problem("_count", "应为整数")]) from exc

    def load() -> dict[str, Any]:
        entries = []
        changes = c.results.history(since, count)
        documents = c.results.documents_of([(rid, version) for rid, version, _ in changes])
        for rid, version, at in changes:
            r = c.results.get_result(rid, version)
            entries.append(
                {
                    "fullUrl": f"{str(request.base_url).rstrip('/')}/fhir/DiagnosticReport/{rid}",
                    "resource": render.diagnostic_report(r, at, documents.get((rid, version), ())),
                    "request": {
                        "method": "POST" if version == 1 else "PUT",
                        "url": f"DiagnosticReport/{rid}",
                    },
                    "response": {
                        "status": "201 Created" if version == 1 else "200 OK",
                        "etag": f'W/"{version}"',
                        "lastModified": render.instant(at),
                    },
                }
            )
        return render.bundle("history", entries, total=len(entries))

    return fhir_response(await run_in_threadpool(load))


@router.api_route(
    "/{path:path}", methods=["GET", "PUT", "DELETE", "PATCH"], include_in_schema=False
)
async def unsupported(path: str, request: Request) -> Response:
    if request.method in ("GET", "HEAD"):
        raise NotFound(f"不支持的 FHIR 交互: {path}")
    # Results change only by a new report version sent by its laboratory (R3).
    raise MethodNotAllowed(
        f"不支持 {request.method} {path}：结果只能由检查检验机构重新发送报告来更正",
        problems=[
            Problem(
                request.method,
                "支持的写入: POST /fhir（transaction Bundle）与 POST /fhir/DiagnosticReport",
            )
        ],
    )
