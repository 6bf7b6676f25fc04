"""``huren catalog import|export KIND FILE``: the catalog lists as CSV or Excel.

KIND is one of scopes, items, item_lists, institutions, qualifications, code_maps; the
file type follows the extension (.csv or .xlsx). Column headers are listed by
``huren catalog columns KIND``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from huren.bootstrap import build
from huren.cli.files import input_file_problem, write_problem
from huren.config import get_settings
from huren.domain.errors import ValidationFailed
from huren.services.catalog_io import COLUMNS, KIND_LABELS, CatalogKind

app = typer.Typer(
    help="目录导入导出: 项目、机构、资质、对码等（CSV / Excel）", no_args_is_help=True
)


@app.command("import")
def import_(
    kind: Annotated[CatalogKind, typer.Argument(help="目录种类")],
    file: Annotated[Path, typer.Argument(help=".csv 或 .xlsx 文件")],
    actor: str = typer.Option("cli", help="记录在资质变更历史中的操作人"),
) -> None:
    """校验并导入（全部成功或全部不写入）。"""
    problem = input_file_problem(file)
    if problem is not None:
        typer.echo(f"错误: {problem}", err=True)
        raise typer.Exit(2)
    try:
        data = file.read_bytes()
    except OSError as exc:
        typer.echo(f"错误: 无法读取文件 {file}（{exc.strerror or exc}）", err=True)
        raise typer.Exit(2) from exc
    container = build(get_settings())
    try:
        report = container.catalog_io.import_file(kind, data, file.name, actor=actor)
    except ValidationFailed as exc:
        typer.echo(exc.message, err=True)
        for p in exc.problems:
            typer.echo(f"  {p.field}: {p.message}", err=True)
        raise typer.Exit(1) from exc
    finally:
        container.close()
    typer.echo(
        f"已导入{KIND_LABELS[kind]} {report.rows} 行: 新增 {report.created}，更新 {report.updated}"
        + (f"；已保存的 {report.remapped} 条未对码结果已重新对码" if report.remapped else "")
    )


@app.command("export")
def export(
    kind: Annotated[CatalogKind, typer.Argument(help="目录种类")],
    file: Annotated[Path, typer.Argument(help=".csv 或 .xlsx 文件")],
) -> None:
    """导出为 CSV（UTF-8 带 BOM）或 Excel；导出的文件可原样导入。"""
    problem = write_problem(file)
    if problem is not None:
        typer.echo(f"错误: {problem}", err=True)
        raise typer.Exit(2)
    container = build(get_settings())
    try:
        data = container.catalog_io.export_file(kind, file.name)
    except ValidationFailed as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from exc
    finally:
        container.close()
    # Written beside the target and renamed over it: a failed write (a full disk) leaves
    # the previous file, not half of the new one.
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, file)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        typer.echo(f"错误: 无法写入 {file}（{exc.strerror or exc}），未导出", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"已导出{KIND_LABELS[kind]}到 {file}")


@app.command("columns")
def columns(kind: Annotated[CatalogKind, typer.Argument(help="目录种类")]) -> None:
    """列出列名（中文表头、英文别名、是否必填）。"""
    for c in COLUMNS[kind]:
        aliases = ", ".join((c.key, *c.aliases))
        typer.echo(f"{c.header}\t{aliases}\t{'必填' if c.required else ''}")
