"""Roles and who may do what. Every account is bound to an institution, a jurisdiction or
(for patients) a patient record; what it sees is limited to that reach."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
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


# ---------------------------------------------------------------- account administration
class AccountAction(StrEnum):
    """What an account-administration change did (the ``account_event`` record)."""

    ACCOUNT_CREATED = "account_created"
    ACCOUNT_DEACTIVATED = "account_deactivated"
    PASSWORD_SET = "password_set"  # noqa: S105 (an action's name, not a password)
    API_KEY_CREATED = "api_key_created"
    API_KEY_REVOKED = "api_key_revoked"
    CDS_CLIENT_REGISTERED = "cds_client_registered"
    CDS_CLIENT_KEYS_REPLACED = "cds_client_keys_replaced"
    CDS_CLIENT_REVOKED = "cds_client_revoked"


ACCOUNT_ACTION_LABELS: Mapping[AccountAction, str] = {
    AccountAction.ACCOUNT_CREATED: "创建账号",
    AccountAction.ACCOUNT_DEACTIVATED: "停用账号",
    AccountAction.PASSWORD_SET: "重设密码",
    AccountAction.API_KEY_CREATED: "创建 API 密钥",
    AccountAction.API_KEY_REVOKED: "吊销 API 密钥",
    AccountAction.CDS_CLIENT_REGISTERED: "登记 CDS 客户端",
    AccountAction.CDS_CLIENT_KEYS_REPLACED: "更换 CDS 客户端公钥",
    AccountAction.CDS_CLIENT_REVOKED: "吊销 CDS 客户端",
}

# Who acted, when not a signed-in account: the server's command line (the OS user beside
# it), or a named part of the platform with no person behind it (the demo's seed data).
COMMAND_LINE = "命令行"
COMMAND_LINE_ROLE = "command_line"
SYSTEM_ROLE = "system"
ACTOR_ROLE_LABELS: Mapping[str, str] = {
    **{role.value: label for role, label in ROLE_LABELS.items()},
    COMMAND_LINE_ROLE: "服务器命令行",
    SYSTEM_ROLE: "系统",
}
# The widths of the account_event columns that hold them.
MAX_ACTOR, MAX_ACTOR_NAME, MAX_OS_USER, MAX_SUBJECT, MAX_DETAIL = 64, 100, 64, 255, 500


def clip(text: str, maximum: int) -> str:
    """``text`` cut to ``maximum`` characters, with an ellipsis when cut."""
    return text if len(text) <= maximum else text[: maximum - 1] + "…"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made an account-administration change: a signed-in account (``of``), the
    server's command line with the OS user running it (``command_line``), or a named part
    of the platform with no person behind it (``system``)."""

    account_id: int | None
    username: str  # the account's login name, 命令行, or the system part's name
    display_name: str
    role: str  # a Role value, "command_line" or "system"
    os_user: str = ""

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        return cls(
            principal.account_id,
            principal.username,
            principal.display_name,
            principal.role.value,
        )

    @classmethod
    def command_line(cls, os_user: str) -> Actor:
        return cls(None, COMMAND_LINE, COMMAND_LINE, COMMAND_LINE_ROLE, clip(os_user, MAX_OS_USER))

    @classmethod
    def system(cls, name: str) -> Actor:
        return cls(None, clip(name, MAX_ACTOR), clip(name, MAX_ACTOR_NAME), SYSTEM_ROLE)

    def describe(self) -> str:
        """如 王主任（admin-a，机构管理员）; 命令行（OS 用户 root）."""
        if self.role == COMMAND_LINE_ROLE:
            return f"{COMMAND_LINE}（OS 用户 {self.os_user or '未知'}）"
        if self.role == SYSTEM_ROLE:
            return f"{self.display_name}（系统）"
        label = ACTOR_ROLE_LABELS.get(self.role, self.role)
        return f"{self.display_name}（{self.username}，{label}）"


@dataclass(frozen=True, slots=True)
class AccountEvent:
    """One account-administration change as recorded with it, in its transaction: when,
    who, what, and its subject (a key prefix, a client's issuer, a username) with a short
    detail. Never a key, a password or a hash. Which account was changed, and its
    institution, the store takes from the row it changes."""

    at: datetime
    action: AccountAction
    actor: Actor
    subject: str
    detail: str = ""

    @classmethod
    def of(
        cls, at: datetime, action: AccountAction, actor: Actor, subject: str, detail: str = ""
    ) -> AccountEvent:
        """An event with ``subject`` and ``detail`` cut to the widths of their columns."""
        return cls(at, action, actor, clip(subject, MAX_SUBJECT), clip(detail, MAX_DETAIL))


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
