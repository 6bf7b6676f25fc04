"""Wires adapters into services. The only module that knows both sides.

Each area adds its service as a cached property here; routes and the CLI reach services
only through ``Container``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property

from sqlalchemy import Engine

from huren.adapters.clock import SystemClock
from huren.adapters.crypto import IdentifierCrypto
from huren.adapters.db.accounts import SqlAccounts
from huren.adapters.db.cds_clients import SqlCdsClients
from huren.adapters.db.engine import make_engine
from huren.adapters.db.inbound import SqlInboundMessages
from huren.adapters.db.masterdata import SqlMasterData
from huren.adapters.db.masterdata_admin import SqlMasterDataAdmin
from huren.adapters.db.ratelimits import SqlRateCounters
from huren.adapters.db.recognition import SqlRecognitionStore
from huren.adapters.db.results import SqlIntakeStore, SqlResultReader
from huren.adapters.db.sharing import SqlSharing, correction_deadline_working_days, load_purposes
from huren.adapters.dicom.index import SqlImagingIndex
from huren.adapters.dicom.store import ContentAddressedStore
from huren.adapters.security import Argon2Passwords, HmacApiKeys, JwsClientVerifier, JwtTokens
from huren.config import Settings
from huren.services.accounts import AccountService
from huren.services.catalog import CatalogCache
from huren.services.catalog_io import CatalogIO
from huren.services.cds_clients import CdsClientService
from huren.services.imaging import CatalogItems, ImagingService
from huren.services.intake import IntakeService
from huren.services.masterdata_admin import MasterDataAdmin
from huren.services.monitoring import MonitoringService
from huren.services.ports import Clock
from huren.services.qc import QcService
from huren.services.recognition import RecognitionService
from huren.services.sharing_wiring import SharingServices


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

    @cached_property
    def catalog_io(self) -> CatalogIO:
        from huren.adapters.db.catalog_store import SqlCatalogStore
        from huren.adapters.tabular import TabularFiles

        return CatalogIO(
            SqlCatalogStore(self.engine),
            TabularFiles(),
            self.clock,
            self.catalog.invalidate,
            remap=self.intake.remap_codes,
        )

    @cached_property
    def masterdata_admin(self) -> MasterDataAdmin:
        return MasterDataAdmin(
            SqlMasterDataAdmin(self.engine), self.catalog, self.clock, remap=self.intake.remap
        )

    @cached_property
    def rate_counters(self) -> SqlRateCounters:
        """Rate limits and login throttles, counted in the database so that every server
        process on it shares them."""
        return SqlRateCounters(self.engine)

    @cached_property
    def accounts(self) -> AccountService:
        key = self.settings.token_signing_key.get_secret_value()
        return AccountService(
            SqlAccounts(self.engine),
            Argon2Passwords(),
            HmacApiKeys(key),
            JwtTokens(key),
            self.clock,
            timedelta(seconds=self.settings.token_ttl_seconds),
            counters=self.rate_counters,
        )

    @cached_property
    def cds_clients(self) -> CdsClientService:
        """CDS clients that authenticate with their own signed JWT (CDS Hooks 2.0)."""
        return CdsClientService(
            SqlCdsClients(self.engine), self.accounts, JwsClientVerifier(), self.clock
        )

    @cached_property
    def intake(self) -> IntakeService:
        """Result intake (R3): every channel stores through here."""
        return IntakeService(SqlIntakeStore(self.engine), self.catalog, self.vault, self.clock)

    @cached_property
    def inbound_messages(self) -> SqlInboundMessages:
        """Inbound messages and connection status for the integration engineer's pages."""
        return SqlInboundMessages(self.engine)

    @cached_property
    def results(self) -> SqlResultReader:
        """Read access to stored results and patients (masked for lists)."""
        return SqlResultReader(self.engine, self.vault, self.clock)

    @cached_property
    def recognition(self) -> RecognitionService:
        """Point-of-care reminder and decisions (R5). Imaging priors are judged against
        the DICOM this node received (``ImagingService.study_states``): a report without
        its study, or a study lacking a required series, is not recognizable
        (沪卫医〔2024〕135号 四(二)2)."""
        from huren.adapters import recognition_data

        return RecognitionService(
            SqlRecognitionStore(self.engine),
            self.catalog,
            self.clock,
            self.vault,
            retest_intervals=recognition_data.retest_intervals(),
            explanations=recognition_data.patient_explanations(),
            studies=self.imaging,
        )

    @cached_property
    def imaging(self) -> ImagingService:
        """DICOM / DICOMweb intake, study completeness and linking, viewing (issue 4)."""
        # pydicom is imported when imaging is first used: it is a second and a half of
        # every command's start (``huren ingest``, ``huren accounts``) otherwise.
        from huren.adapters.dicom.export import DicomExporter
        from huren.adapters.dicom.parse import PydicomParser

        return ImagingService(
            index=SqlImagingIndex(self.engine),
            blobs=ContentAddressedStore(
                self.settings.data_dir / "dicom", fsync=self.settings.dicom_fsync
            ),
            parser=PydicomParser(),
            vault=self.vault,
            clock=self.clock,
            items=CatalogItems(self.catalog),
            exporter=DicomExporter(),
        )

    @cached_property
    def sharing(self) -> SharingServices:
        """Retrieval with audit, corrections, patient portal, insurer (issue 6)."""
        return SharingServices.build(
            SqlSharing(self.engine, self.vault),
            catalog=self.catalog,
            vault=self.vault,
            clock=self.clock,
            accounts=self.accounts,
            intake=lambda: self.intake,
            purposes=load_purposes(),
            deadline_working_days=correction_deadline_working_days(),
            studies=self.imaging,
            counters=self.rate_counters,
        )

    @cached_property
    def qc(self) -> QcService:
        """QC lifecycle (R8): evaluations, suspension, spot checks, published lists."""
        import secrets

        from huren.adapters.db import governance

        policies, default = governance.reevaluation_policies()
        return QcService(
            governance.SqlQcStore(self.engine),
            self.catalog,
            self.clock,
            policies,
            default,
            seed_source=lambda: secrets.randbits(48),
        )

    @cached_property
    def monitoring(self) -> MonitoringService:
        """Monitoring (R9): incremental aggregates, statistics, outliers, targets."""
        from huren.adapters.db import governance

        return MonitoringService(
            governance.SqlMonitoringStore(self.engine),
            self.catalog,
            self.clock,
            governance.policy_targets(),
            backlog=governance.SqlCorrectionBacklog(self.engine),
        )

    def close(self) -> None:
        self.engine.dispose()


def build(settings: Settings, clock: Clock | None = None) -> Container:
    engine = make_engine(settings.database_url)
    return Container(settings=settings, engine=engine, clock=clock or SystemClock())
