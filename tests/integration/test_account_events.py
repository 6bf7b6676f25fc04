"""``account_event``: who created, deactivated or changed an account, an API key or a CDS
client — written in the transaction of the change. Each change writes exactly one event
naming its actor; a change refused by a check writes none; a change whose event cannot be
written is not kept (the store raises after the change inside the transaction, or the
database refuses the event row). On SQLite and, with HUREN_TEST_DATABASE_URL, PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Connection, func, select
from sqlalchemy.exc import IntegrityError

from huren.adapters.db import accounts as db_accounts
from huren.adapters.db.accounts import insert_event
from huren.adapters.db.tables import account, account_event, api_key, cds_client
from huren.bootstrap import Container
from huren.domain.accounts import AccountAction, AccountEvent, Actor, Role
from huren.domain.errors import DomainError
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.services.accounts import NewAccount
from tests.e2e.test_cds_client_jwt import SPEC_JWKS, Signer
from tests.fixtures.actors import SEED
from tests.fixtures.results import ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B

HIS = "https://his.hosp-a.example/"


def events(world: Container) -> list[Any]:
    with world.engine.connect() as c:
        return list(c.execute(select(account_event).order_by(account_event.c.id)).all())


def count(world: Container) -> int:
    with world.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(account_event)).scalar_one())


@pytest.fixture
def admin(world: Container) -> Actor:
    """An institution administrator of hospital A, as the actor of a signed-in change."""
    created = world.accounts.create_account(
        NewAccount("admin-a", "王主任", Role.INSTITUTION_ADMIN, institution=HOSP_A),
        generate_password=False,
        actor=SEED,
    )
    return Actor.of(created.account.principal())


@pytest.fixture
def lis(world: Container) -> str:
    """Hospital A's interface account ``lis-a`` with one key (its prefix returned)."""
    created = world.accounts.create_integration(HOSP_A, "lis-a", "LIS", "生产", actor=SEED)
    return created.record.prefix


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Container, Actor], str]  # makes the change; returns the expected subject
    action: AccountAction
    account: str  # the username of the account changed


def _create(w: Container, a: Actor) -> str:
    w.accounts.create_account(
        NewAccount("dr.li", "李医生", Role.CLINICIAN, institution=HOSP_A), actor=a
    )
    return "dr.li"


def _password(w: Container, a: Actor) -> str:
    w.accounts.set_password("lis-a", "a-new-password-42", actor=a)
    return "lis-a"


def _deactivate(w: Container, a: Actor) -> str:
    w.accounts.deactivate("lis-a", actor=a)
    return "lis-a"


def _new_key(w: Container, a: Actor) -> str:
    return w.accounts.create_api_key("lis-a", "测试环境", actor=a).record.prefix


def _revoke_key(w: Container, a: Actor) -> str:
    prefix = w.accounts.list_api_keys("lis-a")[0].prefix
    w.accounts.revoke_api_key(prefix, actor=a)
    return prefix


def _register(w: Container, a: Actor) -> str:
    w.cds_clients.register("lis-a", HIS, json.dumps(SPEC_JWKS), label="HIS", actor=a)
    return HIS


def _set_keys(w: Container, a: Actor) -> str:
    w.cds_clients.register("lis-a", HIS, json.dumps(SPEC_JWKS), actor=SEED)
    w.cds_clients.set_keys(HIS, Signer("ES384", kid="rotated").jwks(), actor=a)
    return HIS


def _revoke_client(w: Container, a: Actor) -> str:
    w.cds_clients.register("lis-a", HIS, json.dumps(SPEC_JWKS), actor=SEED)
    w.cds_clients.revoke(HIS, actor=a)
    return HIS


STEPS = [
    Step("create", _create, AccountAction.ACCOUNT_CREATED, "dr.li"),
    Step("password", _password, AccountAction.PASSWORD_SET, "lis-a"),
    Step("deactivate", _deactivate, AccountAction.ACCOUNT_DEACTIVATED, "lis-a"),
    Step("new-key", _new_key, AccountAction.API_KEY_CREATED, "lis-a"),
    Step("revoke-key", _revoke_key, AccountAction.API_KEY_REVOKED, "lis-a"),
    Step("register", _register, AccountAction.CDS_CLIENT_REGISTERED, "lis-a"),
    Step("set-keys", _set_keys, AccountAction.CDS_CLIENT_KEYS_REPLACED, "lis-a"),
    Step("revoke-client", _revoke_client, AccountAction.CDS_CLIENT_REVOKED, "lis-a"),
]


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
@pytest.mark.parametrize("who", ["admin", "command-line"])
def test_each_change_writes_exactly_one_event_naming_its_actor(
    world: Container, admin: Actor, lis: str, step: Step, who: str
) -> None:
    actor = admin if who == "admin" else Actor.command_line("ops-zhang")
    before = len(events(world))
    subject = step.run(world, actor)
    new = events(world)[before:]
    mine = [e for e in new if e.actor != SEED.username]  # not the step's own set-up
    assert len(mine) == 1, new
    (e,) = mine
    changed = world.accounts.account(step.account)
    assert (e.action, e.subject, e.account_id, e.institution_code) == (
        step.action.value,
        subject,
        changed.id,
        HOSP_A,
    )
    assert e.at == world.clock.now()
    if who == "admin":
        assert (e.actor_account_id, e.actor, e.actor_name, e.actor_role, e.actor_os_user) == (
            admin.account_id,
            "admin-a",
            "王主任",
            "institution_admin",
            "",
        )
    else:
        assert (e.actor_account_id, e.actor, e.actor_role, e.actor_os_user) == (
            None,
            "命令行",
            "command_line",
            "ops-zhang",
        )


