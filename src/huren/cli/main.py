"""``huren``: one command-line tool for operators, integration engineers and developers."""

from __future__ import annotations

import logging

import typer

from huren.adapters.db import engine as db_engine
from huren.cli import accounts, bench, catalog, demo, ingest, synth
from huren.config import Settings, get_settings

app = typer.Typer(help="HuRen 互认平台命令行工具", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="数据库: 迁移与状态", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(synth.app, name="synth")
app.add_typer(catalog.app, name="catalog")
app.add_typer(bench.app, name="bench")
app.add_typer(accounts.app, name="accounts")
app.command("ingest")(ingest.ingest)
app.command("demo")(demo.demo)


def _settings() -> Settings:
    return get_settings()


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="目标版本")) -> None:
    """应用数据库迁移（SQLite 或 PostgreSQL，由 HUREN_DATABASE_URL 指定）。"""
    url = _settings().database_url
    db_engine.make_engine(url).dispose()  # creates the SQLite folder if needed
    db_engine.upgrade(url, revision)
    typer.echo(f"数据库已升级到 {revision}: {url}")


@db_app.command("current")
def db_current() -> None:
    """显示数据库当前结构版本。"""
    eng = db_engine.make_engine(_settings().database_url)
    typer.echo(
        f"当前: {db_engine.current_revision(eng) or '未初始化'}; 最新: {db_engine.head_revision()}"
    )


@app.command()
def serve(
    host: str = typer.Option(None, help="HTTP 监听地址（默认 HUREN_HOST）"),
    port: int = typer.Option(None, help="HTTP 端口（默认 HUREN_PORT）"),
    workers: int = typer.Option(
        None,
        min=1,
        help="工作进程数（默认 HUREN_WORKERS，即 1）: 多个进程共用 HTTP 与 MLLP 端口，"
        "DICOM 与后台任务只在 0 号进程",
    ),
) -> None:
    """启动平台服务: HTTP（REST、FHIR、CDS Hooks、DICOMweb、页面）、HL7 MLLP 与 DICOM。"""
    from huren.cli.server import PortTaken, run_server

    settings = _settings()
    try:
        run_server(
            settings,
            host or settings.host,
            port or settings.port,
            workers=workers or settings.workers,
        )
    except (db_engine.DatabaseNotMigrated, PortTaken) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app()


if __name__ == "__main__":
    main()
