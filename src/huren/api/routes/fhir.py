"""FHIR R4 at /fhir: transaction Bundles and single DiagnosticReports in, search / read /
vread / history out, bulk NDJSON via $import.

Errors on this router are OperationOutcome (application/fhir+json) naming the element;
the route class below catches them locally so the rest of the API keeps problem+json."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from huren.adapters.db.results import ResultQuery
from huren.adapters.fhir import render
from huren.adapters.fhir import systems as sid
from huren.adapters.fhir.ingest import ParsedBundle, parse_report, parse_transaction
from huren.adapters.fhir.model import CodeGroup
from huren.api.auth import require_roles
from huren.api.deps import container as get_container
from huren.api.routes.retrieval import document_response
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.china_time import CHINA_TZ, in_china_time
from huren.domain.errors import DomainError, Forbidden, NotFound, Problem, ValidationFailed
from huren.domain.identity import IdentifierKind, PatientIdentifier, validate_identifier
from huren.domain.results import StoredResult
from huren.domain.text import is_digits
from huren.services.intake import Channel, Disposition, ReceiveOutcome, Rejection

_ISSUE_CODE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
}


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

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
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
    ctype = request.headers.get("content-type", "application/fhir+json").split(";")[0].strip()
    if ctype not in ("application/fhir+json", "application/json", "application/json+fhir"):
        raise ValidationFailed(
            "请求内容类型应为 application/fhir+json",
            problems=[Problem("Content-Type", f"不支持的内容类型 {ctype}")],
        )
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


def _ingest(
    c: Container, principal: Principal, raw: bytes, single: bool
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
        _check_sender(principal, parsed)
        return parsed, c.intake.receive(parsed.message)
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
    entries: list[dict[str, Any]] = []
    for plan in parsed.entries:
        response: dict[str, Any]
        if plan.kind in ("report", "observation", "findings", "panel"):
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


@router.post(
    "/DiagnosticReport", summary="单个 DiagnosticReport（Patient、Observation 放在 contained）"
)
async def create_report(request: Request, c: CONTAINER, principal: WRITER) -> Response:
    raw = await _body(request)
    _parsed, outcome = await run_in_threadpool(_ingest, c, principal, raw, True)
    ref = outcome.results[0]
    result = await run_in_threadpool(c.results.get_result, ref.result_id)
    updated = await run_in_threadpool(c.results.updated_at, ref.result_id)
    status = 201 if ref.disposition is Disposition.CREATED else 200
    loc = f"DiagnosticReport/{ref.result_id}/_history/{ref.version}"
    return fhir_response(
        render.diagnostic_report(result, updated, c.results.documents(result.id, result.version)),
        status,
        {"Location": loc, "ETag": f'W/"{ref.version}"'},
    )


# ---------------------------------------------------------------- $import (NDJSON)
@router.post(
    "/$import", summary="批量导入 NDJSON（每行一个 transaction Bundle 或 DiagnosticReport）"
)
async def bulk_import(request: Request, c: CONTAINER, principal: WRITER) -> Response:
    """Synchronous bulk load: each line is stored in its own transaction; a bad line is
    reported (OperationOutcome issue with its line number) and does not stop the rest."""
    own = _own_institution(principal)
    issues: list[Problem] = []
    stored = duplicates = 0
    line_no = 0
    buffer = b""

    def handle(line: bytes, n: int) -> None:
        nonlocal stored, duplicates
        if not line.strip():
            return
        try:
            parsed = ingest_line(line, own, f"ndjson:{n}")
            _check_sender(principal, parsed)
            outcome = c.intake.receive(parsed.message)
        except DomainError as exc:
            for p in exc.problems or [Problem("", exc.message)]:
                issues.append(Problem(f"line {n}: {p.field}", p.message))
            return
        stored += len(outcome.results)
        duplicates += outcome.duplicate

    async for chunk in request.stream():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            line_no += 1
            await run_in_threadpool(handle, line, line_no)
    if buffer.strip():
        line_no += 1
        await run_in_threadpool(handle, buffer, line_no)
    summary = f"共 {line_no} 行，保存结果 {stored} 份（其中重复消息 {duplicates} 条），错误 {len(issues)} 处"
    body = render.operation_outcome(issues, severity="error", code="invalid")
    body["issue"] = [
        {"severity": "information", "code": "informational", "diagnostics": summary},
        *(body["issue"] if issues else []),
    ]
    return fhir_response(body, 200)


def ingest_line(line: bytes, default_institution: str, control_id: str) -> ParsedBundle:
    """One NDJSON line: a transaction Bundle or a self-contained DiagnosticReport."""
    head = line[:200]
    if b'"Bundle"' in head or b'"resourceType":"Bundle"' in line[:4000]:
        return parse_transaction(
            line, default_institution=default_institution, channel=Channel.BULK
        )
    return parse_report(
        line, default_institution=default_institution, channel=Channel.BULK, control_id=""
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
def _date_bounds(values: Sequence[str], name: str) -> tuple[datetime | None, datetime | None]:
    """FHIR date search with prefixes eq/ge/gt/le/lt (R4 §3.1.1.5.7), by day or instant."""
    low: datetime | None = None
    high: datetime | None = None
    for v in values:
        prefix = v[:2] if v[:2] in ("eq", "ge", "gt", "le", "lt", "sa", "eb") else "eq"
        text = v[2:] if v[:2] == prefix else v
        try:
            if len(text) == 10:
                start = datetime.fromisoformat(text).replace(tzinfo=CHINA_TZ)
                end = start + timedelta(days=1)
            else:
                start = in_china_time(datetime.fromisoformat(text))
                end = start
        except ValueError as exc:
            raise ValidationFailed(
                f"{name} 参数无效", problems=[Problem(name, f"无效的日期: {v}")]
            ) from exc
        if prefix in ("ge", "gt", "sa"):
            low = start if prefix == "ge" else end
        elif prefix in ("le", "lt", "eb"):
            high = end if prefix == "le" else start
        else:
            low, high = start, end if end > start else None
    return low, high


def _patient_ids_from(c: Container, params: Any) -> list[int] | None:
    ids: list[int] | None = None
    for name in ("patient", "subject"):
        for v in params.getlist(name):
            pid = v.removeprefix("Patient/")
            if not is_digits(pid):
                raise ValidationFailed(
                    "patient 参数无效", problems=[Problem(name, f"应为 Patient/{{id}}: {v}")]
                )
            ids = [*(ids or []), int(pid)]
    for name in ("patient.identifier", "subject:identifier", "subject.identifier"):
        for v in params.getlist(name):
            found = c.results.find_patients(_token_identifier(v, name))
            ids = [*(ids or []), *found]
    return ids


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


def _query(
    c: Container, request: Request, code_params: Sequence[str] = ("code",)
) -> tuple[ResultQuery, int]:
    params = request.query_params
    local, items, loinc = _code_tokens([v for name in code_params for v in params.getlist(name)])
    performed_from, performed_to = _date_bounds(params.getlist("date"), "date")
    updated_from, updated_to = _date_bounds(params.getlist("_lastUpdated"), "_lastUpdated")
    try:
        count = min(int(params.get("_count", "50")), 500)
        offset = max(int(params.get("_offset", "0")), 0)
    except ValueError as exc:
        raise ValidationFailed("_count 参数无效", problems=[Problem("_count", "应为整数")]) from exc
    identifier = params.get("identifier")
    query = ResultQuery(
        patient_ids=_patient_ids_from(c, params),
        item_codes=items or None,
        local_codes=local or None,
        loinc=loinc or None,
        performed_from=performed_from,
        performed_to=performed_to,
        updated_from=updated_from,
        updated_to=updated_to,
        report_no=identifier.partition("|")[2] or identifier if identifier else None,
        limit=count,
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


@router.get("/DiagnosticReport", summary="检索 DiagnosticReport")
async def search_reports(request: Request, c: CONTAINER, principal: READER) -> Response:
    query, _count = _query(c, request)
    found = await run_in_threadpool(_search, c, query)
    include = "DiagnosticReport:result" in request.query_params.getlist("_include")
    entries = []
    documents = await run_in_threadpool(
        c.results.documents_of, [(r.id, r.version) for r, _ in found]
    )
    for r, updated in found:
        docs = documents.get((r.id, r.version), ())
        entries.append(_entry(request, render.diagnostic_report(r, updated, docs)))
        if include:
            entries.extend(_entry(request, o, "include") for o in render.observations(r, updated))
    await run_in_threadpool(
        c.results.record_access, principal, "fhir.search", [r for r, _ in found]
    )
    return fhir_response(
        render.bundle("searchset", entries, total=len(found), self_link=str(request.url))
    )


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


@router.get("/Observation", summary="检索 Observation")
async def search_observations(request: Request, c: CONTAINER, principal: READER) -> Response:
    query, _count = _query(c, request, _OBSERVATION_CODES)
    found = await run_in_threadpool(_search, c, query)
    filters = _code_filters(request.query_params)
    entries = []
    for r, updated in found:
        for group, o in render.observation_resources(r, updated):
            if _observation_matches(r, group, filters, query.item_codes):
                entries.append(_entry(request, o))
    await run_in_threadpool(
        c.results.record_access, principal, "fhir.search", [r for r, _ in found]
    )
    return fhir_response(
        render.bundle("searchset", entries, total=len(entries), self_link=str(request.url))
    )


# ---------------------------------------------------------------- read, vread, history
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
        headers={"ETag": f'W/"{result.version}"'},
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
    return fhir_response(obs, headers={"ETag": f'W/"{result.version}"'})


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
        view = c.results.patient(int(pid))
        idents = c.results.patient_identifiers(view.id)
        name = c.results.patient_name(view.id)
        c.results.record_access(principal, "fhir.read", [], patient_id=view.id)
        birth = view.birth_date.isoformat() if view.birth_date else ""
        return render.patient(view.id, idents, name, view.sex, birth)

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
async def unsupported(path: str) -> Response:
    raise NotFound(f"不支持的 FHIR 交互: {path}")
