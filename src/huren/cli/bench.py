"""``huren bench``: list and run the benchmark scripts in ``bench/`` (a source checkout)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="基准测试: 列出并运行 bench/ 下的脚本", no_args_is_help=False)


def _bench_dir() -> Path:
    for base in (Path.cwd(), *Path(__file__).resolve().parents):
        candidate = base / "bench"
        if (candidate / "harness.py").exists():
            return candidate
    raise typer.BadParameter("找不到 bench/ 目录（请在源码目录中运行）")


def _scripts() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(_bench_dir().glob("bench_*.py"))}


@app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="基准名称（不填则列出全部）")] = "",
    args: Annotated[list[str] | None, typer.Argument(help="传给脚本的参数")] = None,
) -> None:
    """不带参数列出全部基准; `huren bench marks -- --pairs 100000` 运行其中一个。"""
    scripts = _scripts()
    if not name:
        for key, path in scripts.items():
            doc = (path.read_text("utf-8").split('"""')[1].strip().splitlines() or [""])[0]
            typer.echo(f"{key:<12} {doc}")
        return
    if name not in scripts:
        typer.echo(f"未知的基准“{name}”，可用: {', '.join(scripts)}", err=True)
        raise typer.Exit(2)
    root = str(_bench_dir().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    rest = [a for a in (args or []) if a != "--"]
    sys.argv = [str(scripts[name]), *rest]
    runpy.run_module(f"bench.{scripts[name].stem}", run_name="__main__")
