"""Cross-institution retrieval (调阅, R6): purposes of use, who may read which shared
result, audit actions, and the lookup rate limit.

国卫医政发〔2024〕37号 三(三): 在保障数据安全的前提下，实现区域内跨机构共享调阅 … 方便患者和
医务人员调阅. The rules below decide *reach* (whose results a reader may open) and what a
reader is told; every read, allowed or refused, is audited by the service."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from huren.domain.accounts import Principal, Role, scope_within
from huren.domain.errors import DomainError, Problem, ValidationFailed
from huren.domain.masterdata import ScopeGraph, ScopeKind

# Calendar days (filters, service dates of claims) are China Standard Time.


class RateLimited(DomainError):
    """Too many lookups or logins in the window (HTTP 429)."""

    code = "rate_limited"
    status = 429


class AuditAction(StrEnum):
    """What an ``audit_event`` row records."""

    SEARCH = "search"  # a lookup by identifier (one row, whatever it found)
    LIST = "list"  # a result shown in a list (one row per result)
    VIEW = "view"  # a full report opened
    VERSION = "version"  # an earlier version opened
    DOWNLOAD = "download"  # a report downloaded (patient portal)
    DOCUMENT = "document"  # the laboratory's original report document (PDF) opened
    VERIFY = "verify"  # a result consulted for an insurer claim line
    AUDIT_QUERY = "audit_query"  # someone read the audit trail of a patient
    BIND = "bind"  # a patient's portal account opened or re-bound at a counter (or tried)


class AuditOutcome(StrEnum):
    OK = "ok"
    DENIED = "denied"


@dataclass(frozen=True, slots=True)
class Purpose:
    """A purpose of use (调阅目的), a code list kept as data (``data/purposes.json``)."""

    code: str
    label: str
    roles: frozenset[Role]  # roles that may state this purpose


class PurposeList:
    def __init__(self, purposes: Iterable[Purpose]) -> None:
        self._by_code = {p.code: p for p in purposes}

    def all(self) -> list[Purpose]:
        return list(self._by_code.values())

    def for_role(self, role: Role) -> list[Purpose]:
        return [p for p in self._by_code.values() if role in p.roles]

    def label(self, code: str) -> str:
        p = self._by_code.get(code)
        return p.label if p else code

    def require(self, code: str | None, role: Role, where: str = "purpose") -> Purpose:
        """The stated purpose, which must exist and be open to ``role``."""
        if not code:
            raise ValidationFailed("调阅须说明目的", problems=[Problem(where, "请选择调阅目的")])
        p = self._by_code.get(code)
        if p is None or role not in p.roles:
            allowed = "、".join(f"{x.code}（{x.label}）" for x in self.for_role(role))
            raise ValidationFailed(
                "调阅目的无效",
                problems=[Problem(where, f"调阅目的 {code} 不可用；可选：{allowed or '无'}")],
            )
        return p


# Roles that may look a patient up by identifier and open full reports of other
# institutions. Insurers read only through claim verification; the operator runs the
# platform and does not read clinical content; interface engines use the reminder API.
RETRIEVAL_ROLES = frozenset(
    {Role.CLINICIAN, Role.INSTITUTION_ADMIN, Role.REGULATOR, Role.QC_CENTRE}
)

# Scopes through which results are shared between institutions. 国卫医政发〔2024〕37号
# 一: 2025 区域内、2027 省域内及跨区域、2030 全国 — national sharing is a later stage, so the
# national scope does not (yet) open every institution's results to every clinician.
SHARING_SCOPE_KINDS = frozenset(
    {ScopeKind.ALLIANCE, ScopeKind.CITY, ScopeKind.PROVINCE, ScopeKind.REGION, ScopeKind.AGREEMENT}
)

# Roles that may be told whether a patient exists. Nobody outside the patient's own
# account is: an unknown identifier and a patient with no result in reach answer alike.
NOT_FOUND_MESSAGE = "未找到该结果，或您无权调阅"


def sharing_partners(graph: ScopeGraph, institution: str) -> frozenset[str]:
    """Institutions whose shared results a clinician of ``institution`` may read: its own
    and every institution in a sharing scope (alliance, city, province, region, agreement)
    that contains it."""
    out = {institution}
    for code, scope in graph.scopes.items():
        if scope.kind in SHARING_SCOPE_KINDS and graph.contains(code, institution):
            out |= graph.coverage(code)
    return frozenset(out)


def may_read_result(
    principal: Principal, producing_institution: str, patient_id: int, graph: ScopeGraph
) -> bool:
    """May ``principal`` open a shared result of ``producing_institution``?"""
    role = principal.role
    if role is Role.PATIENT:
        return principal.patient_id == patient_id
    if role in (Role.CLINICIAN, Role.INSTITUTION_ADMIN):
        if not principal.institution:
            return False
        return producing_institution in sharing_partners(graph, principal.institution)
    if role in (Role.REGULATOR, Role.QC_CENTRE):
        # 沪卫医〔2024〕135号 五(六): 卫生健康行政部门有权通过查阅、记录等方式对辖区内医疗机构开展
        # 监督 — within their own jurisdiction only.
        return bool(principal.jurisdiction) and graph.contains(
            principal.jurisdiction or "", producing_institution
        )
    return False


def may_read_audit_of_institution(
    principal: Principal, institution: str, graph: ScopeGraph
) -> bool:
    """The audit trail of reads *by* or *of* an institution: its admin, or a regulator
    whose jurisdiction covers it."""
    if principal.role is Role.INSTITUTION_ADMIN:
        return principal.institution == institution
    if principal.role in (Role.REGULATOR, Role.OPERATOR) and principal.jurisdiction:
        return graph.contains(principal.jurisdiction, institution)
    return principal.role is Role.OPERATOR


def may_read_audit_of_jurisdiction(
    principal: Principal, jurisdiction: str, graph: ScopeGraph
) -> bool:
    if principal.role is Role.OPERATOR:
        return True
    if principal.role is Role.REGULATOR and principal.jurisdiction:
        return scope_within(graph, principal.jurisdiction, jurisdiction)
    return False


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` events per ``window``."""

    limit: int
    window: timedelta


def rate_limited(rule: RateLimit, retry_after: int, message: str) -> RateLimited:
    """The refusal of an event over ``rule``, telling when to try again. The counting is
    ``huren.services.ratelimit`` (shared by every server process)."""
    return RateLimited(
        message,
        problems=[
            Problem(
                "rate_limit",
                f"每{_window_text(rule.window)}最多 {rule.limit} 次，请 {retry_after} 秒后再试",
            )
        ],
    )


def _window_text(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds % 3600 == 0:
        return f" {seconds // 3600} 小时" if seconds > 3600 else "小时"
    if seconds % 60 == 0:
        return f" {seconds // 60} 分钟" if seconds > 60 else "分钟"
    return f" {seconds} 秒"


def mask_actor(display_name: str) -> str:
    """A reader's name as a patient sees it: surname and title only (张医生)."""
    name = display_name.strip()
    return (name[:1] + "**") if name else "**"


ROLE_READER_LABEL: Mapping[Role, str] = {
    Role.CLINICIAN: "医师",
    Role.INSTITUTION_ADMIN: "机构管理员",
    Role.REGULATOR: "卫生健康行政部门",
    Role.QC_CENTRE: "质控中心",
    Role.INSURER: "医保部门",
    Role.PATIENT: "本人",
    Role.OPERATOR: "平台运维",
    Role.INTEGRATION: "接口系统",
}
