"""Imaging tables (R3 imaging, issue 4): the index of DICOM studies, series and instances
received by C-STORE or STOW-RS, the C-MOVE destinations, and the ``dicom_event`` log of
refused associations and instances that the integration engineer reads.

The DICOM files themselves are kept on disk, content-addressed (``adapters/dicom/store``);
``imaging_instance.content_hash`` is the file's SHA-256 and its path in the store.

Patient identifiers are never stored in clear (R4): ``patient_hash`` is the keyed lookup
hash of the DICOM PatientID as the producing institution's 院内病历号 (kind ``mrn``,
assigner = institution), the same hash ``patient_identifier.value_hash`` holds, so a study
is linked to its report's patient without reading the value; ``patient_global_hash`` is a
hash of PatientID alone for QIDO-RS matching; names and IDs are kept encrypted and masked.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from huren.adapters.db.tables import Id, UtcDateTime, metadata

imaging_study = Table(
    "imaging_study",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("institution_code", String(32), ForeignKey("institution.code"), nullable=False),
    Column("patient_hash", String(64), nullable=False),
    Column("patient_global_hash", String(64), nullable=False, index=True),
    Column("patient_id_enc", Text, nullable=False, default=""),
    Column("patient_id_masked", String(64), nullable=False, default=""),
    Column("patient_name_enc", Text, nullable=False, default=""),
    Column("patient_name_masked", String(64), nullable=False, default=""),
    Column("patient_sex", String(1), nullable=False, default=""),
    Column("patient_birth_date", String(8), nullable=False, default=""),
    Column("accession_number", String(64), nullable=False, default=""),
    Column("study_id", String(16), nullable=False, default=""),
    Column("study_date", Date, nullable=True),
    Column("study_time", String(16), nullable=False, default=""),
    Column("study_description", String(200), nullable=False, default=""),
    Column("modalities", String(64), nullable=False, default=""),  # backslash separated
    Column("series_count", Integer, nullable=False, default=0),
    Column("instance_count", Integer, nullable=False, default=0),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_imaging_study_accession", "institution_code", "accession_number"),
    Index("ix_imaging_study_patient", "institution_code", "patient_hash"),
    Index("ix_imaging_study_date", "study_date"),
    # QIDO-RS searches are scoped to the caller's institution and listed newest first
    # (study_date DESC, id DESC): date ranges, modality filters and paging walk this
    # index in order instead of sorting or skipping other institutions' studies.
    Index("ix_imaging_study_institution_date", "institution_code", "study_date", "id"),
)

imaging_series = Table(
    "imaging_series",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("study_id", Id, ForeignKey("imaging_study.id"), nullable=False, index=True),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("modality", String(16), nullable=False, default=""),
    Column("series_number", Integer, nullable=True),
    Column("series_description", String(200), nullable=False, default=""),
    Column("body_part", String(64), nullable=False, default=""),
    Column("slice_thickness", Float, nullable=True),
    Column("derived", Boolean, nullable=False, default=False),
    Column("image_type", String(100), nullable=False, default=""),
    Column("instance_count", Integer, nullable=False, default=0),
    Column("received_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

imaging_instance = Table(
    "imaging_instance",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("study_id", Id, ForeignKey("imaging_study.id"), nullable=False, index=True),
    Column("series_id", Id, ForeignKey("imaging_series.id"), nullable=False, index=True),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("transfer_syntax", String(64), nullable=False),
    Column("instance_number", Integer, nullable=True),
    Column("rows", Integer, nullable=True),
    Column("columns", Integer, nullable=True),
    Column("number_of_frames", Integer, nullable=False, default=1),
    Column("slice_thickness", Float, nullable=True),
    Column("image_type", String(100), nullable=False, default=""),
    Column("content_hash", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("source", String(8), nullable=False),  # dimse | stow
    Column("calling_ae", String(16), nullable=False, default=""),
    Column("received_at", UtcDateTime(), nullable=False),
)

# C-MOVE destinations (PS3.4 C.4.2: the SCP opens a new association to the Move
# Destination AE, which it must know by AE title → host and port).
dicom_destination = Table(
    "dicom_destination",
    metadata,
    Column("ae_title", String(16), primary_key=True),
    Column("institution_code", String(32), ForeignKey("institution.code"), nullable=False),
    Column("host", String(200), nullable=False),
    Column("port", Integer, nullable=False),
)

# What the engineer's page shows: refused associations and instances, conflicts.
dicom_event = Table(
    "dicom_event",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("channel", String(8), nullable=False),  # dimse | stow
    Column("kind", String(32), nullable=False),  # association_rejected | instance_rejected …
    Column("calling_ae", String(16), nullable=False, default=""),
    Column("peer", String(64), nullable=False, default=""),
    Column("institution_code", String(32), nullable=True, index=True),
    Column("sop_uid", String(64), nullable=False, default=""),
    Column("status", Integer, nullable=True),  # DICOM status (PS3.4 B.2.3) or HTTP status
    Column("message", Text, nullable=False, default=""),
    Index("ix_dicom_event_at", "at"),
)
