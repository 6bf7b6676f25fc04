"""FHIR R4 bulk import (``POST /fhir/$import``) and transaction details as a walk
through the endpoint found them: a UTF-8 byte order mark, compressed bodies, resent
lines counted as saved, a line without its newline, lines of Observations; a misspelt
resourceType, the message of a single DiagnosticReport refused, conditional creates
(``request.ifNoneExist``, R4 http.html#ccreate) and a search on the report's own code."""

from __future__ import annotations

import copy
import gzip
import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from huren.adapters.db.tables import result
from huren.adapters.fhir.ingest import parse_report
from huren.api.routes import fhir as fhir_route
from huren.bootstrap import Container
from huren.domain.errors import ValidationFailed
from tests.fixtures.fhir.builders import (
    LIVER_PANEL,
    LOINC,
    contained_report,
    dumps,
    lab_bundle,
    local_system,
    observation,
)
from tests.fixtures.world import HOSP_A

FHIR = "application/fhir+json"
NDJSON = {"Content-Type": "application/fhir+ndjson"}
REPORT_NO = f"https://huren.example/fhir/sid/report-no/{HOSP_A}"


@pytest.fixture
def client(lis_client: TestClient) -> TestClient:
    return lis_client


def _count(c: Container) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(result)).scalar_one())


def ndjson(*reports: dict[str, Any]) -> bytes:
    return b"\n".join(dumps(r) for r in reports) + b"\n"


def bulk(client: TestClient, body: bytes | Iterator[bytes], **headers: str) -> dict[str, Any]:
    r = client.post("/fhir/$import", content=body, headers=NDJSON | headers)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def summary(answer: dict[str, Any]) -> str:
    text: str = answer["issue"][0]["diagnostics"]
    return text


def errors(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in answer["issue"] if i["severity"] == "error"]


def post(client: TestClient, bundle: dict[str, Any]) -> Any:
    return client.post(
        "/fhir", content=json.dumps(bundle, ensure_ascii=False), headers={"Content-Type": FHIR}
    )


