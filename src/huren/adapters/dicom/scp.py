"""The DICOM network service (pynetdicom): C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET as
SCP, for hospital PACS sending studies and querying / retrieving them.

- Calling AE titles are accepted only when an institution lists them
  (``institution.ae_titles``); others are rejected (PS3.8 9.3.4 A-ASSOCIATE-RJ, result 1
  rejected-permanent, source 1 service-user, reason 3 calling-AE-title-not-recognized) and
  the rejection is logged in ``dicom_event``.
- Storage accepts every storage SOP class in the uncompressed and the lossless compressed
  transfer syntaxes only, and keeps the bytes as received (沪卫医〔2024〕135号 四(二)2:
  无损 DICOM 格式影像).
- Nagle's algorithm is switched off (TCP_NODELAY) on every socket: pynetdicom does not do it
  and, without it, each PDU exchange waits for a delayed ACK (issue 4: 10–20 instances/s
  instead of ~140/s). Clients such as dcmtk's storescu need ``TCP_NODELAY=1`` in their
  environment for the same reason.
- pynetdicom's two threads per association poll: each sleeps 1 ms between looks at its
  socket or queue, so every request and every response waits for a sleep to end, and
  idle associations wake a thousand times a second. ``_WakingDUL`` and
  ``_WakingAssociation`` run the same loops but wait on the socket (``poll``) and on the
  queues instead, waking the moment there is something to do: with a handler that only
  writes the file, one storescu association went from 111–137 to 279–300 instances/s on
  the 2-core build machine.
- C-STORE writes the data set as received behind a File Meta Information header built
  here (PS3.10 7.1), without decoding it.
- The answer to a C-STORE costs little: the C-STORE-RSP command set is encoded here
  (``store_response_command``, PS3.7 9.3.1.2 / E.1, checked byte for byte against
  pynetdicom's encoder in the tests) instead of by pydicom, and a P-DATA in the
  established state (Sta6) is written to the socket by the thread that sends it instead of
  being handed to the DUL thread and waiting for it to wake (``_WakingDUL.send_pdu``;
  writes of both threads are serialised by one lock). pynetdicom's "standard" logging
  handlers, which format every PDU and DIMSE message even when nobody logs at DEBUG, are
  unbound unless the ``pynetdicom`` logger is at DEBUG. Together: about 1 ms less per
  instance.
- A C-STORE request is served on the thread that read it (``_FastDIMSE``), sparing two
  thread wake-ups per instance, and every association shares the server's presentation
  contexts instead of deep-copying them (``_SharedContexts``: ~40 ms less to set one up).
  With these, on the 2-core build machine under a load average of 7–11, HuRen stored
  per round 0.74–1.65 × Orthanc 1.10's rate over one association (medians of two runs
  0.99 and 1.07) and 0.93–1.29 × over four (medians 1.27 and 1.03), ``huren bench dicom``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from io import BytesIO
from typing import Any, cast

import pydicom
import pynetdicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import (
    AE,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    build_context,
    evt,
)
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
    uid_to_service_class,
)
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from huren.adapters.dicom import dicomjson
from huren.domain.imaging import STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS
from huren.domain.text import is_digits
from huren.services.imaging import (
    DicomEvent,
    EventKind,
    ImagingService,
    InstanceRefused,
    Source,
    StudyQuery,
)

log = logging.getLogger("huren.dicom")

JPEG_LOSSLESS = UID("1.2.840.10008.1.2.4.57")  # JPEG Lossless, Non-Hierarchical (Process 14)

# Uncompressed and lossless compressed transfer syntaxes (PS3.5 Annex A / 10).
LOSSLESS_TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEG_LOSSLESS,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
]

# PS3.4 C.4.2.1.5 (Table C.4-2): Refused: Move Destination unknown.
STATUS_MOVE_DESTINATION_UNKNOWN = 0xA801
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
# PS3.4 C.4.1.1.4 (Table C.4-1): Error: Identifier does not match SOP Class.
STATUS_IDENTIFIER_MISMATCH = 0xA900


def set_nodelay(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):  # a socket closed meanwhile
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _NoDelayServer(ThreadedAssociationServer):
    """Accepted sockets get TCP_NODELAY before the association starts."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, addr = super().get_request()
        set_nodelay(sock)
        return sock, addr


