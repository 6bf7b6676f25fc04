"""Rendering a frame to JPEG or PNG for the viewer and WADO-RS ``/rendered``
(PS3.18 8.3.5.1: window, viewport, quality).

Pixel data is decoded by pydicom's pixel handlers: uncompressed and RLE Lossless natively
(numpy); JPEG Baseline/Extended and JPEG 2000 through Pillow. JPEG Lossless (Process 14)
and JPEG-LS need pylibjpeg or GDCM, which are not installed: such instances are stored
and retrieved as received but cannot be rendered (``Unrenderable``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from PIL import Image


class Unrenderable(Exception):
    """The instance has no pixel data we can decode."""


@dataclass(frozen=True, slots=True)
class Window:
    center: float
    width: float


def _get(ds: pydicom.Dataset, keyword: str) -> Any:
    """``ds.get(keyword)``, None when the value as sent does not follow its VR (a Rescale
    Slope of 6 bytes as FD, a Window Center "abc"): rendered as if absent."""
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
    try:
        number = float(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is None or math.isfinite(number) else None


def render_frame(
    data: bytes,
    frame: int = 1,
    *,
    window: Window | None = None,
    media_type: str = "image/jpeg",
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """Render frame ``frame`` (1-based) of a Part 10 file.

    Grey images: Modality LUT (Rescale Slope / Intercept, PS3.3 C.11.1) then the VOI window
    (PS3.3 C.11.2.1.2, linear) from ``window``, else the file's Window Center / Width, else
    the frame's min–max; MONOCHROME1 is inverted. Colour images are shown as they are."""
    try:
        return _render(data, frame, window, media_type, viewport, quality)
    except Unrenderable:
        raise
    except Exception as exc:  # values as sent that no image can be made of
        raise Unrenderable(f"无法渲染该帧（{type(exc).__name__}）") from exc


def _render(
    data: bytes,
    frame: int,
    window: Window | None,
    media_type: str,
    viewport: tuple[int, int] | None,
    quality: int,
) -> bytes:
    try:
        ds = pydicom.dcmread(BytesIO(data))
    except Exception as exc:
        raise Unrenderable("无法读取该实例：文件结构损坏") from exc
    try:
        if "PixelData" not in ds:
            raise Unrenderable("该实例不含像素数据（如结构化报告）")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if not 1 <= frame <= frames:
            raise Unrenderable(f"帧号超出范围: 1–{frames}")
        arr = ds.pixel_array
    except Unrenderable:
        raise
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "未知")
        raise Unrenderable(f"无法解码像素数据（传输语法 {syntax}）") from exc
    if frames > 1:
        arr = arr[frame - 1]
    photometric = str(_get(ds, "PhotometricInterpretation") or "MONOCHROME2")
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels.processing import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        img = Image.fromarray(arr.astype(np.uint8), "RGB")
    else:
        values = arr.astype(np.float64)
        slope = _first(_get(ds, "RescaleSlope")) or 1.0
        intercept = _first(_get(ds, "RescaleIntercept")) or 0.0
        values = values * slope + intercept
        if window is None:
            c, w = _first(_get(ds, "WindowCenter")), _first(_get(ds, "WindowWidth"))
            if c is not None and w is not None and w > 0:
                window = Window(c, w)
        if window is None:
            lo, hi = float(values.min()), float(values.max())
            window = Window((lo + hi) / 2, max(hi - lo, 1.0))
        # PS3.3 C.11.2.1.2.1: linear VOI LUT function.
        lo = window.center - 0.5 - (window.width - 1) / 2
        scaled = (values - lo) / max(window.width - 1, 1) * 255.0
        out = np.clip(scaled, 0, 255).astype(np.uint8)
        if photometric == "MONOCHROME1":
            out = 255 - out
        img = Image.fromarray(out, "L")
    if viewport is not None:
        img.thumbnail(viewport)
    buf = BytesIO()
    if media_type == "image/png":
        img.save(buf, "PNG")
    else:
        img.save(buf, "JPEG", quality=max(1, min(quality, 100)))
    return buf.getvalue()
