"""DICOMweb under /dicomweb (PS3.18): STOW-RS (10.5), QIDO-RS (10.6), WADO-RS (10.4) with
metadata and rendered frames.

Who may call: STOW-RS the integration role (the producing institution is the caller's);
reads clinicians, institution administrators, integration systems (own institution only)
and operators. Every retrieve and metadata read is audited."""

from __future__ import annotations

import base64
import logging
import math
import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import date
from io import BytesIO
from typing import Annotated, Any

import pydicom
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from huren.adapters.dicom import dicomjson
from huren.adapters.dicom.render import Unrenderable, Window, render_frame
from huren.api.auth import require_roles
from huren.api.deps import container
from huren.api.http_errors import NotAcceptable, UnsupportedMediaType
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.errors import NotFound, Problem, ValidationFailed
from huren.domain.imaging import STATUS_DATASET_MISMATCH
from huren.domain.text import is_digits
from huren.services.imaging import (
    AuditRecord,
    ImagingService,
    InstanceRefused,
    InstanceRow,
    InvalidDicomBytes,
    Source,
    StudyQuery,
)

log = logging.getLogger("huren.dicom")

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])

# Module-level dependencies so that tests and deployments can override them by identity.
stow_caller = require_roles(Role.INTEGRATION)
reader = require_roles(Role.CLINICIAN, Role.INSTITUTION_ADMIN, Role.INTEGRATION, Role.OPERATOR)

Caller = Annotated[Principal, Depends(reader)]
Uploader = Annotated[Principal, Depends(stow_caller)]
Services = Annotated[Container, Depends(container)]

DICOM_JSON = "application/dicom+json"
MAX_LIMIT = 1000


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicomweb"


def _own_institution(principal: Principal) -> str:
    """Integration systems see only their own institution's images."""
    return principal.institution or "" if principal.role is Role.INTEGRATION else ""


def _audit(
    imaging: ImagingService, principal: Principal, action: str, institution: str = ""
) -> None:
    imaging.audit(
        AuditRecord(
            at=imaging.clock.now(),
            actor=principal.username,
            role=principal.role.value,
            action=action,
            account_id=principal.account_id,
            institution=principal.institution or institution or None,
        )
    )


# ---------------------------------------------------------------- STOW-RS
def _boundary(content_type: str) -> bytes:
    """PS3.18 10.5.1.2: multipart/related; type="application/dicom"; boundary=…"""
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "multipart/related":
        raise UnsupportedMediaType(
            'STOW-RS 请求须为 multipart/related; type="application/dicom"',
            problems=[Problem("Content-Type", content_type or "(空)")],
        )
    found: dict[str, str] = {}
    for part in params.split(";"):
        key, _, value = part.strip().partition("=")
        found[key.strip().lower()] = value.strip().strip('"')
    part_type = found.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(
            f"仅支持 application/dicom 部分（收到 {part_type}）",
            problems=[Problem("Content-Type", f"type={part_type}")],
        )
    if not found.get("boundary"):
        raise ValidationFailed(
            "multipart 请求缺少 boundary", problems=[Problem("Content-Type", "boundary")]
        )
    return found["boundary"].encode("latin-1")


