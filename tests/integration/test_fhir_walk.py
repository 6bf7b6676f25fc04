"""FHIR R4 at /fhir as a HAPI FHIR client or a Mirth channel uses it: content
negotiation (R4 http.html#mime-type), HEAD and the headers of a read, paging that a
client can follow (``next`` links keeping the parameters, pages of at most ``_count``),
search parameters, modifiers and prefixes as clients send them (R4 search.html), and a
CapabilityStatement that says what is served, no more and no less."""

from __future__ import annotations

import json
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle as R4BBundle

from tests.fixtures.fhir.builders import NATIONAL_ID, lab_bundle
from tests.fixtures.results import LI_SI_ID, ZHANG_SAN_ID

FHIR = "application/fhir+json"


@pytest.fixture
def client(lis_client: TestClient) -> TestClient:
    return lis_client


def post(client: TestClient, bundle: dict[str, Any]) -> dict[str, Any]:
    r = client.post(
        "/fhir", content=json.dumps(bundle, ensure_ascii=False), headers={"Content-Type": FHIR}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def locations(response: dict[str, Any], kind: str) -> list[str]:
    return [
        e["response"]["location"].split("/_history")[0]
        for e in response["entry"]
        if e["response"].get("location", "").startswith(f"{kind}/")
    ]


def patient_of(response: dict[str, Any]) -> str:
    return locations(response, "Patient")[0]


def search(client: TestClient, url: str, **kw: Any) -> dict[str, Any]:
    r = client.get(url, **kw)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    R4BBundle.model_validate(body)  # a valid R4 searchset, links and outcome entry included
    return body


def link(body: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in body.get("link", []) if x["relation"] == relation), None)


def matches(body: dict[str, Any]) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in body["entry"]
        if e["search"]["mode"] == "match"
    ]


def query_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query)


# ---------------------------------------------------------------- formats
def test_xml_asked_for_is_406_and_hapi_default_accept_gets_json(client: TestClient) -> None:
    rid = locations(post(client, lab_bundle(n_obs=1)), "DiagnosticReport")[0]
    for kw in (
        {"params": {"_format": "xml"}},
        {"params": {"_format": "application/fhir+xml"}},
        {"headers": {"Accept": "application/fhir+xml"}},
        {"headers": {"Accept": "application/fhir+json; fhirVersion=3.0"}},
    ):
        r = client.get(f"/fhir/{rid}", **kw)
        assert r.status_code == 406, (kw, r.text)
        assert r.headers["content-type"].startswith(FHIR)
        assert r.json()["issue"][0]["code"] == "not-supported"
    plus = client.get(f"/fhir/{rid}?_format=application/fhir+json")  # "+" unescaped
    assert plus.status_code == 200, plus.text
    r = client.get("/fhir/metadata", params={"_format": "xml"})
    assert (r.status_code, r.json()["issue"][0]["expression"]) == (406, ["_format"])
    # HAPI's default when no encoding is set; a browser's; fhirclient's; _format=json.
    hapi = "application/fhir+xml;q=1.0, application/fhir+json;q=1.0, application/xml+fhir;q=0.9"
    for kw in (
        {"headers": {"Accept": hapi}},
        {"headers": {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}},
        {"headers": {"Accept": "application/json"}},
        {"params": {"_format": "json"}},
    ):
        r = client.get(f"/fhir/{rid}", **kw)
        assert r.status_code == 200, (kw, r.text)


def test_a_body_in_xml_is_415_naming_the_content_type(client: TestClient) -> None:
    r = client.post("/fhir", content=b"<Bundle/>", headers={"Content-Type": "application/fhir+xml"})
    assert r.status_code == 415
    assert r.json()["issue"][0]["expression"] == ["Content-Type"]
    ok = client.post(
        "/fhir",
        content=json.dumps(lab_bundle(n_obs=1)),
        headers={"Content-Type": "application/fhir+json; fhirVersion=4.0; charset=utf-8"},
    )
    assert ok.status_code == 200, ok.text


# ---------------------------------------------------------------- read headers, HEAD
def test_read_has_etag_and_last_modified_and_head_answers_without_body(
    client: TestClient,
) -> None:
    sent = post(client, lab_bundle(n_obs=2))
    rid = locations(sent, "DiagnosticReport")[0]
    oid = locations(sent, "Observation")[0]
    for path in (f"/fhir/{rid}", f"/fhir/{rid}/_history/1", f"/fhir/{oid}"):
        r = client.get(path)
        assert r.headers["etag"] == 'W/"1"'
        modified = parsedate_to_datetime(r.headers["last-modified"])
        assert modified == datetime.fromisoformat(r.json()["meta"]["lastUpdated"])
        head = client.head(path)
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["etag"] == r.headers["etag"]
        assert head.headers["content-type"].startswith(FHIR)
    assert client.head("/fhir/metadata").status_code == 200
    assert client.head("/fhir/DiagnosticReport/999999").status_code == 404


