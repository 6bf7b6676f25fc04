"""Standing fuzz of the intake parsers and store: valid FHIR Bundles, contained reports
and HL7 ORUs with a few values mutated (``tests.fixtures.mutations``) are each stored or
refused with a named reason — never an error that escapes, never an ACK that says the
platform failed (HL7 AR 207). Mutation fuzzing found six such faults (a null
resourceType, U+0000 in FHIR strings and in an HL7 hex escape, times at the ends of the
calendar); a few hundred seeded cases per run keep them found. Both backends:
PostgreSQL refuses what SQLite stores (NUL, values beyond a column)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from huren.adapters.fhir.ingest import ParsedBundle, parse_report, parse_transaction
from huren.adapters.hl7v2.parse import AckCode
from huren.adapters.hl7v2.receiver import Hl7Receiver
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.bootstrap import Container
from huren.domain.errors import DomainError
from huren.services.intake import Channel
from tests.fixtures.fhir.builders import contained_report, imaging_bundle, lab_bundle
from tests.fixtures.hl7 import CT_CHEST_V24, LAB_LFT_V251, sample_text
from tests.fixtures.mutations import mutated_er7, mutated_json

CASES = 150

FHIR: list[tuple[Callable[[bytes], ParsedBundle], object]] = [
    (parse_transaction, lab_bundle(n_obs=3)),
    (parse_transaction, imaging_bundle()),
    (parse_report, contained_report("R-MUT", n_obs=3)),
]


def test_mutated_fhir_is_stored_or_refused_naming_a_field(world: Container) -> None:
    rng = random.Random(20261126)
    stored, refusals = 0, list[DomainError]()
    for _ in range(CASES):
        parse, doc = rng.choice(FHIR)
        escaped = rng.random() < 0.5  # a lone surrogate as \ud800, or as its bytes
        raw = json.dumps(mutated_json(doc, rng), ensure_ascii=escaped)
        try:
            world.intake.receive(parse(raw.encode("utf-8", "surrogatepass")).message)
        except DomainError as exc:
            refusals.append(exc)
        else:
            stored += 1
    assert all(exc.problems and exc.message for exc in refusals)  # each names what is wrong
    assert stored > 10, stored  # the cases reach both ends
    assert len(refusals) > 10, len(refusals)


@pytest.fixture
def receiver(world: Container) -> Hl7Receiver:
    return Hl7Receiver(world.intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine))


def test_mutated_hl7_is_acknowledged_or_refused_with_its_reason(receiver: Hl7Receiver) -> None:
    rng = random.Random(20261126)
    samples = [sample_text(LAB_LFT_V251), sample_text(CT_CHEST_V24)]
    codes = dict.fromkeys(AckCode, 0)
    for _ in range(CASES):
        text = mutated_er7(rng.choice(samples), rng)
        reply = receiver.handle(text.encode())
        assert b"|207^" not in reply.payload, (text[:300], reply.payload[:300])
        codes[reply.code] += 1
    assert codes[AckCode.AA] > 10, codes
    assert codes[AckCode.AE] > 10, codes
