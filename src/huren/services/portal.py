"""Patient portal (患者端, R6), ``container.portal``.

甘卫医政函〔2025〕16号 三(二)3: 医疗机构做好公众号、小程序等信息化平台服务 … 方便患者便捷调阅;
国卫医政发〔2024〕37号 三(三): 方便患者和医务人员调阅. Here: mobile web pages and an API.

Verified identity, in two steps:
1. **Binding at an institution.** An institution administrator, with the patient and the
   ID card in front of them, binds the patient's 居民身份证 (or 医保号 / 电子健康卡) to a
   mobile number. That creates (or re-binds) the patient's portal account.
2. **Login by one-time code.** The patient enters the identifier; a 6-digit code goes to
   the bound mobile through a pluggable ``CodeSender`` (the dev/demo sender writes it to
   the log). Codes are stored only as a keyed hash, live ``CODE_TTL``, allow
   ``MAX_ATTEMPTS`` tries, and at most ``MAX_CODES_PER_HOUR`` are sent per identifier
   (counted in the database, so it holds across processes) with ``RESEND_AFTER``
   between two. Per client address, ``request_code`` and ``verify_code`` are also rate
   limited (``huren.services.ratelimit``, counted in the database).

The answer to "send me a code" is the same whether or not the identifier is bound (no
enumeration); an unbound identifier gets a challenge row that can never succeed.

Codes come from ``secrets`` (not the seeded generator used elsewhere: a predictable code
would be no code)."""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from huren.domain.accounts import Actor, Principal, Role
from huren.domain.china_time import CHINA_TZ
from huren.domain.errors import Forbidden, NotFound, Problem, Unauthorized, ValidationFailed
from huren.domain.identity import (
    IdentifierKind,
    PatientIdentifier,
    mask_id,
    mask_name,
    validate_identifier,
)
from huren.domain.results import StoredResult
from huren.domain.sharing import (
    ROLE_READER_LABEL,
    AuditAction,
    PurposeList,
    RateLimit,
    RateLimited,
    mask_actor,
)
from huren.domain.text import is_digits
from huren.services.catalog import CatalogCache
from huren.services.insurer import DecisionFact
from huren.services.patients import IdentifierKey
from huren.services.ports import Clock, IdentifierVault
from huren.services.ratelimit import Limiter, MemoryRateCounters, RateCounters
from huren.services.retrieval import (
    AuditEvent,
    AuditQuery,
    Report,
    ResultFilter,
    RetrievalService,
    audit_event,
)

log = logging.getLogger("huren.portal")

CODE_TTL = timedelta(minutes=5)
MAX_ATTEMPTS = 5
MAX_CODES_PER_HOUR = 5
RESEND_AFTER = timedelta(seconds=60)
CLIENT_LIMIT = RateLimit(limit=20, window=timedelta(minutes=10))
# Bindings per administrator: a counter serves patients one at a time; more is probing
# which identifiers the platform knows.
BIND_LIMIT = RateLimit(limit=60, window=timedelta(hours=1))
BIND_PURPOSE = "account_binding"

CODE_SENT_MESSAGE = "如该证件已在医疗机构绑定手机号，验证码已发送至绑定手机，5 分钟内有效"
BAD_CODE_MESSAGE = "验证码错误或已失效，请重新获取"


@dataclass(frozen=True, slots=True)
class BindingRecord:
    account_id: int
    patient_id: int
    identifier_hash: str
    phone_enc: str
    phone_masked: str
    bound_by: int
    bound_institution: str
    bound_at: datetime


@dataclass(frozen=True, slots=True)
class Challenge:
    identifier_hash: str
    account_id: int | None
    code_hash: str
    created_at: datetime
    expires_at: datetime
    attempts: int = 0
    id: int = 0


class CodeSender(Protocol):
    """Delivers a one-time code to a mobile number (SMS gateway, 健康甘肃 APP push …)."""

    def send(self, phone: str, text: str) -> None: ...