def test_details_name_the_keys_and_labels_but_never_a_secret(
    world: Container, admin: Actor
) -> None:
    created = world.accounts.create_integration(HOSP_A, "lis-a", "LIS", "LIS 生产", actor=admin)
    world.cds_clients.register(
        "lis-a", HIS, json.dumps(SPEC_JWKS), jku="https://his.example/jwks", actor=admin
    )
    rows = events(world)
    by_action = {r.action: r for r in rows}
    assert by_action["account_created"].detail == f"接口系统，{HOSP_A}"
    assert by_action["api_key_created"].detail == "用途说明：LIS 生产"
    assert by_action["cds_client_registered"].detail == (
        "kid example-kid；jku https://his.example/jwks"
    )
    with world.engine.connect() as c:
        key_hash = c.execute(select(api_key.c.key_hash)).scalar_one()
    for r in rows:
        for value in r:
            assert created.key not in str(value)
            assert key_hash not in str(value)


def test_deactivating_an_account_already_deactivated_records_nothing(
    world: Container, admin: Actor, lis: str
) -> None:
    world.accounts.deactivate("lis-a", actor=admin)
    n = count(world)
    assert not world.accounts.deactivate("lis-a", actor=admin).active
    assert count(world) == n


def _bad_username(w: Container, a: Actor) -> None:
    w.accounts.create_account(NewAccount("x", "X", Role.CLINICIAN, institution=HOSP_A), actor=a)


def _taken_username(w: Container, a: Actor) -> None:
    w.accounts.create_account(
        NewAccount("lis-a", "X", Role.INTEGRATION, institution=HOSP_A), actor=a
    )


def _short_password(w: Container, a: Actor) -> None:
    w.accounts.set_password("lis-a", "short", actor=a)


def _unknown_account(w: Container, a: Actor) -> None:
    w.accounts.deactivate("nobody", actor=a)


def _key_for_a_person(w: Container, a: Actor) -> None:
    w.accounts.create_api_key("admin-a", actor=a)


def _long_label(w: Container, a: Actor) -> None:
    w.accounts.create_api_key("lis-a", "L" * 101, actor=a)


def _unknown_prefix(w: Container, a: Actor) -> None:
    w.accounts.revoke_api_key("hr_nothere", actor=a)


def _revoked_twice(w: Container, a: Actor) -> None:
    prefix = w.accounts.list_api_keys("lis-a")[0].prefix
    w.accounts.revoke_api_key(prefix, actor=SEED)
    w.accounts.revoke_api_key(prefix, actor=a)


def _private_jwk(w: Container, a: Actor) -> None:
    jwks = {"keys": [dict(SPEC_JWKS["keys"][0], d="private")]}
    w.cds_clients.register("lis-a", HIS, json.dumps(jwks), actor=a)


def _bad_rotation(w: Container, a: Actor) -> None:
    w.cds_clients.register("lis-a", HIS, json.dumps(SPEC_JWKS), actor=SEED)
    w.cds_clients.set_keys(HIS, '{"keys": "no"}', actor=a)


def _unknown_issuer(w: Container, a: Actor) -> None:
    w.cds_clients.set_keys("https://nobody.example/", json.dumps(SPEC_JWKS), actor=a)


def _client_revoked_twice(w: Container, a: Actor) -> None:
    w.cds_clients.register("lis-a", HIS, json.dumps(SPEC_JWKS), actor=SEED)
    w.cds_clients.revoke(HIS, actor=SEED)
    w.cds_clients.revoke(HIS, actor=a)


REFUSED = [
    _bad_username,
    _taken_username,
    _short_password,
    _unknown_account,
    _key_for_a_person,
    _long_label,
    _unknown_prefix,
    _revoked_twice,
    _private_jwk,
    _bad_rotation,
    _unknown_issuer,
    _client_revoked_twice,
]


@pytest.mark.parametrize("refused", REFUSED, ids=[f.__name__.strip("_") for f in REFUSED])
def test_a_refused_change_records_nothing(
    world: Container, admin: Actor, lis: str, refused: Callable[[Container, Actor], None]
) -> None:
    with pytest.raises(DomainError):
        refused(world, admin)
    assert [e for e in events(world) if e.actor == "admin-a"] == []


# ---------------------------------------------------------------- atomicity


