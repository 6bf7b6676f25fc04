"""fhirclient (SMART on FHIR's R4 client) as a hospital system reading results back: the
R4 example observation-example-bloodpressure, sent in a transaction Bundle, comes back
from ``GET /fhir/Observation?patient=…`` and from ``GET /fhir/DiagnosticReport?
patient=…&_include=DiagnosticReport:result`` as one Observation with its two components,
as sent (R4 observation.html, Observation.component), not as two Observations."""

from __future__ import annotations

from huren.bootstrap import Container
from tests.e2e.test_fhir_api import api_key
from tests.fixtures.world import HOSP_A
from tests.integration.test_fhir_realworld import fixture, transaction

LOINC = "http://loinc.org"


def test_fhirclient_reads_a_blood_pressure_back_as_one_observation_with_components(
    world: Container,
) -> None:
    from fhirclient import client as fhir_client
    from fhirclient.models.bundle import Bundle
    from fhirclient.models.diagnosticreport import DiagnosticReport
    from fhirclient.models.observation import Observation

    from tests.e2e.live import serve

    key = api_key(world, "lis-peer", HOSP_A)
    with serve(world) as base:
        smart = fhir_client.FHIRClient(settings={"app_id": "lis", "api_base": f"{base}/fhir/"})
        smart.server.session.headers["Authorization"] = f"ApiKey {key}"
        bp = fixture("observation-example-bloodpressure.json")
        answered = Bundle(smart.server.post_json("", transaction({"urn:uuid:bp": bp})).json())
        locations = [e.response.location or "" for e in answered.entry]
        patient = next(loc for loc in locations if loc.startswith("Patient/"))
        report_id = next(loc for loc in locations if loc.startswith("DiagnosticReport/")).split(
            "/"
        )[1]

        searched = list(
            Observation.where(struct={"patient": patient}).perform_resources_iter(smart.server)
        )
        (obs,) = [o for o in searched if o.id.startswith(f"{report_id}-")]
        assert obs.code.coding[0].code == "85354-9"
        assert obs.valueQuantity is None
        assert [(c.code.coding[-1].system, c.code.coding[-1].code) for c in obs.component] == [
            (LOINC, "8480-6"),
            (LOINC, "8462-4"),
        ]
        assert [(c.valueQuantity.value, c.valueQuantity.code) for c in obs.component] == [
            (107, "mm[Hg]"),
            (60, "mm[Hg]"),
        ]

        search = DiagnosticReport.where(struct={"patient": patient}).include("result")
        found = list(search.perform_resources_iter(smart.server))
        (report,) = [r for r in found if isinstance(r, DiagnosticReport)]
        assert [ref.reference for ref in report.result] == [f"Observation/{obs.id}"]
        (included,) = [r for r in found if isinstance(r, Observation)]
        assert included.as_json() == obs.as_json()
        assert Observation.read(obs.id, smart.server).as_json() == obs.as_json()
