"""A patient's viewer-friendly export of one study (R6 patient access): a ZIP with the
DICOM originals under a DICOMDIR (PS3.10 File-set; any DICOM viewer opens it from a USB
stick or a CD), a PNG of every image for people without a DICOM viewer, and the report
with findings and conclusion kept apart."""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.fileset import FileSet

from huren.adapters.dicom.render import Unrenderable, render_frame


class DicomExporter:
    """Implements ``services.imaging.StudyExporter``."""

    def build_export(
        self, files: Sequence[tuple[str, bytes]], report_text: str, readme: str
    ) -> bytes:
        return build_export(files, report_text, readme)


def build_export(files: Sequence[tuple[str, bytes]], report_text: str, readme: str) -> bytes:
    """``files`` are (series label, Part 10 bytes) in display order."""
    out = BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("报告.txt", report_text)
        zf.writestr("说明.txt", readme)
        with tempfile.TemporaryDirectory() as tmp:
            fs = FileSet()
            for _, data in files:
                fs.add(pydicom.dcmread(BytesIO(data)))
            fs.write(tmp)
            root = Path(tmp)
            for p in sorted(root.rglob("*")):
                if p.is_file():
                    zf.write(p, f"DICOM/{p.relative_to(root).as_posix()}")
        for n, (label, data) in enumerate(files, start=1):
            try:
                png = render_frame(data, 1, media_type="image/png")
            except Unrenderable:
                continue
            zf.writestr(f"图像/{label}/{n:04d}.png", png)
    return out.getvalue()