def test_update_and_delete_are_405_operation_outcomes(client: TestClient) -> None:
    rid = locations(post(client, lab_bundle(n_obs=1)), "DiagnosticReport")[0]
    for method in ("PUT", "DELETE", "PATCH"):
        r = client.request(method, f"/fhir/{rid}", content=b"{}", headers={"Content-Type": FHIR})
        assert r.status_code == 405, (method, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Foo/1").status_code == 404


# ---------------------------------------------------------------- paging
def test_report_pages_follow_next_links_keeping_the_parameters(client: TestClient) -> None:
    sent = post(client, lab_bundle("JY-PAGE", n_reports=5, n_obs=1))
    pid = patient_of(sent)
    first = search(
        client, "/fhir/DiagnosticReport", params={"patient": pid, "_count": "2", "_sort": "-date"}
    )
    seen = matches(first)
    assert len(seen) == 2
    assert "total" not in first  # not known from this page; never the page's size
    url = link(first, "next")
    pages = 1
    while url is not None:
        assert ("patient", pid) in query_of(url)
        assert ("_count", "2") in query_of(url)
        page = search(client, url)
        seen += matches(page)
        url = link(page, "next")
        pages += 1
    assert pages == 3
    assert page["total"] == 5
    # _count=0 asks for no entries; the total is not 0 when there are matches.
    none = search(client, "/fhir/DiagnosticReport", params={"patient": pid, "_count": "0"})
    assert none["entry"] == []
    assert none.get("total") != 0
    assert sorted(seen) == sorted(locations(sent, "DiagnosticReport"))


def test_observation_pages_hold_at_most_count_and_reach_every_observation(
    client: TestClient,
) -> None:
    sent = post(client, lab_bundle("JY-OBS", n_reports=2, n_obs=5))
    first = search(client, "/fhir/Observation", params={"patient": patient_of(sent), "_count": "3"})
    seen = matches(first)
    url = link(first, "next")
    while url is not None:
        page = search(client, url)
        assert len(matches(page)) <= 3
        seen += matches(page)
        url = link(page, "next")
    assert len(first["entry"]) == 3
    assert sorted(seen) == sorted(locations(sent, "Observation"))
    everything = search(client, "/fhir/Observation", params={"patient": patient_of(sent)})
    assert everything["total"] == 10
    assert link(everything, "next") is None


# ---------------------------------------------------------------- parameters
def test_unknown_parameters_are_ignored_saying_so_or_refused_when_strict(
    client: TestClient,
) -> None:
    pid = patient_of(post(client, lab_bundle(n_obs=1)))
    params = {"patient": pid, "status": "final", "_sort": "date"}
    lenient = search(client, "/fhir/DiagnosticReport", params=params)
    assert query_of(link(lenient, "self") or "") == [("patient", pid)]
    outcome = [e["resource"] for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert [i["expression"] for i in outcome[0]["issue"]] == [["status"], ["_sort"]]
    strict = client.get(
        "/fhir/DiagnosticReport", params=params, headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code == 422
    assert [i["expression"] for i in strict.json()["issue"]] == [["status"], ["_sort"]]


def test_a_modifier_not_served_is_refused_not_dropped(client: TestClient) -> None:
    # Dropped, subject:missing=false or code:not would have answered every patient's reports.
    post(client, lab_bundle(n_obs=1))
    for name, value in (("subject:missing", "false"), ("code:not", "ALT"), ("date:exact", "2026")):
        r = client.get("/fhir/DiagnosticReport", params={name: value})
        assert r.status_code == 422, (name, r.text)
        assert r.json()["issue"][0]["expression"] == [name]


def test_patient_by_type_modifier_identifier_modifier_and_absolute_url(
    client: TestClient,
) -> None:
    zhang = post(client, lab_bundle("JY-Z", n_obs=1))
    post(client, lab_bundle("JY-L", n_obs=1, national_id=LI_SI_ID))
    pid = patient_of(zhang).removeprefix("Patient/")
    want = locations(zhang, "DiagnosticReport")
    for params in (
        {"subject:Patient": pid},
        {"patient:identifier": f"{NATIONAL_ID}|{ZHANG_SAN_ID}"},
        {"subject": f"http://testserver/fhir/Patient/{pid}"},
        {"patient": f"Patient/{pid}", "subject.identifier": f"{NATIONAL_ID}|{ZHANG_SAN_ID}"},
    ):
        assert matches(search(client, "/fhir/DiagnosticReport", params=params)) == want, params
    # Two patient parameters both hold (R4 search.html#combining), not either.
    li = search(
        client, "/fhir/DiagnosticReport", params={"patient:identifier": f"{NATIONAL_ID}|{LI_SI_ID}"}
    )
    assert len(matches(li)) == 1
    both = [("patient", pid), ("patient:identifier", f"{NATIONAL_ID}|{LI_SI_ID}")]
    assert matches(search(client, "/fhir/DiagnosticReport", params=both)) == []
    by_id = {"_id": want[0].removeprefix("DiagnosticReport/")}
    assert matches(search(client, "/fhir/DiagnosticReport", params=by_id)) == want
    other = by_id | {"patient:identifier": f"{NATIONAL_ID}|{LI_SI_ID}"}
    assert matches(search(client, "/fhir/DiagnosticReport", params=other)) == []


def test_include_of_the_subject_gives_each_patient_once(client: TestClient) -> None:
    sent = post(client, lab_bundle("JY-INC", n_reports=2, n_obs=2))
    pid = patient_of(sent)
    for url, include in (
        ("/fhir/DiagnosticReport", "DiagnosticReport:subject"),
        ("/fhir/DiagnosticReport", "DiagnosticReport:patient"),
        ("/fhir/Observation", "Observation:patient"),
    ):
        body = search(client, url, params={"patient": pid, "_include": include})
        included = [
            f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in body["entry"]
            if e["search"]["mode"] == "include"
        ]
        assert included == [pid], include


def test_dates_at_the_precision_given_and_prefixes_as_r4_defines_them(
    client: TestClient,
) -> None:
    # The report was performed 2026-06-13T08:10:00+08:00.
    post(client, lab_bundle(n_obs=1))
    hits = {
        "2026": 1,
        "2026-06": 1,
        "2026-05": 0,
        "le2026-06-13T08:10:00+08:00": 1,
        "lt2026-06-13T08:10:00+08:00": 0,
        "gt2026-06-13T08:10:00+08:00": 0,
        "eq2026-06-13T08:10+08:00": 1,
        "2026-06-13T00:10:00Z": 1,
        "ge2026-06-13T00:10:01Z": 0,
    }
    got = {
        d: len(matches(search(client, "/fhir/DiagnosticReport", params={"date": d}))) for d in hits
    }
    assert got == hits
    both = [("date", "ge2026-06-01"), ("date", "ge2026-06-14")]
    assert matches(search(client, "/fhir/DiagnosticReport", params=both)) == []
    bad = client.get("/fhir/DiagnosticReport", params={"date": "bad"})
    assert "无效的日期: bad" in bad.json()["issue"][0]["diagnostics"]
    r = client.get("/fhir/DiagnosticReport", params={"date": "ne2026-06-13"})
    assert r.status_code == 422
    assert "不支持的日期前缀 ne" in r.json()["issue"][0]["diagnostics"]


def test_report_number_with_its_system_is_that_institutions(client: TestClient) -> None:
    post(client, lab_bundle("JY-NO-1", n_obs=1))
    hit = {"identifier": "https://huren.example/fhir/sid/report-no/H130100001|JY-NO-1"}
    miss = {"identifier": "https://huren.example/fhir/sid/report-no/H130600001|JY-NO-1"}
    assert len(matches(search(client, "/fhir/DiagnosticReport", params=hit))) == 1
    assert matches(search(client, "/fhir/DiagnosticReport", params=miss)) == []


# ---------------------------------------------------------------- CapabilityStatement
def test_capability_statement_lists_what_is_served_and_only_that(client: TestClient) -> None:
    sent = post(client, lab_bundle(n_obs=1))
    pid = patient_of(sent)
    (rid,) = locations(sent, "DiagnosticReport")
    cs = client.get("/fhir/metadata").json()
    assert cs["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in cs["rest"][0]["resource"]}
    strict = {"Prefer": "handling=strict"}
    samples = {
        "reference": pid,
        "token": "http://loinc.org|1742-6",
        "date": "ge2026-01-01",
    }
    for kind in ("DiagnosticReport", "Observation"):
        for p in resources[kind]["searchParam"]:
            value = samples[p["type"]]
            if p["name"] == "identifier":
                value = "JY202606130001"
            if p["name"] == "_id":
                value = rid.removeprefix("DiagnosticReport/")
            r = client.get(f"/fhir/{kind}", params={p["name"]: value}, headers=strict)
            assert r.status_code == 200, (kind, p["name"], r.text)
            if p["name"] != "component-code":  # the Observation sent has no components
                assert matches(r.json()), (kind, p["name"])
        for include in resources[kind]["searchInclude"]:
            r = client.get(
                f"/fhir/{kind}", params={"patient": pid, "_include": include}, headers=strict
            )
            assert r.status_code == 200, (kind, include, r.text)
    # What has no versions says so: a Patient's read has no versionId, a Binary no _history.
    for kind in ("Patient", "Binary"):
        assert (resources[kind]["versioning"], resources[kind]["readHistory"]) == (
            "no-version",
            False,
        )
    patient = client.get(f"/fhir/{pid}").json()
    assert "meta" not in patient
