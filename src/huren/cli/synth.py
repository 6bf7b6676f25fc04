"""``huren synth``: fill the database with a synthetic world (issue 3 item 8), and the
data step of ``huren demo`` (``fill_demo_database``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import typer
from sqlalchemy import select

from huren.adapters import recognition_data, reference_data
from huren.adapters.db import engine as db_engine
from huren.adapters.db.bulk import SqlSynthHistory, bulk_sink
from huren.adapters.db.tables import institution
from huren.bootstrap import Container, build
from huren.config import get_settings
from huren.services.synth import (
    ActivityConfig,
    ActivityReport,
    SynthConfig,
    SynthReport,
    build_demo_world,
    demo_config,
    generate_world,
    run_activity,
    run_synth,
)

# A synthetic world's institutions are placed city by city; beyond about this many (all
# of China's hospitals are some 38,000) that takes minutes and the codes run out.
MAX_INSTITUTIONS = 20_000

app = typer.Typer(help="合成数据: 生成可复现的虚拟机构、患者与检查检验结果", no_args_is_help=False)


def fill_demo_database(
    container: Container,
    *,
    seed: int = 20260615,
    institutions: int = 300,
    results: int = 30_000,
    progress: Callable[[int], None] | None = None,
    activity: bool = True,
    refresh: bool = True,
) -> SynthReport:
    """The demo's data step: a fresh, migrated database gets a few hundred institutions
    and tens of thousands of results, history ending at ``container.clock.now()``; then
    (``activity``) the point-of-care reminders and decisions of that history, and
    (``refresh``) the monitoring aggregates brought up to date — about half a millisecond a
    result, so benchmarks that fill large databases may leave it to the server."""
    ref = reference_data.synth_reference()
    until = container.clock.now()
    report = build_demo_world(
        ref,
        container.vault,
        bulk_sink(container.engine),
        until,
        timer=time.perf_counter,
        seed=seed,
        institutions=institutions,
        results=results,
        progress=progress,
    )
    if activity:
        cfg = demo_config(until, seed=seed, institutions=institutions, results=results)
        synthesize_activity(container, cfg)
    container.catalog.invalidate()
    if refresh:
        container.monitoring.refresh()
    return report


def synthesize_activity(
    container: Container,
    cfg: SynthConfig,
    *,
    patients: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ActivityReport:
    """The point-of-care activity (reminders, decisions) of the synthetic world ``cfg``
    already written to the database, for the patients ``patients`` (default all)."""
    return run_activity(
        generate_world(reference_data.synth_reference(), cfg),
        ActivityConfig.of(cfg),
        SqlSynthHistory(container.engine),
        bulk_sink(container.engine),
        explanations=recognition_data.patient_explanations(),
        timer=time.perf_counter,
        patients=patients,
        progress=progress,
    )


def _master_data_problem(container: Container, cfg: SynthConfig, *, append: bool) -> str | None:
    """Why the world of ``cfg`` cannot be written (``append``: added to) here: checked
    before anything is written, since a refused write would come after earlier batches."""
    codes = {
        i.code for i in generate_world(reference_data.synth_reference(), cfg).records.institutions
    }
    with container.engine.connect() as c:
        present = set(c.scalars(select(institution.c.code)))
    clash = sorted(codes & present)
    missing = sorted(codes - present)
    if not append and clash:
        return (
            f"数据库中已有 {len(clash)} 家编码相同的机构（如 {clash[0]}），合成主数据无法写入: "
            "已用同一种子生成过时，加 --append 只追加患者和结果；否则请使用空数据库"
        )
    if append and missing:
        return (
            f"--append 需要数据库中已有该种子的主数据，但缺少 {len(missing)} 家机构"
            f"（如 {missing[0]}）: 请先不加 --append 生成一次"
        )
    return None


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
    activity: bool = typer.Option(
        True,
        "--activity/--no-activity",
        help="同时生成互认提醒与医师决定（接受 / 不予互认）",
    ),
) -> None:
    """生成合成世界并写入 HUREN_DATABASE_URL 指定的数据库（需先 huren db upgrade）。"""
    if institutions > MAX_INSTITUTIONS:
        typer.echo(f"--institutions 最多 {MAX_INSTITUTIONS}，实际为 {institutions}", err=True)
        raise typer.Exit(2)
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
    problem = _master_data_problem(container, cfg, append=append)
    if problem is not None:
        container.close()
        typer.echo(f"错误: {problem}", err=True)
        raise typer.Exit(2)
    typer.echo(f"种子 {seed}: {institutions} 家机构，{cfg.patient_count} 名患者，{results} 条结果")
    first_patient = SqlSynthHistory(container.engine).patient_span()[1] + 1
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
    typer.echo(report.summary())
    if activity:
        with typer.progressbar(length=cfg.patient_count, label="互认提醒与决定") as bar:
            done = synthesize_activity(
                container,
                cfg,
                patients=(first_patient, first_patient + cfg.patient_count - 1),
                progress=bar.update,
            )
        typer.echo(done.summary())
        # Monitoring counts these incrementally in the server's background job; for ten
        # million results that takes a while, so it is not done here.
        typer.echo("监测统计由服务（huren serve）的后台任务增量更新")
    container.catalog.invalidate()
    container.close()
