"""Patient identity (R4): match a message's patient across institutions by 居民身份证,
医保号, 电子健康卡 or 院内病历号 + institution; create the patient when nothing matches;
never merge silently.

Identifiers are looked up by keyed hash (HMAC, ``IdentifierVault.lookup_hash``) and kept
encrypted for display and masked for lists (R4: 张*三, 1101**********1234).

When the identifiers of one message point to two different patients, the platform does
not merge them: the result goes to the patient found by the strongest identifier
(``IDENTIFIER_PRECEDENCE``) and a ``link`` event naming both patients, the actor and the
reason is recorded for a person to review (R4: 合并与关联均有记录，不得静默合并)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol

from huren.domain.identity import (
    IDENTIFIER_LABELS,
    IdentifierKind,
    PatientIdentifier,
    birth_date_from_national_id,
    mask_id,
    mask_name,
)
from huren.domain.results import PatientDemographics
from huren.services.ports import IdentifierVault

# Strongest first: a national ID is issued once per person; an MRN only within one hospital.
IDENTIFIER_PRECEDENCE: Mapping[IdentifierKind, int] = {
    IdentifierKind.NATIONAL_ID: 0,
    IdentifierKind.INSURANCE: 1,
    IdentifierKind.HEALTH_CARD: 2,
    IdentifierKind.MRN: 3,
}

# (kind, assigner, value_hash): how an identifier is found without reading its value.
IdentifierKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class IdentifierRecord:
    """An identifier as stored: hashed for lookup, encrypted for display, masked for lists."""

    kind: str
    assigner: str
    value_hash: str
    value_enc: str
    value_masked: str

    @property
    def key(self) -> IdentifierKey:
        return (self.kind, self.assigner, self.value_hash)


@dataclass(frozen=True, slots=True)
class NewPatient:
    name_enc: str
    name_masked: str
    sex: str
    birth_date: date | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LinkEvent:
    at: datetime
    actor: str
    action: str  # link | merge | unmerge
    from_patient: int
    to_patient: int
    reason: str


class PatientStore(Protocol):
    """What patient matching needs from storage, inside the caller's transaction."""

    def patients_by_identifier(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, int]:
        """Patient id (after following ``merged_into``) for each known key."""
        ...

    def create_patient(self, patient: NewPatient) -> int: ...

    def add_identifiers(self, patient_id: int, records: Sequence[IdentifierRecord]) -> None: ...

    def record_link(self, event: LinkEvent) -> None: ...


@dataclass(slots=True)
class PatientLookup:
    """The patients of identifier keys looked up ahead, for the rest of a transaction
    (PostgreSQL: with the message's other reads, in one round trip): what ``match_many``
    would read, kept up to date with the patients and identifiers it adds."""

    keys: set[IdentifierKey] = field(default_factory=set)  # looked up
    patients: dict[IdentifierKey, int] = field(default_factory=dict)  # known among them


@dataclass(frozen=True, slots=True)
class PatientMatch:
    patient_id: int
    created: bool
    linked_to: tuple[int, ...] = ()  # other patients the identifiers pointed to


# Lookup keys remembered (the keyed hash costs more than the rest of a match, and the
# same patients' identifiers come with every report); cleared when this many are held.
LOOKUP_MEMO_SIZE = 65536


