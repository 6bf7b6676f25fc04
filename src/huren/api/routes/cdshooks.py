"""CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/): discovery at ``GET /cds-services``,
the ``order-select`` and ``order-sign`` services, and their feedback endpoints.

The ordering institution is the authenticated caller's (a clinician or the HIS interface
account of that hospital); the patient comes from the ``patient`` prefetch, or — without
prefetch — from the client's FHIR server; when neither is available the answer is 412
Precondition Failed naming what is missing (§Prefetch: SHALL), and when the Patient has no
identifier to match on, an info card saying so."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlparse

import anyio
import httpx
import msgspec
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from huren.adapters.cdshooks import cards as card_builder
from huren.adapters.cdshooks.hooks import (
    SERVICE_HOOKS,
    SERVICES,
    HookRequest,
    MalformedHook,
    PrefetchUnavailable,
    draft_orders,
    parse_feedback,
    parse_hook,
    patient_identifiers,
    prefetched_patient,
)
from huren.adapters.fhir import systems
from huren.api.auth import api_key_scheme, bearer_scheme, require_roles
from huren.api.deps import container
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.errors import NotFound, Problem, ValidationFailed
from huren.domain.identity import PatientIdentifier, validate_identifier
from huren.domain.recognition import CODE_MAX
from huren.domain.text import id_problem, is_digits
from huren.services.recognition import (
    CardRecord,
    CheckOutcome,
    CheckRequest,
    Feedback,
    PatientRef,
)

log = logging.getLogger("huren.cdshooks")
router = APIRouter(tags=["CDS Hooks"])
Caller = Annotated[Principal, Depends(require_roles(Role.CLINICIAN, Role.INTEGRATION))]
_CALLER = require_roles(Role.CLINICIAN, Role.INTEGRATION)
# The security schemes of a service call, for the OpenAPI document only: declared as
# dependencies they cost a dependency-tree solve on every call, and ``_call``
# authenticates by itself (issue 5: the call's overhead is measured against a trivial
# endpoint on the same stack).
SERVICE_CALL_SECURITY: dict[str, Any] = {
    "security": [{bearer_scheme.scheme_name: []}, {api_key_scheme.scheme_name: []}]
}
_ENCODER = msgspec.json.Encoder()
FHIR_TIMEOUT = httpx.Timeout(2.0)


def base_url(c: Container, request: Request) -> str:
    return (c.settings.base_url or str(request.base_url)).rstrip("/")


@router.get("/cds-services", summary="CDS Hooks 服务发现")
def discovery() -> dict[str, Any]:
    return {"services": SERVICES}


def _service(service_id: str) -> str:
    if service_id not in SERVICE_HOOKS:
        raise NotFound(
            f"没有 CDS 服务 {service_id}",
            problems=[Problem("service_id", "可用服务：" + "、".join(SERVICE_HOOKS))],
        )
    return service_id


async def _fetch_patient(req: HookRequest) -> dict[str, Any] | None:
    """GET {fhirServer}/Patient/{patientId} with the bearer token the client passed."""
    assert req.fhirServer is not None
    url = f"{req.fhirServer.rstrip('/')}/Patient/{req.context.patientId}"
    headers = {"Accept": "application/fhir+json"}
    if req.fhirAuthorization is not None:
        headers["Authorization"] = f"Bearer {req.fhirAuthorization.access_token}"
    try:
        async with httpx.AsyncClient(timeout=FHIR_TIMEOUT) as client:
            r = await client.get(url, headers=headers)
        if r.status_code != 200:
            log.info("fhirServer %s answered %s", url, r.status_code)
            return None
        data = r.json()
        return data if isinstance(data, dict) else None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        log.info("fhirServer %s unreachable: %s", url, exc)
        return None


def _is_own_fhir(req: HookRequest, own_base: str) -> bool:
    if not req.fhirServer:
        return False
    theirs, ours = urlparse(req.fhirServer), urlparse(own_base)
    return theirs.netloc == ours.netloc and theirs.path.rstrip("/") == "/fhir"


@dataclass(frozen=True, slots=True)
class _Fetched:
    """What the client's FHIR server answered for the patient (None: nothing usable)."""

    resource: dict[str, Any] | None


class _NeedsFetch(Exception):
    """The patient must be read from the client's FHIR server (async, on the loop)."""


def _unavailable(why: str) -> PrefetchUnavailable:
    return PrefetchUnavailable(
        f"无法取得患者信息，未能查询互认结果：{why}",
        problems=[
            Problem(
                "prefetch.patient",
                f"{why}。请在 prefetch 中提供 Patient 资源（含居民身份证或院内病历号），"
                "或提供可访问的 fhirServer 与 fhirAuthorization",
            )
        ],
    )


