"""The version snapshot (R3: 完整版本历史) as the store writes it: ``snapshot_json`` is
exactly ``snapshot()`` encoded, for lab panels and imaging reports alike."""

from __future__ import annotations

import json

import pytest

from huren.domain.marks import Mark
from huren.domain.masterdata import Category
from huren.domain.results import ResultSubmission
from huren.services.intake import ResultWrite, observation_json
from tests.fixtures.results import imaging_report, lab_panel


def _write(sub: ResultSubmission, mark: Mark | None) -> ResultWrite:
    return ResultWrite(
        submission=sub,
        patient_id=7,
        item_code="LFT",
        category=Category.LAB,
        mark=mark,
        version=1,
        content_hash="0" * 64,
    )


@pytest.mark.parametrize(
    ("sub", "mark"),
    [
        (lab_panel(), Mark("HE", "☆")),  # reference limits given as ints (9, 50)
        (imaging_report(), None),  # no observations, findings and conclusion apart
    ],
    ids=["lab-panel", "imaging-report"],
)
def test_snapshot_json_is_the_snapshot_encoded(sub: ResultSubmission, mark: Mark | None) -> None:
    w = _write(sub, mark)
    assert json.loads(w.snapshot_json()) == w.snapshot()


def test_snapshot_keeps_every_observation_field() -> None:
    w = _write(lab_panel(), None)
    stored = json.loads(w.snapshot_json())["observations"]
    assert stored == [observation_json(o) for o in lab_panel().observations]
    assert stored[0]["value_type"] == "NM"
    assert (stored[0]["ref_low"], stored[0]["ref_high"], stored[0]["flag"]) == (9, 50, "H")
