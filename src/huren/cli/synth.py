"""``huren synth``: fill the database with a synthetic world (issue 3 item 8), and the
data step of ``huren demo`` (``fill_demo_database``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import typer

from huren.adapters import reference_data
from huren.adapters.db import engine as db_engine
from huren.adapters.db.bulk import bulk_sink
from huren.bootstrap import Container, build
from huren.config import get_settings
from huren.services.synth import SynthConfig, SynthReport, build_demo_world, run_synth

app = typer.Typer(help="合成数据: 生成可复现的虚拟机构、患者与检查检验结果", no_args_is_help=False)


def fill_demo_database(
    container: Container,
    *,
    seed: int = 20260615,
    institutions: int = 300,
    results: int = 30_000,
    progress: Callable[[int], None] | None = None,
) -> SynthReport:
    """The demo's data step: a fresh, migrated database gets a few hundred institutions
    and tens of thousands of results, history ending at ``container.clock.now()``."""
    report = build_demo_world(
        reference_data.synth_reference(),
        container.vault,
        bulk_sink(container.engine),
        container.clock.now(),
        timer=time.perf_counter,
        seed=seed,
        institutions=institutions,
        results=results,
        progress=progress,
    )
    container.catalog.invalidate()
    return report


@app.callback(invoke_without_command=True)
def synth(
    seed: int = typer.Option(..., "--seed", help="随机种子: 同一种子生成完全相同的数据"),
    results: int = typer.Option(..., "--results", min=0, help="检查检验结果数量（可达千万级）"),
    institutions: int = typer.Option(300, "--institutions", min=10, help="机构数量"),
    patients: int = typer.Option(0, "--patients", min=0, help="患者数量（0 = 结果数 / 8）"),
    batch_size: int = typer.Option(5000, "--batch-size", min=100, help="每批写入的结果数"),
    append: bool = typer.Option(
        False, "--append", help="数据库中已有同一种子的主数据时，只追加患者和结果"
    ),
) -> None:
    """生成合成世界并写入 HUREN_DATABASE_URL 指定的数据库（需先 huren db upgrade）。"""
    settings = get_settings()
    container = build(settings)
    try:
        db_engine.require_migrated(container.engine)
    except db_engine.DatabaseNotMigrated as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if not settings.identifier_hash_key.get_secret_value():
        typer.echo("未配置 HUREN_IDENTIFIER_HASH_KEY / HUREN_IDENTIFIER_ENCRYPTION_KEY", err=True)
        raise typer.Exit(2)
    cfg = SynthConfig(
        seed=seed,
        results=results,
        until=container.clock.now(),
        institutions=institutions,
        patients=patients,
        batch_size=batch_size,
    )
    typer.echo(f"种子 {seed}: {institutions} 家机构，{cfg.patient_count} 名患者，{results} 条结果")
    with typer.progressbar(length=results, label="写入结果") as bar:
        report = run_synth(
            reference_data.synth_reference(),
            cfg,
            container.vault,
            bulk_sink(container.engine),
            timer=time.perf_counter,
            progress=bar.update,
            master=not append,
        )
    container.catalog.invalidate()
    container.close()
    typer.echo(report.summary())