def split_multipart(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    """RFC 2046 5.1: parts between "--boundary" delimiters; headers, a blank line, content."""
    delimiter = b"--" + boundary
    chunks = body.split(delimiter)
    parts: list[tuple[dict[str, str], bytes]] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            k, _, v = line.decode("latin-1").partition(":")
            if k:
                headers[k.strip().lower()] = v.strip()
        parts.append((headers, content.removesuffix(b"\r\n")))
    return parts


def _sop_item(sop_class: str, sop_uid: str, extra: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    item.update(extra)
    return item


def _store_all(
    imaging: ImagingService,
    parts: Sequence[tuple[dict[str, str], bytes]],
    institution: str,
    study_uid: str,
    base: str,
    caller: str,
) -> tuple[int, dict[str, Any]]:
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for headers, data in parts:
        ctype = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if ctype != "application/dicom":
            failed.append(_sop_item("", "", {"00081197": {"vr": "US", "Value": [0xC000]}}))
            continue
        if study_uid:
            # PS3.18 10.5.1: with a Study Instance UID in the path every instance must
            # belong to that study.
            try:
                header, _ = imaging.parser.parse(data)
            except InvalidDicomBytes:
                header = None  # store_instance refuses it below and logs why
            if header is not None and header.study_uid != study_uid:
                failed.append(
                    _sop_item(
                        header.sop_class_uid,
                        header.sop_uid,
                        {"00081197": {"vr": "US", "Value": [STATUS_DATASET_MISMATCH]}},
                    )
                )
                continue
        try:
            stored = imaging.store_instance(
                data, institution=institution, source=Source.STOW, calling_ae=caller[:16]
            )
        except InstanceRefused as exc:
            failed.append(
                _sop_item("", exc.sop_uid, {"00081197": {"vr": "US", "Value": [exc.dicom_status]}})
            )
            continue
        url = (
            f"{base}/studies/{stored.study_uid}/series/{stored.series_uid}"
            f"/instances/{stored.sop_uid}"
        )
        referenced.append(
            _sop_item(
                stored.sop_class_uid, stored.sop_uid, {"00081190": {"vr": "UR", "Value": [url]}}
            )
        )
    body: dict[str, Any] = {}
    if study_uid:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study_uid}"]}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    # PS3.18 10.5.3.1 (Table 10.5.3-1): 200 all stored; 202 some stored; 409 none stored.
    status = 200 if not failed else (202 if referenced else 409)
    return status, body


@router.post("/studies", summary="STOW-RS 上传影像")
@router.post("/studies/{study_uid}", summary="STOW-RS 上传影像（指定检查）")
async def stow(
    request: Request, principal: Uploader, c: Services, study_uid: str = ""
) -> JSONResponse:
    if not principal.institution:
        raise ValidationFailed(
            "接口账号未绑定机构，无法确定影像的来源机构",
            problems=[Problem("principal.institution", "缺少机构")],
        )
    boundary = _boundary(request.headers.get("content-type", ""))
    body = await request.body()
    parts = split_multipart(body, boundary)
    if not parts:
        raise ValidationFailed(
            "multipart 请求中没有任何部分",
            problems=[Problem("body", "没有 application/dicom 部分")],
        )
    status, payload = await run_in_threadpool(
        _store_all,
        c.imaging,
        parts,
        principal.institution,
        study_uid,
        _base(request),
        principal.username,
    )
    return JSONResponse(payload, status_code=status, media_type=DICOM_JSON)


# ---------------------------------------------------------------- QIDO-RS
_RESERVED = {"limit", "offset", "includefield", "fuzzymatching", "emptyvaluematching"}
_MATCHABLE = {
    "PatientID",
    "StudyDate",
    "AccessionNumber",
    "ModalitiesInStudy",
    "StudyInstanceUID",
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
}


def _da(text: str, where: str) -> date | None:
    text = text.strip()
    if not text:
        return None
    if not re.fullmatch(r"\d{8}", text):
        raise ValidationFailed(
            f"日期格式应为 YYYYMMDD: {text}", problems=[Problem(where, "日期格式应为 YYYYMMDD")]
        )
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError as exc:
        raise ValidationFailed(f"日期无效: {text}", problems=[Problem(where, "日期无效")]) from exc


def _int(text: str, where: str) -> int:
    if not is_digits(text.strip()):
        raise ValidationFailed(f"{where} 应为非负整数", problems=[Problem(where, "应为非负整数")])
    return int(text)


def parse_search(
    request: Request, imaging: ImagingService, principal: Principal, **path: str
) -> StudyQuery:
    """PS3.18 8.3.4: attribute matching by keyword or tag, limit, offset; includefield is
    accepted (every indexed attribute is always returned)."""
    kw: dict[str, Any] = {"institution": _own_institution(principal)}
    for name, value in request.query_params.multi_items():
        if name in _RESERVED:
            continue
        keyword = dicomjson.keyword_of(name)
        if keyword is None or keyword not in _MATCHABLE:
            raise ValidationFailed(
                f"不支持按 {name} 查询",
                problems=[
                    Problem(name, "不支持的匹配属性；支持: " + "、".join(sorted(_MATCHABLE)))
                ],
            )
        if keyword == "PatientID":
            kw["patient_global_hash"] = imaging.patient_global_hash(value)
        elif keyword == "StudyDate":
            # PS3.4 C.2.2.2.5 range matching: "a-b", "a-", "-b", "a".
            lo, sep, hi = value.partition("-")
            kw["study_date_from"] = _da(lo, name)
            kw["study_date_to"] = _da(hi, name) if sep else kw["study_date_from"]
        elif keyword == "AccessionNumber":
            kw["accession_number"] = value
        elif keyword == "ModalitiesInStudy":
            kw["modality"] = value
        elif keyword == "StudyInstanceUID":
            kw["study_uids"] = tuple(v for v in value.split(",") if v)  # UID list matching
        elif keyword == "Modality":
            kw["series_modality"] = value
        elif keyword == "SeriesInstanceUID":
            kw["series_uids"] = tuple(v for v in value.split(",") if v)
        elif keyword == "SeriesNumber":
            kw["series_number"] = _int(value, name)
        elif keyword == "SOPInstanceUID":
            kw["sop_uids"] = tuple(v for v in value.split(",") if v)
        elif keyword == "SOPClassUID":
            kw["sop_class_uid"] = value
        elif keyword == "InstanceNumber":
            kw["instance_number"] = _int(value, name)
    if path.get("study_uid"):
        kw["study_uids"] = (path["study_uid"],)
    if path.get("series_uid"):
        kw["series_uids"] = (path["series_uid"],)
    limit = request.query_params.get("limit")
    offset = request.query_params.get("offset")
    kw["limit"] = min(_int(limit, "limit"), MAX_LIMIT) if limit else 100
    kw["offset"] = _int(offset, "offset") if offset else 0
    return StudyQuery(**kw)


def _qido(payload: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse(payload, media_type=DICOM_JSON)


@router.get("/studies", summary="QIDO-RS 检索检查")
def search_studies(request: Request, principal: Caller, c: Services) -> JSONResponse:
    q = parse_search(request, c.imaging, principal)
    base = _base(request)
    out = []
    for s in c.imaging.index.studies(q):
        attrs = dicomjson.study_attributes(c.imaging, s)
        attrs["RetrieveURL"] = f"{base}/studies/{s.study_uid}"
        out.append(dicomjson.to_dicom_json(attrs, (*dicomjson.STUDY_KEYS, "RetrieveURL")))
    return _qido(out)


def _series_json(c: Container, request: Request, q: StudyQuery) -> JSONResponse:
    base = _base(request)
    out = []
    for s in c.imaging.index.series(q):
        attrs = dicomjson.series_attributes(s)
        attrs["RetrieveURL"] = f"{base}/studies/{s.study_uid}/series/{s.series_uid}"
        out.append(
            dicomjson.to_dicom_json(
                attrs, ("StudyInstanceUID", *dicomjson.SERIES_KEYS, "RetrieveURL")
            )
        )
    return _qido(out)


@router.get("/series", summary="QIDO-RS 检索序列")
def search_series(request: Request, principal: Caller, c: Services) -> JSONResponse:
    return _series_json(c, request, parse_search(request, c.imaging, principal))


@router.get("/studies/{study_uid}/series", summary="QIDO-RS 检索某检查的序列")
def search_study_series(
    study_uid: str, request: Request, principal: Caller, c: Services
) -> JSONResponse:
    return _series_json(
        c, request, parse_search(request, c.imaging, principal, study_uid=study_uid)
    )


def _instances_json(c: Container, request: Request, q: StudyQuery) -> JSONResponse:
    base = _base(request)
    out = []
    for i in c.imaging.index.instances(q):
        attrs = dicomjson.instance_attributes(i)
        attrs["RetrieveURL"] = (
            f"{base}/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}"
        )
        out.append(
            dicomjson.to_dicom_json(
                attrs,
                (
                    "StudyInstanceUID",
                    "SeriesInstanceUID",
                    *dicomjson.INSTANCE_KEYS,
                    "RetrieveURL",
                ),
            )
        )
    return _qido(out)


@router.get("/instances", summary="QIDO-RS 检索实例")
def search_instances(request: Request, principal: Caller, c: Services) -> JSONResponse:
    return _instances_json(c, request, parse_search(request, c.imaging, principal))


@router.get("/studies/{study_uid}/instances", summary="QIDO-RS 检索某检查的实例")
def search_study_instances(
    study_uid: str, request: Request, principal: Caller, c: Services
) -> JSONResponse:
    q = parse_search(request, c.imaging, principal, study_uid=study_uid)
    return _instances_json(c, request, q)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances", summary="QIDO-RS 检索某序列的实例"
)
def search_series_instances(
    study_uid: str, series_uid: str, request: Request, principal: Caller, c: Services
) -> JSONResponse:
    q = parse_search(request, c.imaging, principal, study_uid=study_uid, series_uid=series_uid)
    return _instances_json(c, request, q)


# ---------------------------------------------------------------- WADO-RS
def _requested_transfer_syntax(accept: str) -> str:
    """The transfer-syntax parameter of an Accept for application/dicom, '*' if none."""
    m = re.search(r"transfer-syntax\s*=\s*\"?([0-9.*]+)\"?", accept)
    return m.group(1) if m else "*"


def _multipart(c: Container, rows: Sequence[InstanceRow], request: Request) -> StreamingResponse:
    """PS3.18 8.7.3.5 / 10.4.3: multipart/related; type="application/dicom", the files as
    received (the original transfer syntax; we do not transcode)."""
    wanted = _requested_transfer_syntax(request.headers.get("accept", ""))
    if wanted not in ("*", "1.2.840.10008.1.2.1") or (
        wanted != "*" and any(r.transfer_syntax != wanted for r in rows)
    ):
        have = ", ".join(sorted({r.transfer_syntax for r in rows}))
        raise NotAcceptable(
            f"不转换传输语法；可用: {have}（请求 transfer-syntax=* 获取原始文件）",
            problems=[Problem("Accept", f"transfer-syntax={wanted}")],
        )
    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        for row, data in c.imaging.iter_files(rows):
            yield (
                f"--{boundary}\r\nContent-Type: application/dicom; "
                f"transfer-syntax={row.transfer_syntax}\r\n\r\n"
            ).encode()
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return StreamingResponse(
        body(),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


def _retrieve(
    c: Container,
    principal: Principal,
    request: Request,
    study: str,
    series: str = "",
    sop: str = "",
) -> StreamingResponse:
    rows = c.imaging.instances_for_retrieve(study, series, sop, _own_institution(principal))
    _audit(c.imaging, principal, "imaging_retrieve", rows[0].institution)
    return _multipart(c, rows, request)


@router.get("/studies/{study_uid}", summary="WADO-RS 获取检查")
def retrieve_study(
    study_uid: str, request: Request, principal: Caller, c: Services
) -> StreamingResponse:
    return _retrieve(c, principal, request, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}", summary="WADO-RS 获取序列")
def retrieve_series(
    study_uid: str, series_uid: str, request: Request, principal: Caller, c: Services
) -> StreamingResponse:
    return _retrieve(c, principal, request, study_uid, series_uid)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}", summary="WADO-RS 获取实例"
)
def retrieve_instance(
    study_uid: str, series_uid: str, sop_uid: str, request: Request, principal: Caller, c: Services
) -> StreamingResponse:
    return _retrieve(c, principal, request, study_uid, series_uid, sop_uid)


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a DICOM JSON value: JSON has no number for them."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _no_bulk(_element: Any) -> str:
    return ""  # replaced by the instance's URL (``_metadata``)


