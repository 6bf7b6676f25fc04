"""Accounts and access (issue 3 §6): creating accounts bound to an institution, a
jurisdiction or a patient; password login; signed access tokens; API keys for
integration systems (HIS/LIS/RIS/PACS interface engines).

Every change of an account or a key names who made it (``actor``, a keyword of each
method that changes something) and is recorded as an ``AccountEvent`` that the store
writes in the transaction of the change (``account_event``): "who issued the key that
submitted this?" has an answer. A change refused by a check records nothing."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from huren.domain.accounts import (
    ACCOUNT_ACTION_LABELS,
    INSTITUTION_ROLES,
    JURISDICTION_ROLES,
    ROLE_LABELS,
    AccountAction,
    AccountEvent,
    Actor,
    Principal,
    Role,
)
from huren.domain.errors import (
    Conflict,
    DomainError,
    NotFound,
    ProblemCollector,
    Unauthorized,
)
from huren.domain.sharing import RateLimit
from huren.domain.text import MAX_ID, text_problem
from huren.services.ports import Clock
from huren.services.ratelimit import MemoryRateCounters, RateCounters

log = logging.getLogger("huren.accounts")

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{2,63}")  # whole string (fullmatch)
MIN_PASSWORD_LENGTH = 10
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# The widths of the account and api_key columns; a code longer than its column (32)
# cannot name an institution or a jurisdiction.
MAX_DISPLAY_NAME, MAX_DEPARTMENT, MAX_LABEL, MAX_CODE = 100, 32, 100, 32
MAX_USERNAME, MAX_PREFIX = 64, 16  # the widths of account.username and api_key.prefix
MAX_HISTORY = 1000  # the most events one listing of account_event shows


def _text_problem(value: str, maximum: int) -> str | None:
    if CONTROL_CHARS.search(value):
        return "不能含有控制字符（换行、NUL 等）"
    if len(value) > maximum:
        return f"过长: {len(value)} 个字符，最多 {maximum} 个"
    return None


def label_problem(label: str) -> str | None:
    """What is wrong with an API key's label (用途说明), or None."""
    return _text_problem(label, MAX_LABEL)


def _code_ok(code: str) -> bool:
    return len(code) <= MAX_CODE and not CONTROL_CHARS.search(code)


class TooManyAttempts(DomainError):
    code = "too_many_attempts"
    status = 429


# ---------------------------------------------------------------- records and ports
@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: int
    username: str
    display_name: str
    role: Role
    institution: str | None
    jurisdiction: str | None
    department: str | None
    patient_id: int | None
    password_hash: str | None
    active: bool
    created_at: datetime

    def principal(self) -> Principal:
        return Principal(
            account_id=self.id,
            username=self.username,
            display_name=self.display_name,
            role=self.role,
            institution=self.institution,
            jurisdiction=self.jurisdiction,
            department=self.department,
            patient_id=self.patient_id,
        )


@dataclass(frozen=True, slots=True)
class NewAccount:
    username: str
    display_name: str
    role: Role
    institution: str | None = None
    jurisdiction: str | None = None
    department: str | None = None
    patient_id: int | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: int
    account_id: int
    prefix: str
    key_hash: str
    label: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class AccountEventRecord:
    """A recorded account-administration change (``account_event``)."""

    id: int
    at: datetime
    action: AccountAction
    actor: Actor
    account_id: int  # the account changed
    account_username: str
    institution: str | None  # the changed account's institution
    subject: str  # key prefix, client issuer or username
    detail: str

    @property
    def action_label(self) -> str:
        return ACCOUNT_ACTION_LABELS[self.action]


@dataclass(frozen=True, slots=True)
class TokenClaims:
    account_id: int
    username: str
    role: str
    institution: str | None
    jurisdiction: str | None
    issued_at: datetime
    expires_at: datetime