class PatientMatcher:
    """Finds or creates the patient of a submission."""

    def __init__(self, vault: IdentifierVault) -> None:
        self._vault = vault
        self._keys: dict[tuple[IdentifierKind, str, str], IdentifierKey] = {}

    def record(self, ident: PatientIdentifier) -> IdentifierRecord:
        kind, assigner, value_hash = self.lookup_key(ident)
        return IdentifierRecord(
            kind=kind,
            assigner=assigner,
            value_hash=value_hash,
            value_enc=self._vault.encrypt(ident.value),
            value_masked=mask_id(ident.value),
        )

    def lookup_key(self, ident: PatientIdentifier) -> IdentifierKey:
        memo = (ident.kind, ident.assigner, ident.value)
        key = self._keys.get(memo)
        if key is None:
            if len(self._keys) >= LOOKUP_MEMO_SIZE:
                self._keys.clear()
            kind = str(ident.kind)
            key = self._keys[memo] = (
                kind,
                ident.assigner,
                self._vault.lookup_hash(kind, ident.assigner, ident.value),
            )
        return key

    def match(
        self,
        store: PatientStore,
        demographics: PatientDemographics,
        *,
        at: datetime,
        actor: str,
    ) -> PatientMatch:
        """``demographics.identifiers`` must already be validated and normalized."""
        return self.match_many(store, [demographics], at=at, actor=actor)[demographics]

    def lookup_keys(self, demographics: Iterable[PatientDemographics]) -> list[IdentifierKey]:
        """The lookup keys of the patients' identifiers, each once (to look up ahead)."""
        return list(dict.fromkeys(self.lookup_key(i) for d in demographics for i in d.identifiers))

    def match_many(
        self,
        store: PatientStore,
        demographics: Sequence[PatientDemographics],
        *,
        at: datetime,
        actor: str,
        lookup: PatientLookup | None = None,
    ) -> dict[PatientDemographics, PatientMatch]:
        """``match`` for every patient of a message with one identifier lookup: the
        patients are then matched in order against what is known, including the patients
        and identifiers added for the earlier ones, exactly as one ``match`` after
        another would (two reports of one message that share an identifier get the same
        patient). ``lookup``: what the transaction looked up ahead (only keys it did not
        look up are read), updated with what this match adds."""
        unique = list(dict.fromkeys(demographics))
        ordered: list[tuple[list[PatientIdentifier], list[IdentifierKey]]] = []
        for d in unique:
            idents = sorted(
                dict.fromkeys(d.identifiers), key=lambda i: IDENTIFIER_PRECEDENCE[i.kind]
            )
            ordered.append((idents, [self.lookup_key(i) for i in idents]))
        all_keys = list(dict.fromkeys(k for _, keys in ordered for k in keys))
        if lookup is None:
            known = store.patients_by_identifier(all_keys)
        else:
            known = lookup.patients
            missing = [k for k in all_keys if k not in lookup.keys and k not in known]
            if missing:
                known.update(store.patients_by_identifier(missing))
                lookup.keys.update(missing)
        return {
            d: self._match_known(store, d, idents, keys, known, at=at, actor=actor)
            for d, (idents, keys) in zip(unique, ordered, strict=True)
        }

    def _match_known(
        self,
        store: PatientStore,
        demographics: PatientDemographics,
        idents: list[PatientIdentifier],
        keys: list[IdentifierKey],
        known: dict[IdentifierKey, int],
        *,
        at: datetime,
        actor: str,
    ) -> PatientMatch:
        """Match against ``known`` (key → patient, as stored so far in this transaction)
        and record in it what this match adds."""
        found = {k: known[k] for k in keys if k in known}
        if not found:
            birth = demographics.birth_date or _birth_from(idents)
            name = demographics.name.strip()
            patient_id = store.create_patient(
                NewPatient(
                    name_enc=self._vault.encrypt(name) if name else "",
                    name_masked=mask_name(name),
                    sex=demographics.sex[:1],
                    birth_date=birth,
                    created_at=at,
                )
            )
            store.add_identifiers(patient_id, [self.record(i) for i in idents])
            known.update(dict.fromkeys(keys, patient_id))
            return PatientMatch(patient_id, created=True)

        # The strongest identifier that is known decides (keys are in precedence order).
        patient_id = next(found[k] for k in keys if k in found)
        others = tuple(dict.fromkeys(p for p in found.values() if p != patient_id))
        for other in others:
            kinds = "、".join(
                IDENTIFIER_LABELS[i.kind]
                for i, k in zip(idents, keys, strict=True)
                if found.get(k) == other
            )
            store.record_link(
                LinkEvent(
                    at=at,
                    actor=actor,
                    action="link",
                    from_patient=other,
                    to_patient=patient_id,
                    reason=(
                        f"同一消息中的患者标识指向两名患者：{kinds}属于患者 {other}，"
                        f"更强的标识属于患者 {patient_id}；结果已归入患者 {patient_id}，"
                        "未自动合并，请人工核对"
                    ),
                )
            )
        # An identifier already stored is neither encrypted again nor written again.
        new = [(i, k) for i, k in zip(idents, keys, strict=True) if k not in found]
        if new:
            store.add_identifiers(patient_id, [self.record(i) for i, _ in new])
            known.update(dict.fromkeys((k for _, k in new), patient_id))
        return PatientMatch(patient_id, created=False, linked_to=others)


def _birth_from(idents: Iterable[PatientIdentifier]) -> date | None:
    for i in idents:
        if i.kind is IdentifierKind.NATIONAL_ID:
            return birth_date_from_national_id(i.value)
    return None
