"""``huren accounts``: passwords and API keys printed once, stored hashed, usable."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from huren.bootstrap import Container
from huren.cli import accounts as cli
from huren.domain.errors import Unauthorized
from tests.fixtures.world import HOSP_A, HOSP_B

runner = CliRunner()


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
    r = runner.invoke(cli.app, args)
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert f"{field}:" in r.output
    assert cli_world.accounts.list_accounts() == []
    assert cli_world.accounts.list_api_keys() == []


@pytest.mark.parametrize(
    "args", [["deactivate", "x\x00y"], ["api-key", "revoke", "hr_\x00"], ["api-key", "list",
                                                                              "--username", "u\x00"]]
)  # fmt: skip
def test_a_name_with_a_nul_is_simply_not_found(cli_world: Container, args: list[str]) -> None:
    r = runner.invoke(cli.app, args)
    assert r.exit_code == 1, r.output
    assert "不存在" in r.output


def test_api_key_for_another_institutions_account_is_refused_before_any_key_is_made(
    cli_world: Container,
) -> None:
    assert runner.invoke(cli.app, ["api-key", "create", "--institution", HOSP_A]).exit_code == 0
    keys = cli_world.accounts.list_api_keys()
    r = runner.invoke(
        cli.app,
        ["api-key", "create", "--institution", HOSP_B, "--username", f"{HOSP_A}-integration"],
    )
    assert r.exit_code == 1
    assert f"属于机构 {HOSP_A}" in r.output
    assert cli_world.accounts.list_api_keys() == keys  # not even a revoked one