def _element_json(ds: pydicom.Dataset, tag: Any) -> dict[str, Any] | None:
    """One element of a freshly read data set in the DICOM JSON Model; a value its VR
    cannot hold (an IS "abc", an FD of 6 bytes, a DS "1e400") as sent, VR UN with its
    bytes inline (PS3.18 F.2.7)."""
    raw = getattr(ds.get_item(tag), "value", None)  # before conversion: the bytes sent
    try:
        entry: dict[str, Any] = ds[tag].to_json_dict(_no_bulk, 4096)
        if _finite(entry):
            return entry
    except Exception:
        log.debug("element %s given as sent", tag, exc_info=True)
    if not isinstance(raw, bytes):
        return None
    return {"vr": "UN", "InlineBinary": base64.b64encode(raw).decode("ascii")}


def instance_json(data: bytes, row: InstanceRow) -> dict[str, Any]:
    """The attributes of a stored file in the DICOM JSON Model (PS3.18 F.2), bulk data
    marked for ``_metadata``. Intake keeps files as received, so values that do not
    follow their VR are given as sent rather than failing the whole response, and a file
    pydicom cannot read past its indexed header is described by what the index holds."""
    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    except Exception:
        return dicomjson.to_dicom_json(
            dicomjson.instance_attributes(row),
            ("StudyInstanceUID", "SeriesInstanceUID", *dicomjson.INSTANCE_KEYS),
        )
    try:
        doc = ds.to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=_no_bulk)
        if _finite(doc):
            return doc
    except Exception:
        log.debug("metadata of %s element by element", row.sop_uid, exc_info=True)
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)  # values not yet converted
    out: dict[str, Any] = {}
    for tag in tuple(ds.keys()):  # the tags, none of the values converted yet
        entry = _element_json(ds, tag)
        if entry is not None:
            out[f"{tag:08X}"] = entry
    return out


