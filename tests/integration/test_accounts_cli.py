"""``huren accounts``: passwords and API keys printed once, stored hashed, usable; every
change recorded with the command line (and the OS user) as its actor."""

from __future__ import annotations

import json
import os
import pwd
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from huren.bootstrap import Container
from huren.cli import accounts as cli
from huren.domain.accounts import Actor
from huren.domain.china_time import CHINA_TZ
from huren.domain.errors import Unauthorized
from tests.e2e.test_cds_client_jwt import SPEC_JWKS, Signer
from tests.fixtures.world import HOSP_A, HOSP_B

runner = CliRunner()


def _fails(args: list[str]) -> str:
    """The output of a command that must be refused: exit status 1, no traceback."""
    r = runner.invoke(cli.app, args)
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.output


@pytest.fixture
def cli_world(world: Container, monkeypatch: pytest.MonkeyPatch) -> Container:
    monkeypatch.setattr(cli, "get_settings", lambda: world.settings)
    return world


def test_create_user_prints_a_generated_password_once_and_stores_its_hash(
    cli_world: Container,
) -> None:
    r = runner.invoke(
        cli.app,
        ["create", "dr.li", "--role", "clinician", "--name", "李医生", "--institution", HOSP_A],
    )
    assert r.exit_code == 0, r.output
    password = re.search(r"初始密码.*: (\S+)", r.output).group(1)  # type: ignore[union-attr]
    stored = cli_world.accounts.account("dr.li")
    assert stored.password_hash is not None
    assert password not in stored.password_hash
    assert cli_world.accounts.authenticate_password("dr.li", password).institution == HOSP_A


def test_create_user_with_unknown_institution_fails_naming_the_field(cli_world: Container) -> None:
    r = runner.invoke(
        cli.app, ["create", "dr.li", "--role", "clinician", "--name", "李", "--institution", "X"]
    )
    assert r.exit_code == 1
    assert "institution" in r.output
    assert cli_world.accounts.list_accounts() == []


def test_api_key_is_printed_once_and_revocable(cli_world: Container) -> None:
    r = runner.invoke(cli.app, ["api-key", "create", "--institution", HOSP_A, "--label", "LIS"])
    assert r.exit_code == 0, r.output
    key = re.search(r"API 密钥（只显示这一次）: (\S+)", r.output).group(1)  # type: ignore[union-attr]
    principal = cli_world.accounts.principal_from_api_key(key)
    assert (principal.role.value, principal.institution) == ("integration", HOSP_A)
    listing = runner.invoke(cli.app, ["api-key", "list"]).output
    assert key not in listing
    prefix = cli_world.accounts.list_api_keys()[0].prefix
    assert runner.invoke(cli.app, ["api-key", "revoke", prefix]).exit_code == 0
    with pytest.raises(Unauthorized):
        cli_world.accounts.principal_from_api_key(key)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["create", "dr.li\n", "--role", "clinician", "--name", "李", "--institution", HOSP_A],
         "username"),
        (["create", "dr.li", "--role", "clinician", "--name", "李" * 101, "--institution", HOSP_A],
         "display_name"),
        (["create", "dr.li", "--role", "clinician", "--name", "李\x00", "--institution", HOSP_A],
         "display_name"),
        (["create", "dr.li", "--role", "clinician", "--name", "李", "--institution", HOSP_A,
          "--department", "科" * 33], "department"),
        (["create", "dr.li", "--role", "clinician", "--name", "李", "--institution", "H\x00"],
         "institution"),
        (["create", "pt.li", "--role", "patient", "--name", "李", "--patient-id", str(2**70)],
         "patient_id"),
        # No such patient: the account would have shown an empty record for ever, and
        # the results of whichever patient later got that id.
        (["create", "pt.li", "--role", "patient", "--name", "李", "--patient-id", "987654"],
         "patient_id"),
        (["create", "pt.li", "--role", "patient", "--name", "李", "--patient-id", "1",
          "--jurisdiction", "HE"], "jurisdiction"),
        (["api-key", "create", "--institution", HOSP_A, "--label", "L" * 101], "label"),
    ],
)  # fmt: skip
def test_odd_account_values_are_refused_naming_the_field_and_nothing_is_stored(
    cli_world: Container, args: list[str], field: str
) -> None:
    assert f"{field}:" in _fails(args)
    assert cli_world.accounts.list_accounts() == []
    assert cli_world.accounts.list_api_keys() == []


@pytest.mark.parametrize(
    "args", [["deactivate", "x\x00y"], ["api-key", "revoke", "hr_\x00"], ["api-key", "list",
                                                                              "--username", "u\x00"]]
)  # fmt: skip
def test_a_name_with_a_nul_is_simply_not_found(cli_world: Container, args: list[str]) -> None:
    assert "不存在" in _fails(args)