def report_entry(bundle: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = next(
        e for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    return entry


def answered(response: Any, kind: str = "DiagnosticReport") -> dict[str, Any]:
    assert response.status_code == 200, response.text
    entry: dict[str, Any] = next(
        e["response"]
        for e in response.json()["entry"]
        if e["response"].get("location", "").startswith(f"{kind}/")
    )
    return entry


def expressions(response: Any) -> list[str]:
    return [x for i in response.json()["issue"] for x in i.get("expression", [])]


# ---------------------------------------------------------------- $import
def test_a_byte_order_mark_at_the_start_of_the_body_is_not_an_error(
    client: TestClient, world: Container
) -> None:
    body = b"\xef\xbb\xbf" + ndjson(*(contained_report(f"JY-BOM-{k}", n_obs=2) for k in range(3)))
    answer = bulk(client, body)
    assert errors(answer) == []
    assert _count(world) == 3


@pytest.mark.parametrize("encoded", ["header", "magic"])
def test_a_gzip_body_is_refused_naming_the_encoding_or_the_body(
    client: TestClient, world: Container, encoded: str
) -> None:
    body = gzip.compress(ndjson(*(contained_report(f"JY-GZ-{k}", n_obs=2) for k in range(3))))
    headers = NDJSON | ({"Content-Encoding": "gzip"} if encoded == "header" else {})
    r = client.post("/fhir/$import", content=body, headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert expressions(r) == ["Content-Encoding" if encoded == "header" else "body"]
    assert "gzip" in r.text
    assert "解压" in r.text or "未压缩" in r.text
    assert _count(world) == 0


def test_a_gzip_encoded_bundle_is_refused_naming_the_encoding(
    client: TestClient, world: Container
) -> None:
    body = gzip.compress(json.dumps(lab_bundle("JY-GZ-B", n_obs=2)).encode())
    headers = {"Content-Type": FHIR, "Content-Encoding": "gzip"}
    r = client.post("/fhir", content=body, headers=headers)
    assert r.status_code == 415, r.text
    assert expressions(r) == ["Content-Encoding"]
    assert _count(world) == 0


def test_a_zip_body_is_refused_naming_the_body(client: TestClient, world: Container) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("reports.ndjson", ndjson(contained_report("JY-ZIP-1", n_obs=2)))
    r = client.post("/fhir/$import", content=buf.getvalue(), headers=NDJSON)
    assert r.status_code == 415, r.text
    assert expressions(r) == ["body"]
    assert "ZIP" in r.text
    assert _count(world) == 0


def test_a_resent_body_is_counted_as_already_stored_not_as_saved(
    client: TestClient, world: Container
) -> None:
    body = ndjson(*(contained_report(f"JY-RS-{k}", n_obs=2) for k in range(3)))
    first = summary(bulk(client, body))
    assert "保存结果 3 份" in first
    assert "已存在且未变 0 份" in first
    again = summary(bulk(client, body))
    assert "保存结果 0 份" in again, again
    assert "已存在且未变 3 份" in again, again
    assert _count(world) == 3


def test_lines_split_across_chunks_are_read_whole(client: TestClient, world: Container) -> None:
    body = ndjson(*(contained_report(f"JY-CH-{k}", n_obs=3) for k in range(3))).rstrip(b"\n")
    chunks = iter([body[i : i + 7] for i in range(0, len(body), 7)])  # no final newline
    answer = bulk(client, chunks)
    assert errors(answer) == [], answer
    assert "共 3 行" in summary(answer)
    assert _count(world) == 3


def test_a_line_longer_than_a_resource_may_be_is_reported_and_the_rest_stored(
    client: TestClient, world: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fhir_route, "MAX_LINE", 20_000)
    good = [dumps(contained_report(f"JY-LL-{k}", n_obs=2)) for k in range(2)]
    long_line = b'{"resourceType":"DiagnosticReport","text":"' + b"x" * 50_000 + b'"}'
    body = good[0] + b"\n" + long_line + b"\n" + good[1] + b"\n"
    chunks = iter([body[i : i + 4096] for i in range(0, len(body), 4096)])
    answer = bulk(client, chunks)
    [issue] = errors(answer)
    assert issue["expression"] == ["line 2"]
    assert "超过" in issue["diagnostics"]
    assert "共 3 行" in summary(answer)
    assert _count(world) == 2


def test_an_observation_line_says_it_cannot_be_loaded_alone_and_what_to_send(
    client: TestClient, world: Container
) -> None:
    obs = observation(0, HOSP_A, LIVER_PANEL[0])
    answer = bulk(client, ndjson(obs, contained_report("JY-OB-1", n_obs=2)))
    [issue] = errors(answer)
    assert issue["expression"] == ["line 1: resourceType"]
    text = issue["diagnostics"]
    assert "Observation" in text
    assert "contained" in text
    assert "transaction Bundle" in text
    assert "实际为 Observation" in text
    assert _count(world) == 1


# ---------------------------------------------------------------- ingest messages
def test_a_misspelt_resource_type_is_named_at_its_entry(
    client: TestClient, world: Container
) -> None:
    bundle = lab_bundle("JY-TYPO-1", n_obs=2)
    assert bundle["entry"][2]["resource"]["resourceType"] == "Observation"
    bundle["entry"][2]["resource"]["resourceType"] = "Obsrvation"
    r = post(client, bundle)
    assert r.status_code == 422, r.text
    issues = r.json()["issue"]
    named = [i for i in issues if i.get("expression") == ["Bundle.entry[2].resource.resourceType"]]
    assert named, issues
    assert "Obsrvation" in named[0]["diagnostics"]
    assert _count(world) == 0


def test_a_single_report_refused_is_called_a_diagnostic_report_not_a_bundle() -> None:
    bad = contained_report("JY-ONE-1", national_id="110101198001011230", n_obs=1)
    with pytest.raises(ValidationFailed) as refused:
        parse_report(dumps(bad))
    assert refused.value.message.startswith("DiagnosticReport 未通过校验")
    assert any("identifier" in p.field for p in refused.value.problems)


# ---------------------------------------------------------------- ifNoneExist
def conditional(report_no: str, condition: str, **kw: Any) -> dict[str, Any]:
    bundle = lab_bundle(report_no, n_obs=2, **kw)
    report_entry(bundle)["request"]["ifNoneExist"] = condition
    return bundle


def test_if_none_exist_naming_an_existing_report_returns_it_without_creating(
    client: TestClient, world: Container
) -> None:
    first = answered(post(client, lab_bundle("JY-CC-A", n_obs=2)))
    assert first["status"].startswith("201")
    r = post(client, conditional("JY-CC-B", f"identifier={REPORT_NO}|JY-CC-A"))
    again = answered(r)
    assert again["status"].startswith("200")
    assert again["location"] == first["location"]
    assert _count(world) == 1
    found = client.get("/fhir/DiagnosticReport", params={"identifier": "JY-CC-B"}).json()
    assert found.get("total", 0) == 0
    assert not found.get("entry")


def test_if_none_exist_that_matches_nothing_creates_and_its_own_number_is_a_resend(
    client: TestClient, world: Container
) -> None:
    r = post(client, conditional("JY-CC-C", f"identifier={REPORT_NO}|JY-CC-NONE"))
    assert answered(r)["status"].startswith("201")
    own = conditional("JY-CC-D", f"identifier={REPORT_NO}|JY-CC-D")
    created = answered(post(client, own))
    assert created["status"].startswith("201")
    assert answered(post(client, own))["location"] == created["location"]  # a resend
    assert _count(world) == 2


def test_if_none_exist_matching_several_reports_is_412(
    client: TestClient, world: Container
) -> None:
    answered(post(client, lab_bundle("JY-CC-M", n_obs=2)))
    answered(post(client, lab_bundle("JY-CC-M", n_obs=2, local_code="LIS-OTHER")))
    r = post(client, conditional("JY-CC-E", f"identifier={REPORT_NO}|JY-CC-M"))
    assert r.status_code == 412, r.text
    assert expressions(r) == ["Bundle.entry[4].request.ifNoneExist"]
    assert _count(world) == 2


@pytest.mark.parametrize(
    ("where", "condition"),
    [
        ("report", "_lastUpdated=gt2026-01-01"),
        ("report", "identifier=http://example.org/other|JY-CC-A"),
        ("observation", "identifier=http://example.org/obs|1"),
        ("patient", "identifier=http://example.org/mrn|X1"),
    ],
)
def test_if_none_exist_not_served_is_refused_naming_it(
    client: TestClient, world: Container, where: str, condition: str
) -> None:
    bundle = lab_bundle("JY-CC-F", n_obs=2)
    index = {"patient": 0, "observation": 2, "report": 4}[where]
    bundle["entry"][index]["request"]["ifNoneExist"] = condition
    r = post(client, bundle)
    assert r.status_code == 422, r.text
    assert f"Bundle.entry[{index}].request.ifNoneExist" in expressions(r)
    assert _count(world) == 0


def test_if_none_exist_on_the_patients_own_identifier_is_served(
    client: TestClient, world: Container
) -> None:
    bundle = lab_bundle("JY-CC-G", n_obs=2)
    ident = bundle["entry"][0]["resource"]["identifier"][0]
    bundle["entry"][0]["request"]["ifNoneExist"] = f"identifier={ident['system']}|{ident['value']}"
    assert answered(post(client, bundle))["status"].startswith("201")
    assert _count(world) == 1


# ---------------------------------------------------------------- search on the report's code
def test_a_report_is_found_by_its_own_code_loinc_or_local(
    client: TestClient, world: Container
) -> None:
    bundle = lab_bundle("JY-CODE-1", n_obs=2)
    rid = answered(post(client, bundle))["location"].split("/")[1]
    loinc_only = copy.deepcopy(lab_bundle("JY-CODE-2", n_obs=2))
    report_entry(loinc_only)["resource"]["code"] = {
        "coding": [{"system": LOINC, "code": "24325-3"}]
    }
    rid2 = answered(post(client, loinc_only))["location"].split("/")[1]
    for token, wanted in [
        (f"{LOINC}|24325-3", {rid, rid2}),
        (f"{local_system(HOSP_A)}|LIS-LFT", {rid}),
        (f"{LOINC}|1742-6", {rid, rid2}),  # an Observation's LOINC, as before
    ]:
        found = client.get("/fhir/DiagnosticReport", params={"code": token}).json()
        ids = {
            e["resource"]["id"] for e in found.get("entry", []) if e["search"]["mode"] == "match"
        }
        assert ids == wanted, token


def test_the_if_none_exist_header_of_a_single_report_is_honoured_or_refused(
    client: TestClient, world: Container
) -> None:
    # R4 http.html#ccreate: HAPI's conditional create of one resource sends the header.
    def create(report_no: str, condition: str) -> Any:
        return client.post(
            "/fhir/DiagnosticReport",
            content=dumps(contained_report(report_no, n_obs=2)),
            headers={"Content-Type": FHIR, "If-None-Exist": condition},
        )

    first = create("JY-HDR-A", f"identifier={REPORT_NO}|JY-HDR-A")  # its own number
    assert first.status_code == 201
    found = create("JY-HDR-B", f"identifier={REPORT_NO}|JY-HDR-A")
    assert found.status_code == 200
    assert found.headers["Location"] == first.headers["Location"]
    assert _count(world) == 1
    assert create("JY-HDR-C", f"identifier={REPORT_NO}|JY-HDR-NONE").status_code == 201
    refused = create("JY-HDR-D", "patient=Patient/1")
    assert refused.status_code == 422
    assert "If-None-Exist" in expressions(refused)
    assert _count(world) == 2


def test_the_if_none_exist_header_matching_several_reports_is_412_naming_it(
    client: TestClient, world: Container
) -> None:
    answered(post(client, lab_bundle("JY-HDR-M", n_obs=2)))
    answered(post(client, lab_bundle("JY-HDR-M", n_obs=2, local_code="LIS-OTHER")))
    r = client.post(
        "/fhir/DiagnosticReport",
        content=dumps(contained_report("JY-HDR-N", n_obs=2)),
        headers={"Content-Type": FHIR, "If-None-Exist": f"identifier={REPORT_NO}|JY-HDR-M"},
    )
    assert r.status_code == 412
    assert expressions(r) == ["If-None-Exist"]