def _state(world: Container) -> list[Any]:
    """Everything a change could touch, to compare before and after."""
    with world.engine.connect() as c:
        return [
            c.execute(select(account).order_by(account.c.id)).all(),
            c.execute(select(api_key).order_by(api_key.c.id)).all(),
            c.execute(select(cds_client).order_by(cds_client.c.id)).all(),
            c.execute(select(account_event).order_by(account_event.c.id)).all(),
        ]


class EventLost(Exception):
    pass


def _failing_event(c: Connection, event: AccountEvent, account_id: int) -> None:
    """The event row is inserted, then the transaction fails, as a crash or a lost
    connection after the change statement would make it."""
    insert_event(c, event, account_id)
    raise EventLost


# Each step with what it needs set up first (outside the failure).
ATOMIC = [
    ("create", _create, None),
    ("password", _password, None),
    ("deactivate", _deactivate, None),
    ("new-key", _new_key, None),
    ("revoke-key", _revoke_key, None),
    ("register", _register, None),
    (
        "set-keys",
        lambda w, a: w.cds_clients.set_keys(HIS, Signer().jwks(), actor=a),
        lambda w: w.cds_clients.register("lis-a", HIS, json.dumps(SPEC_JWKS), actor=SEED),
    ),
    (
        "revoke-client",
        lambda w, a: w.cds_clients.revoke(HIS, actor=a),
        lambda w: w.cds_clients.register("lis-a", HIS, json.dumps(SPEC_JWKS), actor=SEED),
    ),
]


@pytest.mark.parametrize(("name", "change", "setup"), ATOMIC, ids=[a[0] for a in ATOMIC])
def test_a_change_whose_event_fails_is_not_kept(
    world: Container,
    admin: Actor,
    lis: str,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    change: Callable[[Container, Actor], object],
    setup: Callable[[Container], object] | None,
) -> None:
    if setup is not None:
        setup(world)
    before = _state(world)
    # Both stores write their events with it (insert_recorded, update_recorded).
    monkeypatch.setattr(db_accounts, "insert_event", _failing_event)
    with pytest.raises(EventLost):
        change(world, admin)
    monkeypatch.undo()
    assert _state(world) == before
    # The key or client still works as before; the account is unchanged.
    assert world.accounts.account("lis-a").active


def test_an_event_row_the_database_refuses_undoes_the_change(world: Container, lis: str) -> None:
    """A constraint violation of the event row itself (NOT NULL ``actor``): the database
    refuses it, and the account and the revocation made before it in the same
    transaction are rolled back with it."""
    broken = Actor(None, None, "?", "system")  # type: ignore[arg-type]
    before = _state(world)
    with pytest.raises(IntegrityError):
        world.accounts.create_account(
            NewAccount("dr.li", "李医生", Role.CLINICIAN, institution=HOSP_A), actor=broken
        )
    with pytest.raises(IntegrityError):
        world.accounts.revoke_api_key(lis, actor=broken)
    assert _state(world) == before
    assert world.accounts.list_api_keys("lis-a")[0].revoked_at is None


# ---------------------------------------------------------------- reading


def test_history_is_newest_first_limited_and_per_institution(
    world: Container, admin: Actor, lis: str
) -> None:
    world.accounts.create_integration(HOSP_B, "his-b", "HIS", actor=SEED)
    for n in range(4):
        world.accounts.create_api_key("lis-a", f"第 {n} 把", actor=admin)
    recent = world.accounts.history(HOSP_A, limit=3)
    assert [e.detail for e in recent] == [
        "用途说明：第 3 把",
        "用途说明：第 2 把",
        "用途说明：第 1 把",
    ]
    assert all(e.institution == HOSP_A for e in world.accounts.history(HOSP_A, limit=100))
    assert {e.account_username for e in world.accounts.history(HOSP_B)} == {"his-b"}
    everything = world.accounts.history(None, limit=1000)
    assert {e.institution for e in everything} == {HOSP_A, HOSP_B}
    assert recent[0].actor == admin
    assert recent[0].action_label == "创建 API 密钥"
    for bad in (0, 1001):
        with pytest.raises(DomainError) as caught:
            world.accounts.history(HOSP_A, limit=bad)
        assert [p.field for p in caught.value.problems] == ["limit"]
    for unknown in ("NOPE", "H\x00", "x" * 40):
        with pytest.raises(DomainError) as caught:
            world.accounts.history(unknown)
        assert [p.field for p in caught.value.problems] == ["institution"]


def test_a_patient_account_opened_at_the_counter_names_the_administrator(
    world: Container,
) -> None:
    store(world, lab_panel(HOSP_A))
    admin = world.accounts.create_account(
        NewAccount("admin-a", "王主任", Role.INSTITUTION_ADMIN, institution=HOSP_A),
        generate_password=False,
        actor=SEED,
    ).account
    world.sharing.portal.bind(
        admin.principal(),
        PatientIdentifier(IdentifierKind.NATIONAL_ID, ZHANG_SAN_ID),
        "13812345678",
    )
    last = events(world)[-1]
    assert (last.action, last.actor, last.actor_account_id, last.actor_role) == (
        "account_created",
        "admin-a",
        admin.id,
        "institution_admin",
    )
    assert last.detail.startswith("患者，患者编号 ")
