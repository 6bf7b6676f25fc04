"""``huren accounts``: an operator creates users and integration API keys from the command
line (e.g. for a new hospital's interface engine), and registers the public keys of CDS
clients that sign their own JWTs. Passwords and keys are printed once and stored only as
hashes; there is no default password.

Every change is recorded in ``account_event`` with the command line as its actor (命令行,
with the OS user running the command); ``huren accounts history`` lists them."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from huren.bootstrap import Container, build
from huren.cli.files import input_file_problem
from huren.config import get_settings
from huren.domain.accounts import ROLE_LABELS, Actor, Role
from huren.domain.china_time import CHINA_TZ
from huren.domain.errors import DomainError
from huren.services.accounts import MAX_HISTORY, NewAccount, describe_binding

app = typer.Typer(help="账号与 API 密钥: 创建、列出、停用、吊销", no_args_is_help=True)
keys_app = typer.Typer(help="接口系统 API 密钥", no_args_is_help=True)
app.add_typer(keys_app, name="api-key")
cds_app = typer.Typer(
    help="以自有签名 JWT 认证的 CDS 客户端（HIS）：登记公钥、轮换、吊销", no_args_is_help=True
)
app.add_typer(cds_app, name="cds-client")


def os_user() -> str:
    """The OS user running the command: the effective user's name from the password
    database (not $USER, which anyone can set), and the user who ran sudo, if any."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    sudo = os.environ.get("SUDO_USER", "")
    return f"{name}（sudo 自 {sudo}）" if sudo and sudo != name else name


def command_line() -> Actor:
    return Actor.command_line(os_user())


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
            actor=command_line(),
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
        before = c.accounts.account(username)
        c.accounts.deactivate(username, actor=command_line())
        typer.echo(f"账号 {username} 原已停用" if not before.active else f"已停用账号 {username}")


@app.command("set-password")
def set_password(
    username: Annotated[str, typer.Argument(help="登录名")],
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="新密码")
    ],
) -> None:
    """重设密码。"""
    with _container() as c:
        c.accounts.set_password(username, password, actor=command_line())
        typer.echo(f"已重设 {username} 的密码")


