"""Imports every table module so that ``metadata`` holds the whole schema."""

from huren.adapters.db import (
    tables,
    tables_governance,  # QC lifecycle and monitoring aggregates
    tables_imaging,  # studies, series, instances, DICOM events
    tables_recognition,  # CDS Hooks cards
    tables_sharing,  # corrections, inbox, patient portal
)
from huren.adapters.db.tables import metadata

__all__ = [
    "metadata",
    "tables",
    "tables_governance",
    "tables_imaging",
    "tables_recognition",
    "tables_sharing",
]