class AccountStore(Protocol):
    """Each method that changes something takes the ``AccountEvent`` recording it and
    writes it in the same transaction, only when something was changed."""

    def add_account(
        self, new: NewAccount, password_hash: str | None, now: datetime, event: AccountEvent
    ) -> int: ...

    def account_by_id(self, account_id: int) -> AccountRecord | None: ...

    def account_by_username(self, username: str) -> AccountRecord | None: ...

    def list_accounts(
        self, institution: str | None = None, role: Role | None = None
    ) -> list[AccountRecord]:
        """All accounts, or those of ``institution`` and/or ``role``, by id."""
        ...

    def set_active(self, account_id: int, active: bool, event: AccountEvent) -> bool:
        """False, and nothing recorded, when the account is already so."""
        ...

    def set_password_hash(
        self, account_id: int, password_hash: str, event: AccountEvent
    ) -> bool: ...

    def institution_exists(self, code: str) -> bool: ...

    def scope_exists(self, code: str) -> bool: ...

    def patient_exists(self, patient_id: int) -> bool: ...

    def add_api_key(
        self,
        account_id: int,
        prefix: str,
        key_hash: str,
        label: str,
        now: datetime,
        event: AccountEvent,
    ) -> int: ...

    def api_key_by_prefix(self, prefix: str) -> ApiKeyRecord | None: ...

    def list_api_keys(self, account_id: int | None = None) -> list[ApiKeyRecord]: ...

    def revoke_api_key(self, prefix: str, now: datetime, event: AccountEvent) -> bool:
        """False, and nothing recorded, when there is no such unrevoked key."""
        ...

    def account_events(
        self, institution: str | None = None, limit: int = 50
    ) -> list[AccountEventRecord]:
        """The most recent events, newest first; of one institution's accounts if given."""
        ...


class PasswordHasher(Protocol):
    def hash(self, password: str) -> str: ...

    def verify(self, password_hash: str, password: str) -> bool: ...

    def dummy_verify(self) -> None: ...


class ApiKeyHasher(Protocol):
    def new_key(self) -> tuple[str, str]: ...

    def prefix_of(self, key: str) -> str | None: ...

    def hash(self, key: str) -> str: ...

    def matches(self, key: str, key_hash: str) -> bool: ...


class TokenCodec(Protocol):
    def encode(self, claims: TokenClaims) -> str: ...

    def decode(self, token: str) -> TokenClaims | None: ...