class LogCodeSender:
    """Dev / demo sender: writes the message to the log instead of sending an SMS."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, phone: str, text: str) -> None:
        self.sent.append((phone, text))
        log.warning("【演示短信】发送至 %s：%s", mask_id(phone), text)


class PortalTx(Protocol):
    def patients_by_identifier(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, int]: ...

    def patient(self, patient_id: int) -> dict[str, Any] | None: ...

    def binding_by_identifier(self, identifier_hash: str) -> BindingRecord | None: ...

    def binding_by_account(self, account_id: int) -> BindingRecord | None: ...

    def upsert_binding(self, b: BindingRecord) -> None: ...

    def bindings_made_at(self, institution_code: str, limit: int) -> list[BindingListEntry]: ...

    def insert_challenge(self, c: Challenge) -> int: ...

    def set_challenge_hash(self, challenge_id: int, code_hash: str) -> None: ...

    def challenges_since(self, identifier_hash: str, since: datetime) -> int: ...

    def latest_challenge(self, identifier_hash: str) -> Challenge | None: ...

    def count_attempt(self, challenge_id: int) -> None: ...

    def consume_challenge(self, challenge_id: int, at: datetime) -> bool: ...

    def results_of_patient(
        self, patient_id: int, flt: ResultFilter, institutions: frozenset[str] | None
    ) -> list[StoredResult]: ...

    def decisions_for_results(self, result_ids: Sequence[int]) -> dict[int, list[DecisionFact]]: ...

    def open_correction_counts(self, result_ids: Sequence[int]) -> dict[int, int]: ...

    def write_audit(self, events: Sequence[AuditEvent]) -> None: ...


class PortalStore(Protocol):
    def transaction(self) -> AbstractContextManager[PortalTx]: ...


class PatientAccounts(Protocol):
    """What the portal needs of the accounts service."""

    def create_patient_account(self, patient_id: int, display_name: str, by: Principal) -> int:
        """A new patient account, recorded as created by ``by`` (the administrator)."""
        ...

    def principal(self, account_id: int) -> Principal: ...


@dataclass(frozen=True, slots=True)
class BindingOutcome:
    account_id: int
    patient_id: int
    phone_masked: str
    name_masked: str
    identifier_masked: str = ""
    rebound: bool = False  # the account existed; its mobile was replaced


@dataclass(frozen=True, slots=True)
class BindingListEntry:
    """A binding made at an institution's counter, as its staff see it: masked."""

    account_id: int
    bound_at: datetime
    name_masked: str
    identifier_kind: str
    identifier_masked: str
    phone_masked: str
    bound_by: str  # the staff member's display name


@dataclass(frozen=True, slots=True)
class MyResult:
    result: StoredResult
    item_name: str
    institution_name: str
    decisions: tuple[DecisionFact, ...]  # where it was recognized or declined, and why
    open_corrections: int


@dataclass(frozen=True, slots=True)
class ReaderEntry:
    """One read of the patient's results, as the patient sees it."""

    at: datetime
    reader: str  # masked name + role label
    institution_name: str
    item_name: str
    action: str
    purpose: str
    outcome: str


_ACTION_LABELS = {
    "search": "查询",
    "list": "查看列表",
    "view": "查看报告",
    "version": "查看历史版本",
    "download": "下载报告",
    "document": "查看原始报告（PDF）",
    "verify": "医保核查",
    "audit_query": "查看调阅记录",
    "bind": "开通或改绑患者端账号",
    # The recognition and imaging paths (services/recognition.py, routes/viewer.py).
    "recognition_check": "开具医嘱时查看既往结果（互认提醒）",
    "recognition_accepted": "接受互认（未重复检查）",
    "recognition_declined": "不予互认（重新检查）",
    "view_result": "查看完整报告",
    "imaging_view": "查看影像",
}
_OWN_PURPOSES = {BIND_PURPOSE: "现场核验身份证件"}


def _phone(value: str) -> str:
    digits = value.strip().replace(" ", "").replace("-", "")
    if not (len(digits) == 11 and is_digits(digits) and digits.startswith("1")):
        raise ValidationFailed("手机号码无效", problems=[Problem("phone", "请输入 11 位手机号码")])
    return digits