def _interface_account(c: Container, institution: str, username: str | None) -> tuple[str, bool]:
    """The institution's interface account name (``<机构代码>-integration`` unless given)
    and whether it exists; exits when that account belongs to another institution."""
    user = username or f"{institution}-integration"
    existing = c.accounts.by_username(user)
    if existing is not None and existing.institution != institution:
        typer.echo(f"错误: 账号 {user} 属于机构 {existing.institution or '（无）'}", err=True)
        raise typer.Exit(1)
    return user, existing is not None


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
    with _container() as c:
        # Checked before a key is made: a key of another institution's account, even
        # revoked at once, would stay on record.
        user, _ = _interface_account(c, institution, username)
        created = c.accounts.create_integration(
            institution, user, name or f"{institution} 接口系统", label, actor=command_line()
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
        c.accounts.revoke_api_key(prefix, actor=command_line())
        typer.echo(f"已吊销 API 密钥 {prefix}")


MAX_TEXT_FILE = 256 * 1024


def read_text_file(path: Path, option: str) -> str:
    """A small UTF-8 text file's content, or exit with the reason."""
    problem = input_file_problem(path)
    if problem is None and path.stat().st_size > MAX_TEXT_FILE:
        problem = f"文件 {path} 过大（JWK Set 应在 {MAX_TEXT_FILE // 1024} KB 以内）"
    if problem is None:
        try:
            return path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            problem = f"文件 {path} 不是 UTF-8 文本"
    typer.echo(f"错误: {option}: {problem}", err=True)
    raise typer.Exit(1)


@cds_app.command("add")
def add_cds_client(
    issuer: Annotated[str, typer.Option(help="CDS 客户端 JWT 的 iss（通常是 HIS 的 URL）")],
    jwks: Annotated[Path, typer.Option(help="客户端公钥 JWK Set 文件（JSON，只含公钥）")],
    institution: Annotated[str, typer.Option(help="开单机构代码")],
    username: Annotated[
        str | None, typer.Option(help="接口系统账号名；默认 <机构代码>-integration，不存在则创建")
    ] = None,
    jku: Annotated[str, typer.Option(help="客户端 JWT 头中 jku 的允许值（可选）")] = "",
    label: Annotated[str, typer.Option(help="用途说明，如 HIS 医嘱系统生产环境")] = "",
) -> None:
    """登记以自有 JWT 认证的 CDS 客户端（CDS Hooks 2.0 Trusting CDS Clients）。"""
    text = read_text_file(jwks, "--jwks")
    with _container() as c:
        user, exists = _interface_account(c, institution, username)
        if any(r.issuer == issuer.strip() for r in c.cds_clients.list_clients()):
            typer.echo(f"错误: CDS 客户端 {issuer} 已登记；更换密钥请用 set-keys", err=True)
            raise typer.Exit(1)
        actor = command_line()
        if not exists:
            c.accounts.create_account(
                NewAccount(
                    user, f"{institution} 接口系统", Role.INTEGRATION, institution=institution
                ),
                actor=actor,
            )
        record = c.cds_clients.register(user, issuer, text, jku, label, actor=actor)
        typer.echo(f"已登记 CDS 客户端 {record.issuer}，以 {user}（{institution}）的身份调用")
        typer.echo(
            "用法: 客户端每次调用以私钥签发 JWT（aud 为所调用的服务地址，exp 不超过 5 分钟，"
            "jti 不重复），放在请求头 Authorization: Bearer <JWT>"
        )


@cds_app.command("list")
def list_cds_clients() -> None:
    """列出已登记的 CDS 客户端。"""
    with _container() as c:
        owners = {a.id: a for a in c.accounts.list_accounts()}
        for r in c.cds_clients.list_clients():
            owner = owners.get(r.account_id)
            state = f"已吊销 {r.revoked_at:%Y-%m-%d}" if r.revoked_at else "有效"
            who = f"{owner.username}（{owner.institution}）" if owner else "?"
            typer.echo(f"{r.issuer}\t{who}\t{r.jku or '-'}\t{r.label}\t{state}")


@cds_app.command("set-keys")
def set_cds_client_keys(
    issuer: Annotated[str, typer.Argument(help="CDS 客户端的 iss")],
    jwks: Annotated[Path, typer.Option(help="新的公钥 JWK Set 文件")],
    jku: Annotated[str, typer.Option(help="jku 的允许值（可选）")] = "",
) -> None:
    """更换 CDS 客户端的公钥（密钥轮换）：新 JWK Set 宜同时含新旧两把公钥。"""
    text = read_text_file(jwks, "--jwks")
    with _container() as c:
        c.cds_clients.set_keys(issuer, text, jku, actor=command_line())
        typer.echo(f"已更换 CDS 客户端 {issuer} 的公钥")


@cds_app.command("revoke")
def revoke_cds_client(issuer: Annotated[str, typer.Argument(help="CDS 客户端的 iss")]) -> None:
    """吊销 CDS 客户端，立即生效。"""
    with _container() as c:
        c.cds_clients.revoke(issuer, actor=command_line())
        typer.echo(f"已吊销 CDS 客户端 {issuer}")


@app.command("history")
def history(
    institution: Annotated[
        str | None, typer.Option(help="只列该机构账号的变更；省略则列全部")
    ] = None,
    limit: Annotated[int, typer.Option(help=f"最多列出条数（1–{MAX_HISTORY}）")] = 50,
) -> None:
    """账号与接口凭据的变更记录（谁、何时、做了什么），最新的在前。"""
    with _container() as c:
        events = c.accounts.history(institution, limit)
        if not events:
            typer.echo("尚无变更记录")
        for e in events:
            typer.echo(
                "\t".join(
                    (
                        f"{e.at.astimezone(CHINA_TZ):%Y-%m-%d %H:%M:%S}",
                        e.actor.describe(),
                        e.action_label,
                        e.subject,
                        f"{e.account_username}（{e.institution or '—'}）",
                        e.detail or "—",
                    )
                )
            )