def _metadata(
    c: Container,
    principal: Principal,
    request: Request,
    study: str,
    series: str = "",
    sop: str = "",
) -> JSONResponse:
    """PS3.18 10.4.1.1.2 / F.2: the attributes of each instance in the DICOM JSON Model,
    bulk data (Pixel Data) as a BulkDataURI to the instance."""
    rows = c.imaging.instances_for_retrieve(study, series, sop, _own_institution(principal))
    base = _base(request)
    out = []
    for row, data in c.imaging.iter_files(rows):
        doc = instance_json(data, row)
        url = f"{base}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"
        for entry in doc.values():
            if isinstance(entry, dict) and entry.get("BulkDataURI") == "":
                entry["BulkDataURI"] = url
        if row.rows:
            doc["7FE00010"] = {"vr": "OW", "BulkDataURI": url}
        out.append(doc)
    _audit(c.imaging, principal, "imaging_metadata", rows[0].institution)
    return JSONResponse(out, media_type=DICOM_JSON)


@router.get("/studies/{study_uid}/metadata", summary="WADO-RS 检查元数据")
def study_metadata(
    study_uid: str, request: Request, principal: Caller, c: Services
) -> JSONResponse:
    return _metadata(c, principal, request, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/metadata", summary="WADO-RS 序列元数据")
def series_metadata(
    study_uid: str, series_uid: str, request: Request, principal: Caller, c: Services
) -> JSONResponse:
    return _metadata(c, principal, request, study_uid, series_uid)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata",
    summary="WADO-RS 实例元数据",
)
def instance_metadata(
    study_uid: str, series_uid: str, sop_uid: str, request: Request, principal: Caller, c: Services
) -> JSONResponse:
    return _metadata(c, principal, request, study_uid, series_uid, sop_uid)


