"""Checks of the files a command is given, with the reason in Chinese: what click's own
``exists=True`` checks report in English, and what they let through (a device or a pipe,
which a command would read forever; a file it cannot open)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def input_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an input file, or None when it can."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"文件 {path} 不存在"
    except OSError as exc:
        return f"无法访问文件 {path}（{exc.strerror or exc}）"
    if stat.S_ISDIR(mode):
        return f"{path} 是目录，应为文件"
    if not stat.S_ISREG(mode):
        return f"{path} 不是普通文件（设备、管道或套接字无法作为导入文件）"
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"无法读取文件 {path}（{exc.strerror or exc}）"
    return None


def write_problem(path: Path) -> str | None:
    """Why a file cannot be written at ``path``, or None when it seemingly can."""
    if path.is_dir():
        return f"{path} 是目录，应为文件路径"
    parent = path.parent
    if not parent.is_dir():
        return f"目录 {parent} 不存在"
    if path.exists() and not os.access(path, os.W_OK):
        return f"文件 {path} 不可写"
    if not path.exists() and not os.access(parent, os.W_OK):
        return f"目录 {parent} 不可写"
    return None