def _mask_phone(phone: str) -> str:
    return phone[:3] + "****" + phone[-4:]


class PortalService:
    def __init__(
        self,
        store: PortalStore,
        accounts: PatientAccounts,
        retrieval: RetrievalService,
        catalog: CatalogCache,
        vault: IdentifierVault,
        clock: Clock,
        sender: CodeSender,
        purposes: PurposeList,
        counters: RateCounters | None = None,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._retrieval = retrieval
        self._catalog = catalog
        self._vault = vault
        self._clock = clock
        self.sender = sender
        self.purposes = purposes
        self._client_limiter = Limiter(CLIENT_LIMIT, counters or MemoryRateCounters())
        self._bind_limiter = Limiter(BIND_LIMIT, self._client_limiter.counters)

    def _key(self, identifier: PatientIdentifier) -> IdentifierKey:
        return self._retrieval.lookup_key(identifier)

    def _code_hash(self, challenge_id: int, code: str) -> str:
        return self._vault.lookup_hash("otp", str(challenge_id), code)

    # -- binding at the counter
    def bind(self, admin: Principal, identifier: PatientIdentifier, phone: str) -> BindingOutcome:
        """Open (or re-bind) the portal account of the patient ``identifier`` names, with
        ``phone`` receiving the login codes; done by an institution administrator with the
        patient's ID document in front of them. A re-binding tells the previous mobile, so
        that a wrong or fraudulent one does not go unnoticed. Every attempt is audited (the
        patient sees it among who read their results) and rate limited per administrator."""
        if admin.role is not Role.INSTITUTION_ADMIN or not admin.institution:
            raise Forbidden("只有医疗机构管理员可以为患者绑定账号（需现场核验身份证件）")
        mobile = _phone(phone)
        key = self._key(identifier)
        now = self._clock.now()
        self._bind_limiter.hit(f"bind:{admin.account_id}", now, "办理绑定过于频繁，请稍后再试")
        existing: BindingRecord | None = None
        p: dict[str, Any] = {}
        with self._store.transaction() as tx:
            patient_id = tx.patients_by_identifier([key]).get(key)
            if patient_id is None:
                tx.write_audit([audit_event(admin, now, AuditAction.BIND, BIND_PURPOSE)])
            else:
                existing = tx.binding_by_identifier(key[2])
                p = tx.patient(patient_id) or {}
        if patient_id is None:
            raise NotFound(
                "平台中尚无该患者的检查检验结果，暂不能开通患者账号",
                problems=[Problem("identifier", "未找到该患者")],
            )
        name_masked = str(p.get("name_masked", ""))
        account_id = (
            existing.account_id
            if existing is not None
            else self._accounts.create_patient_account(patient_id, name_masked or "患者", admin)
        )
        with self._store.transaction() as tx:
            tx.upsert_binding(
                BindingRecord(
                    account_id=account_id,
                    patient_id=patient_id,
                    identifier_hash=key[2],
                    phone_enc=self._vault.encrypt(mobile),
                    phone_masked=_mask_phone(mobile),
                    bound_by=admin.account_id,
                    bound_institution=admin.institution,
                    bound_at=now,
                )
            )
            tx.write_audit(
                [audit_event(admin, now, AuditAction.BIND, BIND_PURPOSE, patient_id=patient_id)]
            )
        previous = self._vault.decrypt(existing.phone_enc) if existing is not None else None
        if previous is not None and previous != mobile:
            inst = self._catalog.get().institutions.get(admin.institution)
            self.sender.send(
                previous,
                f"【互认平台】您的患者账号绑定手机已于 {now.astimezone(CHINA_TZ):%Y-%m-%d %H:%M} "
                f"在{inst.name if inst else admin.institution}变更为 {_mask_phone(mobile)}。"
                "如非本人办理，请尽快联系该医疗机构。",
            )
        return BindingOutcome(
            account_id,
            patient_id,
            _mask_phone(mobile),
            name_masked,
            identifier_masked=mask_id(validate_identifier(identifier, "identifier").value),
            rebound=existing is not None,
        )

    def bindings_made_here(self, admin: Principal, limit: int = 50) -> list[BindingListEntry]:
        """The latest bindings made at the administrator's institution, masked."""
        if admin.role is not Role.INSTITUTION_ADMIN or not admin.institution:
            raise Forbidden("只有医疗机构管理员可以查看本机构的患者账号绑定记录")
        with self._store.transaction() as tx:
            return tx.bindings_made_at(admin.institution, limit)

    # -- login
    def request_code(self, identifier: PatientIdentifier, client: str = "") -> str:
        """Send a code to the bound mobile, if any; the answer is the same either way."""
        now = self._clock.now()
        self._client_limiter.hit(f"otp:{client}", now, "获取验证码过于频繁，请稍后再试")
        key = self._key(identifier)
        with self._store.transaction() as tx:
            if tx.challenges_since(key[2], now - timedelta(hours=1)) >= MAX_CODES_PER_HOUR:
                raise RateLimited(
                    "验证码发送次数过多，请 1 小时后再试",
                    problems=[Problem("identifier", f"每小时最多发送 {MAX_CODES_PER_HOUR} 次")],
                )
            last = tx.latest_challenge(key[2])
            if last is not None and now - last.created_at < RESEND_AFTER:
                wait = int((last.created_at + RESEND_AFTER - now).total_seconds()) + 1
                raise RateLimited(
                    "验证码已发送，请稍后再试",
                    problems=[Problem("identifier", f"请 {wait} 秒后再获取")],
                )
            binding = tx.binding_by_identifier(key[2])
            code = f"{secrets.randbelow(1_000_000):06d}"
            cid = tx.insert_challenge(
                Challenge(
                    identifier_hash=key[2],
                    account_id=binding.account_id if binding else None,
                    code_hash="",
                    created_at=now,
                    expires_at=now + CODE_TTL,
                )
            )
            tx.set_challenge_hash(cid, self._code_hash(cid, code))
            phone = self._vault.decrypt(binding.phone_enc) if binding else None
        if phone is not None:
            self.sender.send(
                phone,
                f"【互认平台】您的登录验证码为 {code}，5 分钟内有效。如非本人操作请忽略。",
            )
        return CODE_SENT_MESSAGE

    def verify_code(self, identifier: PatientIdentifier, code: str, client: str = "") -> Principal:
        now = self._clock.now()
        self._client_limiter.hit(f"verify:{client}", now, "验证过于频繁，请稍后再试")
        key = self._key(identifier)
        code = code.strip()
        account_id: int | None = None
        with self._store.transaction() as tx:
            ch = tx.latest_challenge(key[2])
            if ch is not None and ch.expires_at > now and ch.attempts < MAX_ATTEMPTS:
                tx.count_attempt(ch.id)
                good = hmac.compare_digest(ch.code_hash, self._code_hash(ch.id, code))
                if good and ch.account_id is not None and tx.consume_challenge(ch.id, now):
                    account_id = ch.account_id
        if account_id is None:
            raise Unauthorized(BAD_CODE_MESSAGE, problems=[Problem("code", BAD_CODE_MESSAGE)])
        return self._accounts.principal(account_id)

    # -- my results
    def _require_patient(self, principal: Principal) -> int:
        if principal.role is not Role.PATIENT or principal.patient_id is None:
            raise Forbidden("仅患者本人可以使用患者端")
        return principal.patient_id

    def my_results(self, principal: Principal) -> list[MyResult]:
        """Own results, newest first, each with where it was recognized or declined."""
        patient_id = self._require_patient(principal)
        now = self._clock.now()
        catalog = self._catalog.get()
        with self._store.transaction() as tx:
            results = [
                r
                for r in tx.results_of_patient(patient_id, ResultFilter(), None)
                if r.status not in ("registered", "cancelled")
            ]
            ids = [r.id for r in results]
            decisions = tx.decisions_for_results(ids)
            corrections = tx.open_correction_counts(ids)
            tx.write_audit(
                [
                    audit_event(
                        principal,
                        now,
                        AuditAction.LIST,
                        "self_access",
                        patient_id=r.patient_id,
                        result_id=r.id,
                    )
                    for r in results
                ]
            )
        out = []
        for r in results:
            item = catalog.items.get(r.item_code or "")
            inst = catalog.institutions.get(r.institution)
            out.append(
                MyResult(
                    result=r,
                    item_name=item.name if item else r.local_name,
                    institution_name=inst.name if inst else r.institution,
                    decisions=tuple(decisions.get(r.id, ())),
                    open_corrections=corrections.get(r.id, 0),
                )
            )
        return out

    def my_report(self, principal: Principal, result_id: int, *, download: bool = False) -> Report:
        self._require_patient(principal)
        report = self._retrieval.open_report(principal, result_id, "self_access")
        if download:
            with self._store.transaction() as tx:
                tx.write_audit(
                    [
                        audit_event(
                            principal,
                            self._clock.now(),
                            AuditAction.DOWNLOAD,
                            "self_access",
                            patient_id=report.result.patient_id,
                            result_id=result_id,
                        )
                    ]
                )
        return report

    def my_decisions(self, principal: Principal, result_id: int) -> list[DecisionFact]:
        self._require_patient(principal)
        with self._store.transaction() as tx:
            return tx.decisions_for_results([result_id]).get(result_id, [])

    def who_read_my_results(self, principal: Principal, limit: int = 200) -> list[ReaderEntry]:
        """Reads of my results by others (from the audit), reader names masked,
        institutions named."""
        patient_id = self._require_patient(principal)
        catalog = self._catalog.get()
        rows = self._retrieval.audit_trail(
            principal, AuditQuery(patient_id=patient_id, limit=limit)
        )
        out = []
        for r in rows:
            if r.role == str(Role.PATIENT):
                continue
            role = Role(r.role) if r.role in Role._value2member_map_ else None
            inst = catalog.institutions.get(r.institution or "")
            out.append(
                ReaderEntry(
                    at=r.at,
                    reader=f"{mask_actor(r.actor_name)}（{ROLE_READER_LABEL[role] if role else r.role}）",
                    institution_name=inst.name if inst else (r.institution or "—"),
                    item_name=r.item_name,
                    action=_ACTION_LABELS.get(r.action, r.action),
                    purpose=_OWN_PURPOSES.get(r.purpose) or self.purposes.label(r.purpose),
                    outcome="已拒绝" if r.outcome == "denied" else "",
                )
            )
        return out

    def display_name(self, principal: Principal) -> str:
        """The patient's own name, in full (their own record)."""
        patient_id = self._require_patient(principal)
        with self._store.transaction() as tx:
            p = tx.patient(patient_id) or {}
        if p.get("name_enc"):
            return self._vault.decrypt(str(p["name_enc"]))
        return mask_name(str(p.get("name_masked", "")))

    def identifier_kinds(self) -> list[tuple[str, str]]:
        return [
            (str(IdentifierKind.NATIONAL_ID), "居民身份证"),
            (str(IdentifierKind.INSURANCE), "医保号"),
            (str(IdentifierKind.HEALTH_CARD), "电子健康卡"),
        ]


class AccountsForPortal:
    """``PatientAccounts`` on top of the accounts service (``container.accounts``)."""

    def __init__(self, accounts: Any) -> None:
        self._accounts = accounts

    def create_patient_account(self, patient_id: int, display_name: str, by: Principal) -> int:
        from huren.services.accounts import NewAccount

        created = self._accounts.create_account(
            NewAccount(
                f"pt{patient_id}-{secrets.token_hex(3)}",
                display_name,
                Role.PATIENT,
                patient_id=patient_id,
            ),
            generate_password=False,
            actor=Actor.of(by),
        )
        return int(created.account.id)

    def principal(self, account_id: int) -> Principal:
        record = self._accounts.store.account_by_id(account_id)
        if record is None or not record.active:
            raise Unauthorized("账号不存在或已停用")
        p: Principal = record.principal()
        return p