def parse_window(value: str | None) -> Window | None:
    """PS3.18 8.3.5.1.3: window=center,width[,function]; only the linear function."""
    if not value:
        return None
    parts = value.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (IndexError, ValueError) as exc:
        raise ValidationFailed(
            "window 参数应为 窗位,窗宽[,linear]", problems=[Problem("window", value)]
        ) from exc
    if not (math.isfinite(center) and math.isfinite(width)):
        raise ValidationFailed("窗位和窗宽须为有限的数", problems=[Problem("window", value)])
    if width < 1 or (len(parts) > 2 and parts[2].strip().lower() not in ("linear", "")):
        raise ValidationFailed(
            "窗宽须 ≥ 1，且仅支持 linear 函数", problems=[Problem("window", value)]
        )
    return Window(center, width)


def _media_type(request: Request) -> str:
    accept = request.query_params.get("accept") or request.headers.get("accept", "")
    return "image/png" if "image/png" in accept else "image/jpeg"


def _viewport(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        w, h = (int(v) for v in value.split(",")[:2])
    except ValueError as exc:
        raise ValidationFailed(
            "viewport 应为 宽,高", problems=[Problem("viewport", value)]
        ) from exc
    return (max(w, 1), max(h, 1))


def _quality(value: str | None) -> int:
    """PS3.18 8.3.5.1.2: quality=1…100 (out of range is clamped when encoding)."""
    if not value:
        return 90
    try:
        return int(value)
    except ValueError as exc:
        raise ValidationFailed(
            "quality 应为 1–100 的整数", problems=[Problem("quality", value)]
        ) from exc


def rendered_response(
    c: Container,
    principal: Principal,
    request: Request,
    rows: Sequence[InstanceRow],
    frame: int,
    default_viewport: tuple[int, int] | None = None,
) -> Response:
    row = rows[0]
    media = _media_type(request)
    try:
        image = render_frame(
            c.imaging.read_blob(row.content_hash),
            frame,
            window=parse_window(request.query_params.get("window")),
            media_type=media,
            viewport=_viewport(request.query_params.get("viewport")) or default_viewport,
            quality=_quality(request.query_params.get("quality")),
        )
    except Unrenderable as exc:
        raise NotAcceptable(str(exc), problems=[Problem("frame", str(frame))]) from exc
    return Response(image, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame}/rendered",
    summary="WADO-RS 渲染帧 (JPEG/PNG)",
)
def rendered_frame(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    frame: int,
    request: Request,
    principal: Caller,
    c: Services,
) -> Response:
    rows = c.imaging.instances_for_retrieve(
        study_uid, series_uid, sop_uid, _own_institution(principal)
    )
    return rendered_response(c, principal, request, rows, frame)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/rendered",
    summary="WADO-RS 渲染实例 (JPEG/PNG)",
)
def rendered_instance(
    study_uid: str, series_uid: str, sop_uid: str, request: Request, principal: Caller, c: Services
) -> Response:
    rows = c.imaging.instances_for_retrieve(
        study_uid, series_uid, sop_uid, _own_institution(principal)
    )
    return rendered_response(c, principal, request, rows, 1)


@router.get("/studies/{study_uid}/series/{series_uid}/thumbnail", summary="序列缩略图")
def series_thumbnail(
    study_uid: str, series_uid: str, request: Request, principal: Caller, c: Services
) -> Response:
    """PS3.18 10.4.1 (thumbnail): the middle image of the series, 128 px by default."""
    rows = c.imaging.instances_for_retrieve(study_uid, series_uid, "", _own_institution(principal))
    middle = rows[len(rows) // 2]
    return rendered_response(c, principal, request, [middle], 1, default_viewport=(128, 128))


__all__ = ["NotFound", "reader", "router", "stow_caller"]