# ---------------------------------------------------------------- login throttle
class LoginThrottle:
    """Failed logins per (username, client address) in a sliding window. The counts live
    in ``counters``: the database in a running server (``SqlRateCounters``), so every
    server process sees the same failures; in this process when none is given."""

    def __init__(
        self,
        clock: Clock,
        max_failures: int = 5,
        window: timedelta = timedelta(minutes=5),
        counters: RateCounters | None = None,
    ) -> None:
        self._clock = clock
        self._rule = RateLimit(limit=max_failures, window=window)
        self._counters = counters or MemoryRateCounters()

    @staticmethod
    def _key(username: str, client: str) -> str:
        return f"login:{username.lower()}|{client}"

    def check(self, username: str, client: str) -> None:
        now = self._clock.now()
        if self._counters.count(self._key(username, client), now, self._rule) >= self._rule.limit:
            minutes = int(self._rule.window.total_seconds() // 60)
            raise TooManyAttempts(f"登录失败次数过多，请 {minutes} 分钟后再试")

    def failed(self, username: str, client: str) -> None:
        self._counters.add(self._key(username, client), self._clock.now(), self._rule)

    def succeeded(self, username: str, client: str) -> None:
        self._counters.clear(self._key(username, client))


# ---------------------------------------------------------------- the service
@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int
    principal: Principal


@dataclass(frozen=True, slots=True)
class CreatedAccount:
    account: AccountRecord
    password: str | None  # shown once when generated; never stored in clear


@dataclass(frozen=True, slots=True)
class CreatedApiKey:
    key: str  # shown once
    record: ApiKeyRecord
    account: AccountRecord


ACCOUNT_CACHE_SECONDS = 2.0
ACCOUNT_CACHE_SIZE = 50_000


class AccountService:
    def __init__(
        self,
        store: AccountStore,
        passwords: PasswordHasher,
        api_keys: ApiKeyHasher,
        tokens: TokenCodec,
        clock: Clock,
        token_ttl: timedelta,
        counters: RateCounters | None = None,
    ) -> None:
        self.store = store
        self.passwords = passwords
        self.api_keys = api_keys
        self.tokens = tokens
        self.clock = clock
        self.token_ttl = token_ttl
        self.throttle = LoginThrottle(clock, counters=counters)
        # Every authenticated request re-reads its account (active? role unchanged?); that
        # read was a third of a CDS Hooks call. Records are kept for ACCOUNT_CACHE_SECONDS
        # (monotonic time: a freshness bound, not domain time) and dropped at once when
        # this process changes the account; another process's change shows within that.
        self._recent_accounts: dict[int, tuple[float, AccountRecord]] = {}

    # -- the record of changes
    def _event(
        self, action: AccountAction, actor: Actor, subject: str, detail: str = ""
    ) -> AccountEvent:
        return AccountEvent.of(self.clock.now(), action, actor, subject, detail)

    def history(self, institution: str | None = None, limit: int = 50) -> list[AccountEventRecord]:
        """Who changed which account or credential, newest first: of ``institution``'s
        accounts, or all when None."""
        errors = ProblemCollector()
        if not 1 <= limit <= MAX_HISTORY:
            errors.add("limit", f"条数应为 1–{MAX_HISTORY} 之间的整数")
        if institution is not None and (
            not _code_ok(institution)
            or text_problem(institution)
            or not self.store.institution_exists(institution)
        ):
            errors.add("institution", f"医疗机构 {institution[:MAX_CODE]!r} 不存在")
        errors.raise_if_any("无法列出变更记录")
        return self.store.account_events(institution, limit)

    # -- accounts
    def create_account(
        self,
        new: NewAccount,
        password: str | None = None,
        *,
        actor: Actor,
        generate_password: bool = True,
    ) -> CreatedAccount:
        """Create an account bound per its role: institution roles to an institution,
        jurisdiction roles to a jurisdiction (the operator may be platform-wide), patients
        to a patient record. Without a password one is generated and returned once
        (integration accounts get none: they authenticate with API keys)."""
        errors = ProblemCollector()
        username_ok = USERNAME.fullmatch(new.username) is not None
        if not username_ok:
            errors.add("username", "用户名须为 3–64 位字母、数字或 . _ @ -，以字母或数字开头")
        if not new.display_name.strip():
            errors.add("display_name", "显示名称不能为空")
        elif problem := _text_problem(new.display_name, MAX_DISPLAY_NAME):
            errors.add("display_name", f"显示名称{problem}")
        if new.department and (problem := _text_problem(new.department, MAX_DEPARTMENT)):
            errors.add("department", f"科室{problem}")
        if new.patient_id is not None and not 1 <= new.patient_id <= MAX_ID:
            errors.add("patient_id", f"患者编号应为 1–{MAX_ID} 之间的整数")
        if new.role in INSTITUTION_ROLES:
            if not new.institution:
                errors.add("institution", "该角色必须绑定医疗机构")
            elif not _code_ok(new.institution) or not self.store.institution_exists(
                new.institution
            ):
                errors.add("institution", f"医疗机构 {new.institution} 不存在")
            if new.jurisdiction:
                errors.add("jurisdiction", "机构角色不绑定辖区")
        elif new.role in JURISDICTION_ROLES:
            if new.institution:
                errors.add("institution", "辖区角色不绑定医疗机构")
            if not new.jurisdiction and new.role is not Role.OPERATOR:
                errors.add("jurisdiction", "该角色必须绑定辖区")
            elif new.jurisdiction and (
                not _code_ok(new.jurisdiction) or not self.store.scope_exists(new.jurisdiction)
            ):
                errors.add("jurisdiction", f"辖区 {new.jurisdiction} 不存在")
        elif new.role is Role.PATIENT:
            if new.patient_id is None:
                errors.add("patient_id", "患者账号必须绑定患者")
            elif 1 <= new.patient_id <= MAX_ID and not self.store.patient_exists(new.patient_id):
                errors.add("patient_id", f"患者 {new.patient_id} 不存在")
            if new.institution:
                errors.add("institution", "患者账号不绑定医疗机构")
            if new.jurisdiction:
                errors.add("jurisdiction", "患者账号不绑定辖区")
        if password is not None and len(password) < MIN_PASSWORD_LENGTH:
            errors.add("password", f"密码至少 {MIN_PASSWORD_LENGTH} 位")
        if username_ok and self.store.account_by_username(new.username) is not None:
            errors.add("username", f"用户名 {new.username} 已存在")
        errors.raise_if_any("账号信息未通过校验")

        generated = False
        if password is None and generate_password and new.role is not Role.INTEGRATION:
            password = generate_password_text()
            generated = True
        pw_hash = self.passwords.hash(password) if password else None
        event = self._event(
            AccountAction.ACCOUNT_CREATED,
            actor,
            new.username,
            f"{ROLE_LABELS[new.role]}，{describe_binding(new)}",
        )
        account_id = self.store.add_account(new, pw_hash, self.clock.now(), event)
        record = self.store.account_by_id(account_id)
        if record is None:
            raise RuntimeError(f"account {account_id} was not stored")
        _log(event, record)
        return CreatedAccount(record, password if generated else None)

    def list_accounts(
        self, institution: str | None = None, role: Role | None = None
    ) -> list[AccountRecord]:
        return self.store.list_accounts(institution, role)

    def by_username(self, username: str) -> AccountRecord | None:
        """The account of ``username``; None, without asking the store, for a name no
        account can have (PostgreSQL refuses a NUL in a query's text)."""
        if text_problem(username, MAX_USERNAME):
            return None
        return self.store.account_by_username(username)

    def account(self, username: str) -> AccountRecord:
        record = self.by_username(username)
        if record is None:
            raise NotFound(f"账号 {username} 不存在")
        return record

    def deactivate(self, username: str, *, actor: Actor) -> AccountRecord:
        """Deactivate an account; one already deactivated is left as it is, unrecorded."""
        record = self.account(username)
        event = self._event(AccountAction.ACCOUNT_DEACTIVATED, actor, record.username)
        if self.store.set_active(record.id, False, event):
            _log(event, record)
        self._recent_accounts.pop(record.id, None)
        return self.account(username)

    def _account_by_id(self, account_id: int) -> AccountRecord | None:
        now = time.monotonic()
        hit = self._recent_accounts.get(account_id)
        if hit is not None and now - hit[0] < ACCOUNT_CACHE_SECONDS:
            return hit[1]
        record = self.store.account_by_id(account_id)
        if record is not None:
            if len(self._recent_accounts) >= ACCOUNT_CACHE_SIZE:
                self._recent_accounts.clear()
            self._recent_accounts[account_id] = (now, record)
        return record

    def active_principal(self, account_id: int) -> Principal | None:
        """The principal of an active account (cached briefly, as for tokens)."""
        record = self._account_by_id(account_id)
        return record.principal() if record is not None and record.active else None

    def set_password(self, username: str, password: str, *, actor: Actor) -> None:
        if len(password) < MIN_PASSWORD_LENGTH:
            errors = ProblemCollector()
            errors.add("password", f"密码至少 {MIN_PASSWORD_LENGTH} 位")
            errors.raise_if_any("密码未通过校验")
        record = self.account(username)
        event = self._event(AccountAction.PASSWORD_SET, actor, record.username)
        if not self.store.set_password_hash(record.id, self.passwords.hash(password), event):
            raise NotFound(f"账号 {username} 不存在")
        _log(event, record)
        self._recent_accounts.pop(record.id, None)

    # -- login and tokens
    def authenticate_password(self, username: str, password: str, client: str = "") -> Principal:
        """Check a password; failures are throttled per username and client address."""
        self.throttle.check(username, client)
        record = self.by_username(username)
        if record is None or not record.password_hash:
            self.passwords.dummy_verify()
            self.throttle.failed(username, client)
            raise Unauthorized("用户名或密码错误")
        if not self.passwords.verify(record.password_hash, password) or not record.active:
            self.throttle.failed(username, client)
            raise Unauthorized("用户名或密码错误" if record.active else "账号已停用")
        self.throttle.succeeded(username, client)
        return record.principal()

    def issue_token(self, principal: Principal) -> IssuedToken:
        now = self.clock.now()
        claims = TokenClaims(
            account_id=principal.account_id,
            username=principal.username,
            role=principal.role.value,
            institution=principal.institution,
            jurisdiction=principal.jurisdiction,
            issued_at=now,
            expires_at=now + self.token_ttl,
        )
        return IssuedToken(
            self.tokens.encode(claims), int(self.token_ttl.total_seconds()), principal
        )

    def principal_from_token(self, token: str) -> Principal:
        """The principal a token speaks for, re-checked against the account: a token of a
        deactivated account, or one whose role or binding has changed since, is refused."""
        claims = self.tokens.decode(token)
        if claims is None:
            raise Unauthorized("令牌无效")
        if self.clock.now() >= claims.expires_at:
            raise Unauthorized("令牌已过期，请重新登录")
        record = self._account_by_id(claims.account_id)
        if record is None or not record.active:
            raise Unauthorized("账号不存在或已停用")
        if (
            record.role.value != claims.role
            or record.institution != claims.institution
            or record.jurisdiction != claims.jurisdiction
        ):
            raise Unauthorized("账号权限已变更，请重新登录")
        return record.principal()

    # -- API keys
    def create_api_key(self, username: str, label: str = "", *, actor: Actor) -> CreatedApiKey:
        """A new API key for an integration account; the key is returned once and only its
        keyed hash is stored."""
        record = self.account(username)
        if record.role is not Role.INTEGRATION:
            errors = ProblemCollector()
            errors.add("username", "只有接口系统账号可以持有 API 密钥")
            errors.raise_if_any("无法创建 API 密钥")
        if not record.active:
            raise Conflict(f"账号 {username} 已停用")
        if problem := _text_problem(label, MAX_LABEL):
            errors = ProblemCollector()
            errors.add("label", f"密钥用途说明{problem}")
            errors.raise_if_any("无法创建 API 密钥")
        key, prefix = self.api_keys.new_key()
        event = self._event(AccountAction.API_KEY_CREATED, actor, prefix, _label_detail(label))
        key_id = self.store.add_api_key(
            record.id, prefix, self.api_keys.hash(key), label, self.clock.now(), event
        )
        stored = self.store.api_key_by_prefix(prefix)
        if stored is None or stored.id != key_id:
            raise RuntimeError(f"API key {prefix} was not stored")
        _log(event, record)
        return CreatedApiKey(key, stored, record)

    def create_integration(
        self,
        institution: str,
        username: str,
        display_name: str,
        label: str = "",
        *,
        actor: Actor,
    ) -> CreatedApiKey:
        """An integration account for an institution's interface engine with its first
        key, in one step (what ``huren accounts api-key create`` does)."""
        if problem := _text_problem(label, MAX_LABEL):
            errors = ProblemCollector()
            errors.add("label", f"密钥用途说明{problem}")
            errors.raise_if_any("无法创建 API 密钥")
        if self.by_username(username) is None:
            self.create_account(
                NewAccount(username, display_name, Role.INTEGRATION, institution=institution),
                actor=actor,
            )
        return self.create_api_key(username, label, actor=actor)

    def list_api_keys(self, username: str | None = None) -> list[ApiKeyRecord]:
        account_id = self.account(username).id if username else None
        return self.store.list_api_keys(account_id)

    def revoke_api_key(self, prefix: str, *, actor: Actor) -> None:
        stored = None if text_problem(prefix, MAX_PREFIX) else self.store.api_key_by_prefix(prefix)
        event = self._event(
            AccountAction.API_KEY_REVOKED,
            actor,
            prefix,
            _label_detail(stored.label) if stored is not None else "",
        )
        if stored is None or not self.store.revoke_api_key(prefix, self.clock.now(), event):
            raise NotFound(f"API 密钥 {prefix} 不存在或已吊销")
        self.log_change(event, stored.account_id)

    def log_change(self, event: AccountEvent, account_id: int) -> None:
        """The log line of ``event``, naming the account it changed, read again."""
        changed = self.store.account_by_id(account_id)
        if changed is not None:
            _log(event, changed)

    def principal_from_api_key(self, key: str) -> Principal:
        prefix = self.api_keys.prefix_of(key)
        stored = self.store.api_key_by_prefix(prefix) if prefix else None
        if stored is None or not self.api_keys.matches(key, stored.key_hash):
            raise Unauthorized("API 密钥无效")
        if stored.revoked_at is not None:
            raise Unauthorized("API 密钥已吊销")
        record = self.store.account_by_id(stored.account_id)
        if record is None or not record.active:
            raise Unauthorized("账号不存在或已停用")
        return record.principal()

    def authenticate_client(
        self, client_id: str, client_secret: str, client: str = ""
    ) -> Principal:
        """OAuth2 client credentials: ``client_id`` is the integration account's username
        (or the key's prefix), ``client_secret`` the API key."""
        self.throttle.check(client_id, client)
        try:
            principal = self.principal_from_api_key(client_secret)
        except Unauthorized:
            self.throttle.failed(client_id, client)
            raise
        if client_id not in (principal.username, self.api_keys.prefix_of(client_secret)):
            self.throttle.failed(client_id, client)
            raise Unauthorized("client_id 与密钥不匹配")
        self.throttle.succeeded(client_id, client)
        return principal


def _label_detail(label: str) -> str:
    return f"用途说明：{label}" if label else ""


def _log(event: AccountEvent, changed: AccountRecord) -> None:
    """A log line beside the record (``account_event`` is the record)."""
    log.info(
        "账号变更 %s %s 账号=%s（#%s，%s）操作人=%s 时间=%s",
        ACCOUNT_ACTION_LABELS[event.action],
        event.subject,
        changed.username,
        changed.id,
        changed.institution or describe_binding(changed),
        event.actor.describe(),
        event.at.isoformat(),
    )


def generate_password_text() -> str:
    """A random password of 16 URL-safe characters (~96 bits), shown to the operator once."""
    return secrets.token_urlsafe(12)


def describe_binding(record: AccountRecord | Principal | NewAccount) -> str:
    parts: Sequence[str | None] = (
        record.institution,
        record.jurisdiction,
        f"患者编号 {record.patient_id}" if record.patient_id is not None else None,
    )
    return " ".join(p for p in parts if p) or "全平台"
