"""Every router the app serves, in one list. An area adds its module here."""

from fastapi import APIRouter

from huren.api.routes import (
    auth,
    cdshooks,
    corrections,
    credentials,
    dashboard,
    dicomweb,
    fhir,
    health,
    hl7v2,
    imaging,
    inbox,
    insurer,
    integration,
    masterdata,
    monitoring,
    pages_catalog,
    patient_portal,
    public,
    qc,
    recognition,
    retrieval,
    viewer,
    workbench,
)

# In the order requests are matched. FastAPI (0.137 and later) tries each included router
# in turn and each of its routes with a few microseconds of Python, about 170 routes in
# all: a path in the last router paid some 250 µs before its handler ran. So the calls
# hospital systems make by the thousand come first (order-select, the REST check, FHIR,
# HL7 over HTTP, DICOMweb), the pages after. No two routers share a literal first path
# segment that a pattern of another could also match, so the order changes no answer.
ROUTERS: list[APIRouter] = [
    cdshooks.router,
    recognition.router,
    fhir.router,
    hl7v2.router,
    dicomweb.router,
    workbench.router,
    health.router,
    auth.router,
    masterdata.router,
    pages_catalog.router,
    integration.router,
    credentials.router,
    imaging.router,
    viewer.router,
    retrieval.router,
    corrections.router,
    inbox.router,
    patient_portal.router,
    insurer.router,
    qc.router,
    monitoring.router,
    dashboard.router,
    public.router,
]
