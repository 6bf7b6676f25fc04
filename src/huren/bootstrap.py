"""Wires adapters into services. The only module that knows both sides.

Each area adds its service as a cached property here; routes and the CLI reach services
only through ``Container``."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine

from huren.adapters.clock import SystemClock
from huren.adapters.crypto import IdentifierCrypto
from huren.adapters.db.engine import make_engine
from huren.adapters.db.masterdata import SqlMasterData
from huren.config import Settings
from huren.services.catalog import CatalogCache
from huren.services.ports import Clock


@dataclass
class Container:
    settings: Settings
    engine: Engine
    clock: Clock = field(default_factory=SystemClock)

    @cached_property
    def vault(self) -> IdentifierCrypto:
        s = self.settings
        return IdentifierCrypto(
            s.identifier_hash_key.get_secret_value(),
            s.identifier_encryption_key.get_secret_value(),
        )

    @cached_property
    def master_data(self) -> SqlMasterData:
        return SqlMasterData(self.engine)

    @cached_property
    def catalog(self) -> CatalogCache:
        return CatalogCache(self.master_data, self.clock)

    def close(self) -> None:
        self.engine.dispose()


def build(settings: Settings, clock: Clock | None = None) -> Container:
    engine = make_engine(settings.database_url)
    return Container(settings=settings, engine=engine, clock=clock or SystemClock())
