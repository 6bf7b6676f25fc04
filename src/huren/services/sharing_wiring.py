"""The sharing-and-trust services built together (``container.sharing``): they share one
store, the purposes of use and the retrieval service (the portal reads through it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from huren.domain.sharing import PurposeList
from huren.services.catalog import CatalogCache
from huren.services.corrections import CorrectionService, ResultReviser
from huren.services.insurer import InsurerService
from huren.services.portal import AccountsForPortal, CodeSender, LogCodeSender, PortalService
from huren.services.ports import Clock, IdentifierVault
from huren.services.ratelimit import RateCounters
from huren.services.recognition import StudyStates
from huren.services.retrieval import RetrievalService


@dataclass
class SharingServices:
    retrieval: RetrievalService
    corrections: CorrectionService
    portal: PortalService
    insurer: InsurerService

    @classmethod
    def build(
        cls,
        store: Any,
        *,
        catalog: CatalogCache,
        vault: IdentifierVault,
        clock: Clock,
        accounts: Any,
        intake: Callable[[], ResultReviser],
        purposes: PurposeList,
        deadline_working_days: int,
        sender: CodeSender | None = None,
        studies: StudyStates | None = None,
        counters: RateCounters | None = None,
    ) -> SharingServices:
        retrieval = RetrievalService(store, catalog, vault, clock, purposes, counters=counters)
        return cls(
            retrieval=retrieval,
            corrections=CorrectionService(
                store, intake, catalog, vault, clock, deadline_working_days
            ),
            portal=PortalService(
                store,
                AccountsForPortal(accounts),
                retrieval,
                catalog,
                vault,
                clock,
                sender or LogCodeSender(),
                purposes,
                counters,
            ),
            insurer=InsurerService(store, catalog, vault, clock, studies),
        )
