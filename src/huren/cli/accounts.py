"""``huren accounts``: an operator creates users and integration API keys from the command
line (e.g. for a new hospital's interface engine). Passwords and keys are printed once
and stored only as hashes; there is no default password."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from huren.bootstrap import Container, build
from huren.config import get_settings
from huren.domain.accounts import ROLE_LABELS, Role
from huren.domain.errors import DomainError
from huren.services.accounts import NewAccount, describe_binding

app = typer.Typer(help="账号与 API 密钥: 创建、列出、停用、吊销", no_args_is_help=True)
keys_app = typer.Typer(help="接口系统 API 密钥", no_args_is_help=True)
app.add_typer(keys_app, name="api-key")


@contextmanager
def _container() -> Iterator[Container]:
    container = build(get_settings())
    try:
        yield container
    except DomainError as exc:
        typer.echo(f"错误: {exc.message}", err=True)
        for p in exc.problems:
            typer.echo(f"  {p.field}: {p.message}", err=True)
        raise typer.Exit(1) from exc
    finally:
        container.close()


@app.command("create")
def create(
    username: Annotated[str, typer.Argument(help="登录名")],
    role: Annotated[Role, typer.Option(help="角色")],
    name: Annotated[str, typer.Option("--name", help="显示名称，如 王医生")],
    institution: Annotated[
        str | None, typer.Option(help="机构代码（医师、机构管理员、接口系统）")
    ] = None,
    jurisdiction: Annotated[
        str | None, typer.Option(help="辖区代码（质控中心、卫健委、医保、运维）")
    ] = None,
    department: Annotated[str | None, typer.Option(help="科室")] = None,
    patient_id: Annotated[int | None, typer.Option(help="患者编号（患者账号）")] = None,
    password: Annotated[
        str | None,
        typer.Option(help="初始密码（至少 10 位）；省略则随机生成并只显示这一次", hidden=False),
    ] = None,
) -> None:
    """创建账号；密码未给出时随机生成并只打印一次。"""
    with _container() as c:
        created = c.accounts.create_account(
            NewAccount(
                username,
                name,
                role,
                institution=institution,
                jurisdiction=jurisdiction,
                department=department,
                patient_id=patient_id,
            ),
            password,
        )
        a = created.account
        typer.echo(f"已创建账号 {a.username}（{ROLE_LABELS[a.role]}，{describe_binding(a)}）")
        if created.password:
            typer.echo(f"初始密码（只显示这一次，请妥善转交）: {created.password}")


@app.command("list")
def list_accounts() -> None:
    """列出全部账号。"""
    with _container() as c:
        for a in c.accounts.list_accounts():
            state = "有效" if a.active else "已停用"
            typer.echo(
                f"{a.username}\t{ROLE_LABELS[a.role]}\t{describe_binding(a)}\t{a.display_name}\t{state}"
            )


@app.command("deactivate")
def deactivate(username: Annotated[str, typer.Argument(help="登录名")]) -> None:
    """停用账号：其令牌与 API 密钥立即失效。"""
    with _container() as c:
        c.accounts.deactivate(username)
        typer.echo(f"已停用账号 {username}")


@app.command("set-password")
def set_password(
    username: Annotated[str, typer.Argument(help="登录名")],
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="新密码")
    ],
) -> None:
    """重设密码。"""
    with _container() as c:
        c.accounts.set_password(username, password)
        typer.echo(f"已重设 {username} 的密码")


@keys_app.command("create")
def create_key(
    institution: Annotated[str, typer.Option(help="机构代码")],
    username: Annotated[
        str | None, typer.Option(help="接口系统账号名；默认 <机构代码>-integration，不存在则创建")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="显示名称，如 某医院 LIS 接口")] = None,
    label: Annotated[str, typer.Option(help="密钥用途说明，如 LIS 生产环境")] = "",
) -> None:
    """为机构的接口系统创建 API 密钥；密钥只打印这一次。"""
    user = username or f"{institution}-integration"
    with _container() as c:
        # Checked before a key is made: a key of another institution's account, even
        # revoked at once, would stay on record.
        existing = next((a for a in c.accounts.list_accounts() if a.username == user), None)
        if existing is not None and existing.institution != institution:
            typer.echo(f"错误: 账号 {user} 属于机构 {existing.institution or '（无）'}", err=True)
            raise typer.Exit(1)
        created = c.accounts.create_integration(
            institution, user, name or f"{institution} 接口系统", label
        )
        typer.echo(f"已为 {user}（{institution}）创建 API 密钥 {created.record.prefix}")
        typer.echo(f"API 密钥（只显示这一次）: {created.key}")
        typer.echo(
            "用法: 请求头 X-API-Key: <密钥>，或 OAuth2 client_credentials（client_id 为账号名）"
        )


@keys_app.command("list")
def list_keys(
    username: Annotated[str | None, typer.Option(help="只列该账号的密钥")] = None,
) -> None:
    """列出 API 密钥（只显示前缀）。"""
    with _container() as c:
        owners = {a.id: a.username for a in c.accounts.list_accounts()}
        for k in c.accounts.list_api_keys(username):
            state = f"已吊销 {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "有效"
            typer.echo(f"{k.prefix}\t{owners.get(k.account_id, '?')}\t{k.label}\t{state}")


@keys_app.command("revoke")
def revoke_key(prefix: Annotated[str, typer.Argument(help="密钥前缀，如 hr_1a2b3c4d5e")]) -> None:
    """吊销 API 密钥，立即生效。"""
    with _container() as c:
        c.accounts.revoke_api_key(prefix)
        typer.echo(f"已吊销 API 密钥 {prefix}")
