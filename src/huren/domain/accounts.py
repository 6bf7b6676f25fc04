"""Roles and who may do what. Every account is bound to an institution, a jurisdiction or
(for patients) a patient record; what it sees is limited to that reach."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from huren.domain.masterdata import ScopeGraph


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


def scope_within(graph: ScopeGraph, outer: str, inner: str) -> bool:
    """Is scope ``inner`` the scope ``outer`` itself or part of it — below it in the
    administrative hierarchy (city → province) or one of its member scopes (region →
    province)? A jurisdiction acts on the lists of the scopes within it."""
    if inner == outer:
        return True
    if outer in graph.ancestors(inner):
        return True
    seen: set[str] = set()
    pending = [outer]
    while pending:
        code = pending.pop()
        if code in seen:
            continue
        seen.add(code)
        scope = graph.scopes.get(code)
        subs = set(scope.member_scopes) if scope is not None else set()
        subs |= {s.code for s in graph.scopes.values() if s.parent == code}
        if inner in subs:
            return True
        pending.extend(subs)
    return False


def can_see_institution(principal: Principal, institution: str, graph: ScopeGraph) -> bool:
    """Whose data a principal may read: institution roles their own institution,
    jurisdiction roles the institutions their jurisdiction covers, the operator all.
    Patients see only their own records, never an institution's."""
    if principal.role is Role.OPERATOR:
        return True
    if principal.role in INSTITUTION_ROLES:
        return principal.institution == institution
    if principal.role in JURISDICTION_ROLES and principal.jurisdiction:
        return graph.contains(principal.jurisdiction, institution)
    return False


def can_act_in_scope(principal: Principal, scope: str, graph: ScopeGraph) -> bool:
    """May a jurisdiction-bound principal edit the lists of ``scope``? Only within its own
    jurisdiction; the operator everywhere; institution roles and patients never."""
    if principal.role is Role.OPERATOR:
        return True
    if principal.role in JURISDICTION_ROLES and principal.jurisdiction:
        return scope_within(graph, principal.jurisdiction, scope)
    return False