# ---------------------------------------------------------------- waking reactors
# The two loops below are pynetdicom 3.0's ``DULServiceProvider.run_reactor`` and
# ``Association._run_reactor`` with the fixed ``time.sleep`` replaced by a wait that ends
# as soon as there is work. They are used only with the pynetdicom series they were
# copied from; another version runs its own loops unchanged (just slower).
WAKING_REACTORS = pynetdicom.__version__.startswith("3.0.")
# Longest wait when nothing happens: bounds how late a timer (ARTIM, network timeout) or
# a release is noticed; the socket, the outgoing queue and the DIMSE queue wake at once.
_DUL_IDLE_WAIT = 0.02
_ACCEPTOR_IDLE_WAIT = 0.005


class _WakingDUL(DULServiceProvider):
    """DUL whose reactor sleeps in ``select`` on the peer's socket and on a wake-up
    socket pair signalled when a primitive is queued for sending."""

    _wake_r: socket.socket
    _wake_w: socket.socket
    _send_lock: threading.Lock

    def _init_waker(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._send_lock = threading.Lock()

    def _notify(self) -> None:
        with contextlib.suppress(OSError):  # full (already signalled) or closed
            self._wake_w.send(b"\0")

    def _send(self, pdu: Any) -> None:
        with self._send_lock:  # the DUL thread and a direct P-DATA (below) never interleave
            super()._send(pdu)

    def send_pdu(self, primitive: Any) -> None:
        # Sta6 + Evt9 (P-DATA request) is DT-1: send a P-DATA-TF, stay in Sta6 (PS3.8
        # 9.2, Table 9-10) — done here, on the caller's thread, when nothing is queued
        # before it; everything else goes through the DUL thread as usual.
        if (
            type(primitive) is P_DATA
            and self.state_machine.current_state == "Sta6"
            and self.to_provider_queue.empty()
        ):
            self._send(P_DATA_TF(primitive))
            return
        super().send_pdu(primitive)
        self._notify()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._notify()

    def _idle(self) -> None:
        """Wait until the peer sent something, a primitive was queued, or the idle wait
        passed (``poll``: no limit on descriptor numbers, unlike ``select``)."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        peer = getattr(self.socket, "socket", None)
        if peer is not None:
            pending = getattr(peer, "pending", None)  # TLS may hold decrypted bytes
            if pending is not None and pending():
                return
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile
                poller.register(peer, select.POLLIN)
        try:
            ready = poller.poll(_DUL_IDLE_WAIT * 1000)
        except OSError:
            time.sleep(self._run_loop_delay)
            return
        if any(fd == self._wake_r.fileno() for fd, _ in ready):
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass

    def run(self) -> None:
        # The stock thread target is the stock loop, bound at construction.
        self.run_reactor()

    def run_reactor(self) -> None:
        try:
            self._run_waking_reactor()
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def _run_waking_reactor(self) -> None:  # pynetdicom 3.0 dul.py run_reactor
        self._idle_timer.start()
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._idle()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                log.error("Exception in DUL.run(), aborting association")
                log.exception(exc)
                from pynetdicom.pdu import A_ABORT_RQ

                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())  # type: ignore[union-attr]
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            sleep = False


class _WakingAssociation(Association):
    """Acceptor whose reactor waits on the DIMSE message queue instead of sleeping."""

    _serving: threading.Lock

    def _await_message(self) -> None:
        q = self.dimse.msg_queue
        with q.not_empty:
            if not q.queue:
                q.not_empty.wait(_ACCEPTOR_IDLE_WAIT)

    def _run_reactor(self) -> None:  # pynetdicom 3.0 association.py _run_reactor
        self._is_paused = False
        while not self._kill:
            self._await_message()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            with self._serving:  # one request at a time, in arrival order (see _FastDIMSE)
                context_id, msg = self.dimse.get_msg(block=False)
                if msg:
                    self._serve_request(msg, context_id)  # type: ignore[arg-type]
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                log.debug("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                log.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


# ---------------------------------------------------------------- C-STORE-RSP
_COMMAND_FIELD_STORE_RSP = 0x8001  # PS3.7 E.1-1
_NO_DATA_SET = 0x0101  # PS3.7 E.1-1 Command Data Set Type: no data set


def _implicit(tag: int, value: bytes) -> bytes:
    # PS3.5 7.1.3 implicit VR little endian (command sets always are, PS3.7 6.3.1).
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _ui(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\0" if len(value) % 2 else value  # PS3.5 6.2: UI padded with NUL


def store_response_command(
    sop_class_uid: str, message_id: int, status: int, sop_instance_uid: str
) -> bytes:
    """The command set of a C-STORE-RSP without Error Comment or Offending Element
    (PS3.7 9.3.1.2, elements in ascending tag order)."""
    body = b"".join(
        (
            _implicit(0x00000002, _ui(sop_class_uid)),
            _implicit(0x00000100, struct.pack("<H", _COMMAND_FIELD_STORE_RSP)),
            _implicit(0x00000120, struct.pack("<H", message_id)),
            _implicit(0x00000800, struct.pack("<H", _NO_DATA_SET)),
            _implicit(0x00000900, struct.pack("<H", status)),
            _implicit(0x00001000, _ui(sop_instance_uid)),
        )
    )
    return _implicit(0x00000000, struct.pack("<I", len(body))) + body


class _FastDIMSE(DIMSEServiceProvider):
    """Serves a C-STORE request on the DUL thread that decoded it, and encodes a plain
    C-STORE-RSP itself (one P-DATA, last fragment of a command, PS3.8 E.2); everything
    else as pynetdicom does.

    Serving on the DUL thread: pynetdicom hands every request from the DUL thread, which
    reads the socket, to the association thread, which serves it, and the answer back;
    each hand-over is a thread wake-up, and on a loaded machine every wake-up waits for
    a CPU. A C-STORE request is served where it was decoded when the association thread
    is idle (its ``_serving`` lock free and no request queued before it), so requests are
    still served one at a time and in order; anything else, or a busy association
    thread, goes through the queue as before. While a C-STORE is served the DUL thread
    reads nothing more from the peer (a storescu-like peer waits for the answer anyway).
    """

    def receive_primitive(self, primitive: Any) -> None:  # pynetdicom 3.0 dimse.py
        if self.message is None:
            self.message = DIMSEMessage()
        if not self.message.decode_msg(primitive, self.assoc):
            return
        message = self.message
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
        context_id = cast(int, message.context_id)
        try:
            d_primitive = message.message_to_primitive()
        except Exception as exc:
            log.error("Received an invalid DIMSE message")
            log.exception(exc)
            self.dul.event_queue.put("Evt19")
            return
        # pynetdicom's fix for its issue #41: a fresh message for the next one.
        message.encoded_command_set = BytesIO()
        message.data_set = BytesIO()
        message._data_set_file = None
        message._data_set_path = None
        self.message = None
        if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[cast(int, d_primitive.MessageIDBeingRespondedTo)] = d_primitive
        elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
            threading.Thread(
                target=make_target(self.assoc._serve_request), args=(d_primitive, context_id)
            ).start()
        elif not self._serve_here(d_primitive, context_id):
            self.msg_queue.put((context_id, d_primitive))  # type: ignore[arg-type]

    def _serve_here(self, request: Any, context_id: int) -> bool:
        """Serve a C-STORE request on this (the DUL) thread; False: leave it to the
        association thread."""
        assoc = self.assoc
        if (
            type(request) is not C_STORE
            or not isinstance(assoc, _WakingAssociation)
            or assoc._sent_release
            or not assoc.is_established
        ):
            return False
        if not request.is_valid_request:
            return self._refuse_incomplete_store(request, context_id)
        context = assoc._accepted_cx.get(context_id)
        sop_class = str(request.AffectedSOPClassUID)
        if context is None or context.abstract_syntax != sop_class:
            return False
        if (
            sop_class in assoc.acceptor.accepted_common_extended
            or uid_to_service_class(sop_class) is not StorageServiceClass
        ):
            return False  # another service class decides: pynetdicom's way
        if not assoc._serving.acquire(blocking=False):
            return False
        try:
            if not self.msg_queue.empty():
                return False  # earlier requests first
            self.cancel_req = {}
            try:
                StorageServiceClass(assoc).SCP(request, context)
            except Exception:  # as pynetdicom's _serve_request, without blocking this thread
                log.exception("C-STORE: serving the request failed; aborting the association")
                assoc._abort_nonblocking()
            return True
        finally:
            assoc._serving.release()

    def _refuse_incomplete_store(self, request: C_STORE, context_id: int) -> bool:
        """A C-STORE-RQ without a mandatory parameter (PS3.7 9.1.1.1: e.g. an empty
        Affected SOP Instance UID, sent for a data set whose SOP Instance UID is empty):
        pynetdicom drops it unanswered and the peer waits until its DIMSE timeout. It is
        answered with a failure instead, when its Message ID says to whom."""
        if request.MessageID is None:
            return False
        missing = [kw for kw in request.REQUEST_KEYWORDS if getattr(request, kw) is None]
        log.warning("C-STORE-RQ without %s refused", ", ".join(missing))
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = request.MessageID
        rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
        rsp.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
        rsp.Status = STATUS_CANNOT_UNDERSTAND
        rsp.ErrorComment = ("C-STORE-RQ lacks " + ", ".join(missing))[:64]  # type: ignore[assignment]
        self.send_msg(rsp, context_id)
        return True

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if (
            type(primitive) is C_STORE
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and primitive.AffectedSOPClassUID is not None
            and primitive.AffectedSOPInstanceUID is not None
            and isinstance(primitive.Status, int)
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            command = store_response_command(
                str(primitive.AffectedSOPClassUID),
                int(primitive.MessageIDBeingRespondedTo),
                int(primitive.Status),
                str(primitive.AffectedSOPInstanceUID),
            )
            limit = self.maximum_pdu_size
            # The PDV item (length, context ID, control header) must fit in the peer's
            # maximum PDU length (PS3.8 9.3.5); 0 means no limit.
            if not limit or len(command) + 6 <= limit:
                pdata = P_DATA()
                # Message control header 0x03: command, last fragment (PS3.8 E.2).
                pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # type: ignore[list-item]
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


_STANDARD_LOGGING = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


class _SharedContexts(list[Any]):
    """The server's supported presentation contexts, handed to every association as they
    are: pynetdicom deep-copies them for each association (about 40 ms of CPU for the
    ~300 contexts here, most of an association's set-up), though negotiation as acceptor
    only reads them (``presentation.negotiate_as_acceptor`` builds new contexts)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedContexts:
        return self


class _WakingRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            for event, handler in _STANDARD_LOGGING:
                assoc.unbind(event, handler)
        if WAKING_REACTORS:
            # Same objects, same state: only the loops and the sending differ (see above).
            assoc.__class__ = _WakingAssociation
            assoc.dul.__class__ = _WakingDUL
            assoc.dimse.__class__ = _FastDIMSE
            cast(_WakingAssociation, assoc)._serving = threading.Lock()
            cast(_WakingDUL, assoc.dul)._init_waker()
        return assoc


# ---------------------------------------------------------------- Part 10 header
def _meta_element(tag: int, vr: bytes, value: bytes) -> bytes:
    # PS3.5 7.1.2 explicit VR little endian; UI padded with NUL, others with a space
    # (PS3.5 6.2) to an even length.
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"UN", b"SQ"):
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


_IMPLEMENTATION = _meta_element(
    0x00020012, b"UI", str(PYNETDICOM_IMPLEMENTATION_UID).encode()
) + _meta_element(0x00020013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode())


def part10(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, data_set: bytes
) -> bytes:
    """A DICOM file (PS3.10 7.1: preamble, "DICM", File Meta Information) around a data
    set encoded in ``transfer_syntax``, kept byte for byte."""
    body = b"".join(
        (
            _meta_element(0x00020001, b"OB", b"\x00\x01"),
            _meta_element(0x00020002, b"UI", sop_class_uid.encode()),
            _meta_element(0x00020003, b"UI", sop_instance_uid.encode()),
            _meta_element(0x00020010, b"UI", transfer_syntax.encode()),
            _IMPLEMENTATION,
        )
    )
    group_length = _meta_element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"".join((b"\0" * 128, b"DICM", group_length, body, data_set))


class _PlatformAE(AE):
    """An AE whose accepted calling AE titles come from the institution list, read at
    most every ``ttl`` seconds so that a newly configured PACS can connect soon after."""

    def __init__(self, ae_title: str, titles: Callable[[], list[str]], ttl: float = 5.0):
        super().__init__(ae_title=ae_title)
        self._titles = titles
        self._ttl = ttl
        self._cached: tuple[float, list[str]] = (0.0, [])
        self._lock = threading.Lock()

    @property
    def require_calling_aet(self) -> list[str]:
        with self._lock:
            at, titles = self._cached
            if time.monotonic() - at > self._ttl:
                titles = self._titles()
                self._cached = (time.monotonic(), titles)
        # An empty list would accept everyone (pynetdicom's rule); no known title means
        # nobody is accepted.
        return titles or ["\x00"]

    @require_calling_aet.setter
    def require_calling_aet(self, _value: list[str]) -> None:
        return None

    def forget_titles(self) -> None:
        with self._lock:
            self._cached = (0.0, [])


def refusal_response(exc: InstanceRefused) -> Dataset:
    """The C-STORE failure status with an Error Comment (PS3.7 C.4: 64 characters of
    the default repertoire, so the refusal's code and the attributes it names by keyword;
    the Chinese message is in ``dicom_event``)."""
    fields = ", ".join(dict.fromkeys(p.field for p in exc.problems if p.field))
    comment = f"{exc.code}: {fields}" if fields else exc.code
    rsp = Dataset()
    rsp.Status = exc.dicom_status
    rsp.ErrorComment = comment.encode("ascii", "replace").decode("ascii")[:64]
    return rsp


def _text(ds: Dataset, keyword: str) -> str:
    v = ds.get(keyword, "")
    return "" if v is None else str(v).strip()


class InvalidIdentifier(ValueError):
    """A C-FIND matching key that cannot be matched; ``keyword`` names it."""

    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(message)
        self.keyword = keyword


def _date_range(text: str) -> tuple[date | None, date | None]:
    """PS3.4 C.2.2.2.5 range matching on DA: "a-b", "a-", "-b" or "a". A bound of eight
    digits that is no date (20261340) raises ``InvalidIdentifier``."""

    def d(s: str) -> date | None:
        s = s.strip()
        if len(s) == 8 and is_digits(s):
            try:
                return date(int(s[:4]), int(s[4:6]), int(s[6:]))
            except ValueError as exc:
                raise InvalidIdentifier("StudyDate", f"检查日期 (0008,0020) 无效: {s}") from exc
        return None

    if not text:
        return None, None
    if "-" in text:
        lo, hi = text.split("-", 1)
        return d(lo), d(hi)
    day = d(text)
    return day, day


class DicomNetworkService:
    """Owns the pynetdicom AE and its listening server."""

    def __init__(
        self,
        imaging: ImagingService,
        *,
        ae_title: str,
        host: str,
        port: int,
        titles: Callable[[], list[str]] | None = None,
    ) -> None:
        self.imaging = imaging
        self.host = host
        self.port = port
        self.ae = _PlatformAE(ae_title, titles or imaging.index.known_ae_titles)
        self.ae.maximum_associations = 32
        self.ae.maximum_pdu_size = 0  # no limit on what we receive
        self.ae.network_timeout = 60
        self.ae.dimse_timeout = 60
        storage = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
        for sop_class in storage:
            self.ae.add_supported_context(sop_class, LOSSLESS_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        for qr in (
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelGet,
        ):
            self.ae.add_supported_context(qr)
        # C-GET sends the instances back over the same association: the SCP acts as
        # Storage SCU there (PS3.4 C.4.3, SCP/SCU role selection PS3.7 D.3.3.4).
        for sop_class in storage:
            self.ae.add_supported_context(
                sop_class, LOSSLESS_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
            )
        self._server: ThreadedAssociationServer | None = None
        self._assoc_institution: dict[int, tuple[str, str | None]] = {}

    # ------------------------------------------------------------ lifecycle
    def start(self) -> int:
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_CLOSE, self._on_released),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
        ]
        server = self.ae.make_server(
            (self.host, self.port),
            evt_handlers=handlers,
            server_class=_NoDelayServer,
            request_handler=_WakingRequestHandler,
        )
        server.contexts = _SharedContexts(server.contexts)
        thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
        thread.start()
        self.ae._servers.append(server)
        self._server = server
        self.port = int(server.server_address[1])
        log.info("DICOM SCP %s listening on %s:%s", self.ae.ae_title, self.host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()

    # ------------------------------------------------------------ handlers
    @staticmethod
    def _calling(event: Any) -> str:
        return str(event.assoc.requestor.ae_title).strip()

    @staticmethod
    def _peer(event: Any) -> str:
        r = event.assoc.requestor
        return f"{r.address}:{r.port}"

    def _on_open(self, event: Any) -> None:
        set_nodelay(getattr(getattr(event.assoc.dul, "socket", None), "socket", None))

    def _on_rejected(self, event: Any) -> None:
        calling = self._calling(event)
        self.imaging.reject_association(
            calling,
            self._peer(event),
            f"未登记的调用方 AE 名称 {calling!r}，拒绝关联（请在机构信息中登记 AE 名称）",
        )

    def _on_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def _institution(self, event: Any, calling: str) -> str | None:
        """AE title → institution, looked up once per association, not per instance."""
        key = id(event.assoc)
        cached = self._assoc_institution.get(key)
        if cached is None or cached[0] != calling:
            cached = (calling, self.imaging.institution_for_ae(calling))
            self._assoc_institution[key] = cached
        return cached[1]

    def _on_released(self, event: Any) -> None:
        self._assoc_institution.pop(id(event.assoc), None)

    def _on_store(self, event: Any) -> int | Dataset:
        calling = self._calling(event)
        institution = self._institution(event, calling)
        if institution is None:  # the AE was removed after the association started
            return 0x0124
        try:
            request = event.request
            self.imaging.store_instance(
                part10(
                    str(request.AffectedSOPClassUID),
                    str(request.AffectedSOPInstanceUID),
                    str(event.context.transfer_syntax),
                    request.DataSet.getvalue(),
                ),
                institution=institution,
                source=Source.DIMSE,
                calling_ae=calling,
                peer=self._peer(event),
            )
        except InstanceRefused as exc:
            return refusal_response(exc)
        except OSError:
            log.exception("C-STORE: storage failed")
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    def _on_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        ident = event.identifier
        level = _text(ident, "QueryRetrieveLevel").upper()
        if level not in ("STUDY", "SERIES", "IMAGE"):
            yield STATUS_IDENTIFIER_MISMATCH, None
            return
        try:
            found = find_datasets(self.imaging, ident, level)
        except InvalidIdentifier as exc:
            failure = Dataset()
            failure.Status = STATUS_IDENTIFIER_MISMATCH
            failure.ErrorComment = f"invalid {exc.keyword}"
            failure.OffendingElement = [Tag(exc.keyword)]
            yield failure, None
            return
        for ds in found:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, ds

    def _instances_of(self, ident: Dataset) -> list[tuple[str, str]]:
        """(content_hash, sop_class) of the instances a C-MOVE / C-GET identifier names."""
        study = _text(ident, "StudyInstanceUID")
        series = _text(ident, "SeriesInstanceUID")
        sop = _text(ident, "SOPInstanceUID")
        if not (study or series or sop):
            return []
        rows = self.imaging.index.instances(
            StudyQuery(
                study_uids=tuple(u for u in study.split("\\") if u),
                series_uids=tuple(u for u in series.split("\\") if u),
                sop_uids=tuple(u for u in sop.split("\\") if u),
                limit=1_000_000,
            )
        )
        return [(r.content_hash, r.transfer_syntax) for r in rows]

    def _read(self, content_hash: str) -> Dataset:
        return pydicom.dcmread(BytesIO(self.imaging.read_blob(content_hash)))

    def _on_move(self, event: Any) -> Iterator[Any]:
        dest = self.imaging.index.move_destination(str(event.move_destination).strip())
        if dest is None:
            self.imaging.log_event(
                DicomEvent(
                    at=self.imaging.clock.now(),
                    channel=Source.DIMSE,
                    kind=EventKind.MOVE_REFUSED,
                    calling_ae=self._calling(event),
                    peer=self._peer(event),
                    status=STATUS_MOVE_DESTINATION_UNKNOWN,
                    message=f"C-MOVE 目标 AE {str(event.move_destination).strip()!r} 未登记",
                )
            )
            yield None, None  # pynetdicom answers 0xA801 Move Destination unknown
            return
        items = self._instances_of(event.identifier)
        datasets = [self._read(h) for h, _ in items]
        contexts = []
        seen: set[tuple[str, str]] = set()
        for ds in datasets:
            key = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
            if key not in seen:
                seen.add(key)
                contexts.append(build_context(key[0], [key[1]]))
        yield dest.host, dest.port, {"contexts": contexts[:128]}
        yield len(datasets)
        for ds in datasets:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, ds

    def _on_get(self, event: Any) -> Iterator[Any]:
        items = self._instances_of(event.identifier)
        yield len(items)
        for h, _ in items:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, self._read(h)


# ---------------------------------------------------------------- C-FIND matching
def find_datasets(imaging: ImagingService, ident: Dataset, level: str) -> list[Dataset]:
    """Study Root C-FIND (PS3.4 C.6.2): single value, UID list, wildcard-free and DA range
    matching on the indexed keys; every other requested key is returned empty (universal)."""
    pid = _text(ident, "PatientID")
    lo, hi = _date_range(_text(ident, "StudyDate"))
    modality = _text(ident, "ModalitiesInStudy") if level == "STUDY" else _text(ident, "Modality")
    series_number = _text(ident, "SeriesNumber")
    q = StudyQuery(
        patient_global_hash=imaging.patient_global_hash(pid) if pid and "*" not in pid else "",
        study_uids=tuple(u for u in _text(ident, "StudyInstanceUID").split("\\") if u),
        accession_number=_text(ident, "AccessionNumber"),
        study_date_from=lo,
        study_date_to=hi,
        modality=modality if level == "STUDY" else "",
        series_uids=tuple(u for u in _text(ident, "SeriesInstanceUID").split("\\") if u)
        if level != "STUDY"
        else (),
        series_modality=modality if level != "STUDY" else "",
        series_number=int(series_number) if is_digits(series_number) else None,
        sop_uids=tuple(u for u in _text(ident, "SOPInstanceUID").split("\\") if u)
        if level == "IMAGE"
        else (),
        limit=10_000,
    )
    if level == "STUDY":
        attrs = [dicomjson.study_attributes(imaging, s) for s in imaging.index.studies(q)]
    elif level == "SERIES":
        attrs = [dicomjson.series_attributes(s) for s in imaging.index.series(q)]
    else:
        attrs = [dicomjson.instance_attributes(i) for i in imaging.index.instances(q)]
    out: list[Dataset] = []
    for a in attrs:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for elem in ident:
            if elem.keyword and elem.keyword != "QueryRetrieveLevel":
                value = a.get(elem.keyword)
                setattr(ds, elem.keyword, value if value is not None else "")
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if key in a and key not in ds:
                setattr(ds, key, a[key])
        out.append(ds)
    return out
