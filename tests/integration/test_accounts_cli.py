"""``huren accounts``: passwords and API keys printed once, stored hashed, usable."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from huren.bootstrap import Container
from huren.cli import accounts as cli
from huren.domain.errors import Unauthorized
from tests.fixtures.world import HOSP_A

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