def test_api_key_for_another_institutions_account_is_refused_before_any_key_is_made(
    cli_world: Container,
) -> None:
    assert runner.invoke(cli.app, ["api-key", "create", "--institution", HOSP_A]).exit_code == 0
    keys = cli_world.accounts.list_api_keys()
    refused = _fails(
        ["api-key", "create", "--institution", HOSP_B, "--username", f"{HOSP_A}-integration"]
    )
    assert f"属于机构 {HOSP_A}" in refused
    assert cli_world.accounts.list_api_keys() == keys  # not even a revoked one


# ---------------------------------------------------------------- the record of changes


def _me() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def test_every_command_records_the_command_line_and_the_os_user(
    cli_world: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUDO_USER", raising=False)
    jwks, rotated = tmp_path / "jwks.json", tmp_path / "rotated.json"
    jwks.write_text(json.dumps(SPEC_JWKS), encoding="utf-8")
    rotated.write_text(Signer(kid="his-key-2").jwks(), encoding="utf-8")
    his = "https://his.hosp-a.example/"
    commands = [
        ["create", "dr.li", "--role", "clinician", "--name", "李医生", "--institution", HOSP_A],
        ["set-password", "dr.li", "--password", "a-new-password-42"],
        ["deactivate", "dr.li"],
        ["api-key", "create", "--institution", HOSP_A, "--label", "LIS"],
        ["cds-client", "add", "--issuer", his, "--jwks", str(jwks), "--institution", HOSP_A],
        ["cds-client", "set-keys", his, "--jwks", str(rotated)],
        ["cds-client", "revoke", his],
    ]
    for args in commands:
        r = runner.invoke(cli.app, args)
        assert r.exit_code == 0, (args, r.output)
    prefix = cli_world.accounts.list_api_keys()[0].prefix
    assert runner.invoke(cli.app, ["api-key", "revoke", prefix]).exit_code == 0
    # Deactivating again changes nothing, and records nothing.
    again = runner.invoke(cli.app, ["deactivate", "dr.li"])
    assert again.exit_code == 0
    assert "原已停用" in again.output

    events = cli_world.accounts.history(None, limit=100)
    assert [e.action.value for e in reversed(events)] == [
        "account_created",
        "password_set",
        "account_deactivated",
        "account_created",  # HOSP_A-integration, made by api-key create
        "api_key_created",
        "cds_client_registered",
        "cds_client_keys_replaced",
        "cds_client_revoked",
        "api_key_revoked",
    ]
    assert {e.actor for e in events} == {Actor.command_line(_me())}
    assert {(e.actor.username, e.actor.role, e.actor.account_id) for e in events} == {
        ("命令行", "command_line", None)
    }
    assert events[0].subject == prefix
    assert events[1].subject == his
    assert events[2].detail == "kid his-key-2"

    # huren accounts history: newest first, limited, per institution.
    r = runner.invoke(cli.app, ["history", "--institution", HOSP_A, "--limit", "2"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].split("\t")[1:4] == [f"命令行（OS 用户 {_me()}）", "吊销 API 密钥", prefix]
    # The command's own clock, in China time.
    assert lines[0].split("\t")[0] == f"{events[0].at.astimezone(CHINA_TZ):%Y-%m-%d %H:%M:%S}"
    assert lines[1].split("\t")[2:4] == ["吊销 CDS 客户端", his]
    assert runner.invoke(cli.app, ["history", "--institution", HOSP_B]).output == "尚无变更记录\n"
    assert len(runner.invoke(cli.app, ["history"]).output.strip().splitlines()) == 9


@pytest.mark.parametrize(
    ("args", "field"),
    [(["history", "--limit", "0"], "limit"), (["history", "--institution", "H\x00"], "institution"),
     (["history", "--institution", "NOPE"], "institution")],
)  # fmt: skip
def test_history_refuses_a_bad_limit_or_institution_naming_it(
    cli_world: Container, args: list[str], field: str
) -> None:
    assert f"{field}:" in _fails(args)


def test_a_refused_command_records_nothing(cli_world: Container) -> None:
    _fails(["api-key", "create", "--institution", HOSP_A, "--label", "L" * 101])
    _fails(["api-key", "revoke", "hr_nothere"])
    assert cli_world.accounts.history(None) == []


def test_the_os_user_names_who_ran_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice-not-me")
    assert cli.os_user() == f"{_me()}（sudo 自 alice-not-me）"
    monkeypatch.setenv("USER", "someone-else")  # $USER is not believed
    monkeypatch.delenv("SUDO_USER")
    assert cli.os_user() == _me()
