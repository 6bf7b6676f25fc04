"""Roles and who may do what. Every account is bound to an institution, a jurisdiction or
(for patients) a patient record; what it sees is limited to that reach."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    CLINICIAN = "clinician"  # 接诊医师
    INSTITUTION_ADMIN = "institution_admin"  # 机构管理员
    INTEGRATION = "integration"  # 接口系统 (HIS/LIS/RIS/PACS interface engine, API key)
    QC_CENTRE = "qc_centre"  # 质控中心 / 临床检验中心
    REGULATOR = "regulator"  # 卫生健康行政部门
    INSURER = "insurer"  # 医保部门
    PATIENT = "patient"  # 患者
    OPERATOR = "operator"  # 平台运维


ROLE_LABELS: Mapping[Role, str] = {
    Role.CLINICIAN: "接诊医师",
    Role.INSTITUTION_ADMIN: "机构管理员",
    Role.INTEGRATION: "接口系统",
    Role.QC_CENTRE: "质控中心",
    Role.REGULATOR: "卫生健康行政部门",
    Role.INSURER: "医保部门",
    Role.PATIENT: "患者",
    Role.OPERATOR: "平台运维",
}

# Roles bound to an institution; the others are bound to a jurisdiction (or a patient).
INSTITUTION_ROLES = frozenset({Role.CLINICIAN, Role.INSTITUTION_ADMIN, Role.INTEGRATION})
JURISDICTION_ROLES = frozenset({Role.QC_CENTRE, Role.REGULATOR, Role.INSURER, Role.OPERATOR})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved from a bearer token, an API key or a session cookie."""

    account_id: int
    username: str
    display_name: str
    role: Role
    institution: str | None = None
    jurisdiction: str | None = None
    department: str | None = None
    patient_id: int | None = None
