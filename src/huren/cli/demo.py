"""``huren demo``: a fresh embedded database with a synthetic province, the story of one
patient, generated accounts, and the server — one command for a newcomer."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer
from pydantic import SecretStr

from huren.adapters.crypto import new_key
from huren.adapters.db import engine as db_engine
from huren.bootstrap import Container, build
from huren.cli.demo_story import (
    PATIENT_NAME,
    STORY_ITEMS,
    Story,
    send_interface_traffic,
    send_story,
)
from huren.cli.synth import fill_demo_database
from huren.config import Settings
from huren.domain.accounts import ROLE_LABELS, Actor, Role
from huren.domain.identity import IdentifierKind, PatientIdentifier, mask_id
from huren.services.accounts import NewAccount


def _fresh_directory(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("huren.db", "huren.db-wal", "huren.db-shm"):
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / "data", ignore_errors=True)


def _write_env(directory: Path, settings: Settings) -> Path:
    """The demo's settings, keys included, so ``huren serve`` can reopen the same data."""
    path = directory / "demo.env"
    lines = [
        f"HUREN_DATABASE_URL={settings.database_url}",
        f"HUREN_DATA_DIR={settings.data_dir}",
        f"HUREN_IDENTIFIER_HASH_KEY={settings.identifier_hash_key.get_secret_value()}",
        f"HUREN_IDENTIFIER_ENCRYPTION_KEY={settings.identifier_encryption_key.get_secret_value()}",
        f"HUREN_TOKEN_SIGNING_KEY={settings.token_signing_key.get_secret_value()}",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    return path


def demo_settings(directory: Path, host: str, port: int) -> Settings:
    directory = directory.resolve()
    return Settings(
        database_url=f"sqlite:///{directory / 'huren.db'}",
        data_dir=directory / "data",
        host=host,
        port=port,
        identifier_hash_key=SecretStr(new_key()),
        identifier_encryption_key=SecretStr(new_key()),
        token_signing_key=SecretStr(new_key()),
        jurisdiction="HE",
    )


def create_demo_accounts(c: Container, story: Story) -> list[tuple[str, str, str, str]]:
    """(username, password, role label, bound to) for each demo account; passwords are
    generated for this run (there is no fixed demo password)."""
    patient_ids = c.results.find_patients(
        PatientIdentifier(IdentifierKind.NATIONAL_ID, story.national_id)
    )
    wanted = [
        NewAccount(
            "doctor-b",
            "张明（消化内科）",
            Role.CLINICIAN,
            institution=story.orderer,
            department="消化内科",
        ),
        NewAccount(
            "admin-a",
            f"{story.producer_name}信息科",
            Role.INSTITUTION_ADMIN,
            institution=story.producer,
        ),
        NewAccount("regulator-he", "河北省卫生健康委员会医政处", Role.REGULATOR, jurisdiction="HE"),
        NewAccount("qc-he", "河北省临床检验中心", Role.QC_CENTRE, jurisdiction="HE"),
        NewAccount("insurer-he", "河北省医疗保障局", Role.INSURER, jurisdiction="HE"),
        NewAccount("patient-li", PATIENT_NAME, Role.PATIENT, patient_id=patient_ids[0]),
        NewAccount("operator", "平台运维", Role.OPERATOR),
    ]
    # The demo's seed accounts: no person creates them (account_event names 演示数据).
    seed = Actor.system("演示数据")
    rows = []
    for new in wanted:
        created = c.accounts.create_account(new, actor=seed)
        catalog = c.catalog.get()
        if new.institution:
            bound = catalog.institutions[new.institution].name
        elif new.jurisdiction:
            bound = catalog.graph.scopes[new.jurisdiction].name
        else:
            bound = "本人" if new.patient_id else "全平台"
        rows.append((new.username, created.password or "", ROLE_LABELS[new.role], bound))
    key = c.accounts.create_integration(
        story.producer, "his-a", f"{story.producer_name}接口引擎", actor=seed
    )
    rows.append(("his-a", key.key, ROLE_LABELS[Role.INTEGRATION], story.producer_name))
    return rows


def build_demo(
    directory: Path, host: str, port: int, *, seed: int, institutions: int, results: int
) -> tuple[Settings, Story, list[tuple[str, str, str, str]]]:
    _fresh_directory(directory)
    settings = demo_settings(directory, host, port)
    db_engine.make_engine(settings.database_url).dispose()
    db_engine.upgrade(settings.database_url)
    container = build(settings)
    try:
        t0 = time.perf_counter()
        typer.echo(f"生成合成数据: {institutions} 家机构、{results:,} 条检查检验结果 …")
        fill_demo_database(container, seed=seed, institutions=institutions, results=results)
        typer.echo(f"  完成，用时 {time.perf_counter() - t0:.1f} 秒")
        story = send_story(container)
        acks = send_interface_traffic(container, story)
        if acks != ["AA", "AE"]:
            raise RuntimeError(f"演示接口消息的应答不符合预期: {acks}")
        accounts = create_demo_accounts(container, story)
        container.monitoring.refresh()
    finally:
        container.close()
    _write_env(directory, settings)
    return settings, story, accounts


def story_text(settings: Settings, story: Story, accounts: list[tuple[str, str, str, str]]) -> str:
    base = f"http://{settings.host}:{settings.port}"
    items = ",".join(story.orderer_local_codes[i] for i in STORY_ITEMS)
    workbench = (
        f"{base}/workbench?patient={quote('national_id:' + story.national_id)}"
        f"&items={quote(items)}&institution={story.orderer}"
    )
    width = max(len(u) for u, *_ in accounts)
    listeners = [f"CDS Hooks {base}/cds-services", f"FHIR {base}/fhir/metadata"]
    if settings.start_mllp:
        listeners.append(f"HL7 MLLP {settings.mllp_host}:{settings.mllp_port}")
    if settings.start_dicom:
        listeners.append(
            f"DICOM {settings.dicom_ae_title}@{settings.dicom_host}:{settings.dicom_port}"
        )
    services = " · ".join(listeners)
    table = "\n".join(
        f"  {u.ljust(width)}  {p}  {role}（{bound}）" for u, p, role, bound in accounts
    )
    return f"""
HuRen 互认 演示已就绪: {base}

故事: 患者 {story.patient_name}（身份证 {mask_id(story.national_id)}）
  1. {story.producer_name} 已上传: 胸部CT平扫 {story.marks["YX-CT-001"]}（含影像）、肝功能 {story.marks["JY-SH-001"]}、血常规 {story.marks["JY-XY-001"]}。
  2. {story.orderer_name} 的接诊医师再次开具这三项。以 doctor-b 登录后打开互认工作台:
     {workbench}
     胸部CT与肝功能可互认（接受 → 得到电子病历文本）；血常规已超过参考时限，仅供参考。
  3. 监管视图: 以 regulator-he 登录后打开 {base}/dashboard
  4. 接口工程师: 以 admin-a 登录后打开 {base}/integration/messages?status=rejected（一条因缺少患者标识被拒收）、
     {base}/integration/unmapped（一个尚未对码的本地项目）与 {base}/integration/credentials（接口凭据）
  其他: 互认项目 {base}/catalog/items · 公开机构清单 {base}/public/institutions · API 文档 {base}/docs
        {services}

演示账号（本次生成，仅显示一次）:
{table}

演示密钥已生成并保存在 {Path(settings.database_url.removeprefix("sqlite:///")).parent / "demo.env"}（仅供演示，生产环境请自行配置）。
"""


def demo(
    host: Annotated[str, typer.Option(help="HTTP 监听地址")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP 端口")] = 8000,
    directory: Annotated[Path, typer.Option("--dir", help="演示数据目录（每次重建）")] = Path(
        "var/demo"
    ),
    seed: Annotated[int, typer.Option(help="合成数据随机种子")] = 20260615,
    institutions: Annotated[int, typer.Option(min=50, help="机构数量")] = 300,
    results: Annotated[int, typer.Option(min=1000, help="检查检验结果数量")] = 30_000,
    serve: Annotated[bool, typer.Option(help="建好后启动服务")] = True,
) -> None:
    """重建演示数据库（SQLite）、生成合成数据与演示账号，并启动服务。"""
    from huren.cli.server import PortTaken, require_free_ports, run_server

    if serve:
        # Before the data is made and the story printed with these ports as its own.
        try:
            require_free_ports(demo_settings(directory, host, port), host, port)
        except PortTaken as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from exc
    settings, story, accounts = build_demo(
        directory, host, port, seed=seed, institutions=institutions, results=results
    )
    typer.echo(story_text(settings, story, accounts))
    if serve:
        try:
            run_server(settings, host, port)
        except PortTaken as exc:  # taken while the data was made
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from exc