def _patient(
    req: HookRequest, institution: str, own_base: str, fetched: _Fetched | None
) -> tuple[PatientRef | None, str]:
    """The patient to look up, or None with the reason in Chinese (a Patient without an
    identifier to match on). Raises ``_NeedsFetch`` when the patient is neither prefetched
    nor on this server and ``fetched`` is None, and ``PrefetchUnavailable`` when it cannot
    be had at all."""
    resource, unusable = prefetched_patient(req)
    if resource is None and req.fhirServer:
        if _is_own_fhir(req, own_base) and is_digits(req.context.patientId):
            patient_id = int(req.context.patientId)
            if id_problem(patient_id) is not None:
                return None, f"context.patientId（{req.context.patientId}）不是本平台的患者 id"
            return PatientRef(patient_id=patient_id), ""
        if fetched is None:
            raise _NeedsFetch
        resource = fetched.resource
        if resource is None:
            raise _unavailable(
                f"{unusable}，且无法从 fhirServer（{req.fhirServer}）读取 "
                f"Patient/{req.context.patientId}"
            )
    if resource is None:
        raise _unavailable(f"{unusable}，也未提供可访问的 fhirServer")
    idents: list[PatientIdentifier] = []
    rejected: list[str] = []
    for i, ident in enumerate(patient_identifiers(resource, institution, rejected)):
        try:
            idents.append(validate_identifier(ident, f"prefetch.patient.identifier[{i}]"))
        except ValidationFailed as exc:
            rejected.append(exc.message)
    if not idents:
        why = (
            "；".join(rejected)
            or "Patient 资源中没有可识别的患者标识（居民身份证、医保号、电子健康卡或院内病历号）"
        )
        return None, why
    return PatientRef(identifiers=tuple(idents)), ""


def _choose_code(c: Container, institution: str, codings: tuple[tuple[str, str], ...]) -> str:
    """The coding to use: a unified item code first, then the first code that is mapped
    (对码), then a LOINC coding that is an item's LOINC (as results sent with LOINC only
    are matched: ``services.intake.unified_code``) as its unified code; else, reported as
    unmapped, the hospital's own code (the first that is not LOINC: the one its 信息科
    must map), or the first code."""
    for system, code in codings:
        if system == systems.ITEM:
            return code
    catalog = c.recognition.catalog()
    for _, code in codings:
        if catalog.unified_code(institution, code) is not None:
            return code
    for system, code in codings:
        if system == systems.LOINC and (item := catalog.item_for_loinc(code)) is not None:
            return item
    return next((code for system, code in codings if system != systems.LOINC), codings[0][1])


def _call(
    c: Container,
    request: Request,
    service_id: str,
    body: bytes,
    own: str,
    fetched: _Fetched | None,
) -> bytes:
    """The whole service call, in one worker thread: authentication (first, as the
    dependency did), the hook request, the patient, the check with its cards and their
    records in one transaction, and the JSON answer."""
    principal = _CALLER(request)
    _service(service_id)
    req = parse_hook(body, service_id)
    institution = principal.institution or ""
    orders = draft_orders(req)
    if not orders:
        return _json({"cards": []})
    patient, missing = _patient(req, institution, own, fetched)
    if patient is None:
        detail = (
            f"无法确定患者身份，未能查询互认结果：{missing}。"
            "请在 HIS 中为患者登记居民身份证、医保号、电子健康卡或院内病历号。"
        )
        return _json(
            {"cards": [card_builder.info_card("缺少患者身份信息，无法查询互认结果", detail, own)]}
        )
    codes = [_choose_code(c, institution, o.codings) for o in orders]
    for o, code in zip(orders, codes, strict=True):
        if len(code) > CODE_MAX:
            raise MalformedHook(
                "检查检验医嘱的项目代码过长",
                problems=[
                    Problem(
                        f"{o.where}.resource.code.coding",
                        f"{o.reference} 的项目代码最多 {CODE_MAX} 个字符，收到 {len(code)} 个",
                    )
                ],
            )
    clinician = req.context.userId
    check = CheckRequest(
        principal=principal,
        patient=patient,
        codes=tuple(codes),
        channel="cds-hooks",
        department=principal.department or "",
        clinician=clinician,
        request_id=req.hookInstance[:64],
    )
    ctx = card_builder.CardContext(
        service_id=service_id,
        hook_instance=req.hookInstance[:64],
        base_url=own,
        department=principal.department or "",
        clinician=clinician,
        at=c.clock.now(),
    )
    drafts = [(o.reference, code, o.status[:20]) for o, code in zip(orders, codes, strict=True)]

    def make_cards(
        outcome: CheckOutcome,
    ) -> tuple[list[dict[str, Any]], list[CardRecord]]:
        return card_builder.build_cards(outcome, drafts, c.recognition.catalog().institutions, ctx)

    _, cards = c.recognition.check_with_cards(check, make_cards)
    return _json({"cards": cards})


