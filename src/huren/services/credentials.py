"""An institution's interface credentials managed by people, not only from the server's
command line: the API keys of its interface accounts (HIS/LIS/RIS/PACS engines) and the
CDS clients that sign their own JWT (CDS Hooks 2.0 §Trusting CDS Clients, see
``services.cds_clients``).

Who may: the institution's 机构管理员 for their own institution's interface accounts;
the platform operator for any institution's. Every other role is refused. An account, key
or client of another institution is answered as not found, so that one hospital cannot
learn another's key prefixes or client issuers by trying them.

Every check of a key or a JWK Set is the one the command line makes
(``AccountService.create_api_key``, ``CdsClientService.register`` / ``set_keys``), with
its messages naming the field; nothing is stored when one fails.

Each change is recorded in ``account_event`` with the signed-in principal as its actor,
in the transaction of the change (``services.accounts``), as the command line's changes
are with the command line as theirs; the page lists the institution's recent ones
(``page``). ``audit_event`` is not the place: it records reads of patients' results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from huren.domain.accounts import Actor, Principal, Role
from huren.domain.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Problem,
    ProblemCollector,
    ValidationFailed,
)
from huren.domain.text import text_problem
from huren.services.accounts import (
    MAX_PREFIX,
    AccountEventRecord,
    AccountRecord,
    AccountService,
    ApiKeyRecord,
    CreatedApiKey,
    NewAccount,
    label_problem,
)
from huren.services.cds_clients import (
    MAX_ISSUER,
    CdsClientRecord,
    CdsClientService,
    jwks_key_ids,
)

MANAGER_ROLES = frozenset({Role.INSTITUTION_ADMIN, Role.OPERATOR})
HISTORY_LIMIT = 50  # the changes the page lists


@dataclass(frozen=True, slots=True)
class CdsClientView:
    record: CdsClientRecord
    key_ids: list[str]  # the kid of each key of its JWK Set, as registered


@dataclass(frozen=True, slots=True)
class InterfaceAccount:
    account: AccountRecord
    keys: list[ApiKeyRecord]
    clients: list[CdsClientView]


@dataclass(frozen=True, slots=True)
class CredentialsPage:
    """What the page shows of the institution ``code`` (None until an operator chose
    one): its interface accounts with their credentials, and its recent changes."""

    code: str | None
    accounts: list[InterfaceAccount]
    history: list[AccountEventRecord]


class _Credential(Protocol):
    """An API key or a CDS client: each belongs to one interface account."""

    @property
    def account_id(self) -> int: ...


_Owned = TypeVar("_Owned", bound=_Credential)


def may_manage(principal: Principal) -> bool:
    return principal.role is Role.OPERATOR or (
        principal.role is Role.INSTITUTION_ADMIN and bool(principal.institution)
    )


class InterfaceCredentials:
    def __init__(self, accounts: AccountService, cds_clients: CdsClientService) -> None:
        self.accounts = accounts
        self.cds_clients = cds_clients

    # -- reach
    def institution(self, principal: Principal, requested: str | None) -> str | None:
        """The institution whose credentials ``principal`` manages: a 机构管理员's own
        (asking for another is refused), the one an operator chose (None until chosen)."""
        if not may_manage(principal):
            raise Forbidden("当前角色无权管理接口凭据（仅机构管理员与平台运维可用）")
        requested = (requested or "").strip()
        if principal.role is Role.INSTITUTION_ADMIN:
            if requested and requested != principal.institution:
                raise Forbidden("机构管理员只能管理本机构的接口凭据")
            return principal.institution
        if not requested:
            return None
        if text_problem(requested, 32) or not self.accounts.store.institution_exists(requested):
            raise NotFound(f"未知的机构编码: {requested[:32]}")
        return requested

    def _institution(self, principal: Principal, requested: str | None) -> str:
        code = self.institution(principal, requested)
        if code is None:
            raise ValidationFailed("请先选择机构（institution）")
        return code

    def _account(self, institution: str, username: str) -> AccountRecord:
        found = self.accounts.by_username(username)
        if found is None or found.role is not Role.INTEGRATION or found.institution != institution:
            problem = Problem("username", f"本机构没有接口系统账号 {username[:64]}")
            raise ValidationFailed("接口系统账号不存在", problems=[problem])
        return found

    def _owned(
        self, institution: str, found: _Owned | None, missing: str
    ) -> tuple[_Owned, AccountRecord]:
        """``found`` and its account when that is of ``institution``; else, as when
        there is none, ``NotFound`` saying ``missing``."""
        owner = self.accounts.store.account_by_id(found.account_id) if found else None
        if found is None or owner is None or owner.institution != institution:
            raise NotFound(missing)
        return found, owner

    def _key(self, institution: str, prefix: str) -> tuple[ApiKeyRecord, AccountRecord]:
        stored = (
            None
            if text_problem(prefix, MAX_PREFIX)
            else self.accounts.store.api_key_by_prefix(prefix)
        )
        return self._owned(institution, stored, f"本机构没有 API 密钥 {prefix[:MAX_PREFIX]}")

    def _client(self, institution: str, issuer: str) -> tuple[CdsClientRecord, AccountRecord]:
        record = (
            None if text_problem(issuer, MAX_ISSUER) else self.cds_clients.store.cds_client(issuer)
        )
        return self._owned(institution, record, f"本机构没有登记 CDS 客户端 {issuer[:MAX_ISSUER]}")

    # -- reading
    def page(self, principal: Principal, institution: str | None) -> CredentialsPage:
        """The institution's interface accounts, each with its keys and CDS clients, and
        the recent changes of its accounts and credentials, newest first: who made them
        (an account, or the server's command line) and what."""
        code = self.institution(principal, institution)
        if code is None:
            return CredentialsPage(None, [], [])
        accounts = self.accounts.list_accounts(code, Role.INTEGRATION)
        clients: dict[int, list[CdsClientView]] = {a.id: [] for a in accounts}
        for r in self.cds_clients.list_clients():
            if r.account_id in clients:
                clients[r.account_id].append(CdsClientView(r, jwks_key_ids(r.jwks)))
        overview = [
            InterfaceAccount(a, self.accounts.store.list_api_keys(a.id), clients[a.id])
            for a in accounts
        ]
        return CredentialsPage(
            code, overview, self.accounts.store.account_events(code, HISTORY_LIMIT)
        )

    def key(
        self, principal: Principal, institution: str | None, prefix: str
    ) -> tuple[ApiKeyRecord, AccountRecord]:
        """The key of ``prefix`` and the interface account it belongs to."""
        return self._key(self._institution(principal, institution), prefix)

    def client(
        self, principal: Principal, institution: str | None, issuer: str
    ) -> tuple[CdsClientRecord, AccountRecord]:
        """The client ``issuer`` and the interface account it speaks for."""
        return self._client(self._institution(principal, institution), issuer)

    # -- changes

    def create_account(
        self,
        principal: Principal,
        institution: str | None,
        username: str,
        display_name: str,
        label: str = "",
    ) -> CreatedApiKey:
        """A new interface account of the institution with its first API key (what
        ``huren accounts api-key create`` does for a name not yet taken)."""
        code = self._institution(principal, institution)
        username = username.strip()
        errors = ProblemCollector()
        if problem := label_problem(label):
            errors.add("label", f"密钥用途说明{problem}")
        if self.accounts.by_username(username):
            errors.add("username", f"用户名 {username} 已存在")
        errors.raise_if_any("无法创建接口系统账号")
        actor = Actor.of(principal)
        self.accounts.create_account(
            NewAccount(username, display_name.strip(), Role.INTEGRATION, institution=code),
            actor=actor,
        )
        return self.accounts.create_api_key(username, label, actor=actor)

    def create_key(
        self, principal: Principal, institution: str | None, username: str, label: str = ""
    ) -> CreatedApiKey:
        code = self._institution(principal, institution)
        account = self._account(code, username)
        return self.accounts.create_api_key(account.username, label, actor=Actor.of(principal))

    def revoke_key(self, principal: Principal, institution: str | None, prefix: str) -> None:
        key, _ = self._key(self._institution(principal, institution), prefix)
        if key.revoked_at is not None:
            raise Conflict(f"API 密钥 {key.prefix} 已吊销")
        self.accounts.revoke_api_key(key.prefix, actor=Actor.of(principal))

    def register_client(
        self,
        principal: Principal,
        institution: str | None,
        username: str,
        issuer: str,
        jwks: str,
        jku: str = "",
        label: str = "",
    ) -> CdsClientRecord:
        code = self._institution(principal, institution)
        account = self._account(code, username)
        return self.cds_clients.register(
            account.username, issuer, jwks, jku, label, actor=Actor.of(principal)
        )

    def set_client_keys(
        self, principal: Principal, institution: str | None, issuer: str, jwks: str, jku: str = ""
    ) -> CdsClientRecord:
        record, _ = self._client(self._institution(principal, institution), issuer)
        if record.revoked_at is not None:
            raise Conflict(
                f"CDS 客户端 {record.issuer} 已吊销，不能更换公钥；请以新的 iss 重新登记"
            )
        return self.cds_clients.set_keys(record.issuer, jwks, jku, actor=Actor.of(principal))

    def revoke_client(self, principal: Principal, institution: str | None, issuer: str) -> None:
        record, _ = self._client(self._institution(principal, institution), issuer)
        if record.revoked_at is not None:
            raise Conflict(f"CDS 客户端 {record.issuer} 已吊销")
        self.cds_clients.revoke(record.issuer, actor=Actor.of(principal))