def _json(content: dict[str, Any]) -> bytes:
    # As Starlette's JSONResponse renders it (compact, UTF-8, no NaN), several times faster.
    return _ENCODER.encode(content)


@router.post(
    "/cds-services/{service_id}",
    summary="调用 CDS 服务（order-select / order-sign）",
    openapi_extra=SERVICE_CALL_SECURITY,
)
async def call_service(service_id: str, request: Request) -> Response:
    # No synchronous dependencies (FastAPI would run each in its own worker thread): the
    # call runs in one worker thread, and only a patient to be read from the client's
    # FHIR server takes a second trip (the read itself is async).
    c: Container = request.app.state.container
    body = await request.body()
    own = base_url(c, request)
    loop = asyncio.get_running_loop()
    workers = _workers(request.app, c)
    try:
        answer = await loop.run_in_executor(workers, _call, c, request, service_id, body, own, None)
    except _NeedsFetch:
        fetched = _Fetched(await _fetch_patient(parse_hook(body, service_id)))
        answer = await loop.run_in_executor(
            workers, _call, c, request, service_id, body, own, fetched
        )
    return Response(answer, media_type="application/json")


# The service calls' worker threads, one executor per app. A plain executor rather than
# anyio's worker threads (``run_in_threadpool``): their cancel scope and capacity limiter
# cost the event loop more per call than the trivial endpoint's whole handler (issue 5,
# py-spy under load). And very few threads: a check holds the GIL for most of its time and
# the sqlite3 and psycopg drivers release and retake it around every call, so each extra
# thread mostly adds GIL hand-overs (futex calls, hundreds per check) — measured at 16
# concurrent clients on 2 cores, one thread on SQLite (one writer anyway) cost 2.4 ms of
# server CPU per call against 3.3 ms with eight, at higher throughput; on PostgreSQL two
# threads overlap the round trips as well as more did. A call whose client went away
# still runs to its end (its rows are written either way).
CALL_WORKERS = {"sqlite": 1}
CALL_WORKERS_DEFAULT = 2
_workers_lock = threading.Lock()


def _workers(app: Any, c: Container) -> ThreadPoolExecutor:
    pool: ThreadPoolExecutor | None = getattr(app.state, "cds_workers", None)
    if pool is not None:
        return pool
    with _workers_lock:
        pool = getattr(app.state, "cds_workers", None)
        if pool is None:
            n = c.settings.cds_threads or CALL_WORKERS.get(
                c.engine.dialect.name, CALL_WORKERS_DEFAULT
            )
            pool = ThreadPoolExecutor(n, thread_name_prefix="cds-hooks")
            app.state.cds_workers = pool

            async def stop(_: Any) -> None:  # calls under way finish first
                await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)

            getattr(app.state, "on_shutdown", []).append(stop)
    return pool


@router.post("/cds-services/{service_id}/feedback", summary="CDS 服务反馈（接受 / 不予互认）")
async def feedback(
    service_id: str,
    request: Request,
    principal: Caller,
    c: Annotated[Container, Depends(container)],
) -> JSONResponse:
    _service(service_id)
    body = parse_feedback(await request.body())
    entries = []
    for n, f in enumerate(body.feedback):
        if f.outcome not in ("accepted", "overridden"):
            raise MalformedHook(
                "feedback.outcome 应为 accepted 或 overridden",
                problems=[Problem(f"feedback[{n}].outcome", f"收到 {f.outcome}")],
            )
        reason = f.overrideReason.reason if f.overrideReason else None
        entries.append(
            Feedback(
                card=f.card,
                outcome=f.outcome,
                accepted_suggestions=tuple(s.id for s in f.acceptedSuggestions),
                reason_system=reason.system if reason else "",
                reason_code=reason.code if reason else "",
                comment=f.overrideReason.userComment if f.overrideReason else "",
            )
        )
    decided = await anyio.to_thread.run_sync(c.recognition.feedback, principal, entries)
    return JSONResponse({"recorded": len(decided), "decisions": decided})
