"""The service classes this SCP uses instead of pynetdicom's for its hot paths.

On the fast transport (``transport.fast``), pynetdicom picks these as the service classes of
requests (``serve_requests_with``); they keep its event model where it is cheap and replace
what is not (the stock transport serves Q/R by event handlers instead, ``published.py``):

* :class:`QueryRetrieveSCP`: C-FIND (``find.py``) and C-MOVE / C-GET (``retrieve.py``), with
  responses written by ``encoding.py``, instances sent from their files; and the Modality
  Worklist's C-FIND (``worklist.py``), behind the same access check;
* :class:`StorageSCP`: pynetdicom's Storage SCP, its C-STORE response written by ``encoding.py``
  (the handler, ``handlers.DimseHandlers.on_store``, is unchanged).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.service_class import (
    NonPatientObjectStorageServiceClass,
    QueryRetrieveServiceClass,
    ServiceClass,
    StorageServiceClass,
)
from pynetdicom.sop_class import uid_to_service_class

from pacs.dimse.access import AccessControl
from pacs.dimse.contexts import WORKLIST, is_storage_class
from pacs.dimse.find import Find
from pacs.dimse.identifiers import FIND_MODELS, GET_MODELS, MOVE_MODELS
from pacs.dimse.retrieve import Retrieval
from pacs.dimse.status import Status, query_status
from pacs.dimse.transport import Transport, encoding, fast
from pacs.dimse.worklist import WorklistFind
from pacs.services import metrics
from pacs.services.ae_registry import Service
from pacs.services.query import QueryService
from pacs.services.retrieve import RetrieveService
from pacs.services.worklist import WorklistService

if TYPE_CHECKING:
    from pynetdicom.presentation import PresentationContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryRetrieveServices:
    query: QueryService
    retrieve: RetrieveService
    ae_title: str
    fuzzy_person_names: bool = True
    access: AccessControl | None = None  # None: every calling AE may find, move and get
    pending_interval: float = 0.0  # seconds between a retrieve's Pending responses (settings)
    worklist: WorklistService | None = None  # None: no Modality Worklist (pynetdicom's answer)


_SERVICES: dict[type[Any], tuple[Service, int]] = {
    C_FIND: (Service.FIND, encoding.C_FIND_RSP),
    C_MOVE: (Service.MOVE, encoding.C_MOVE_RSP),
    C_GET: (Service.GET, encoding.C_GET_RSP),
}


class QueryRetrieveSCP(QueryRetrieveServiceClass):
    """C-FIND, C-MOVE and C-GET of the Patient Root and Study Root models, and C-FIND of
    the Modality Worklist Information Model."""

    services: ClassVar[QueryRetrieveServices | None] = None  # one per process, see install()

    def SCP(self, req: Any, context: PresentationContext) -> None:  # noqa: N802 (pynetdicom)
        services = type(self).services
        syntax = str(context.abstract_syntax)
        if services is None:
            super().SCP(req, context)
        elif services.access is not None and self._denied(services.access, req, context):
            return
        elif isinstance(req, C_FIND) and syntax in FIND_MODELS:
            with _timed("C-FIND"):
                Find(self, services.query, req, context, ae_title=services.ae_title,
                     fuzzy_person_names=services.fuzzy_person_names).run()
        elif isinstance(req, C_FIND) and syntax in WORKLIST and services.worklist is not None:
            with _timed("C-FIND"):
                WorklistFind(self, services.worklist, req, context,
                             fuzzy_person_names=services.fuzzy_person_names).run()
        elif isinstance(req, C_MOVE) and syntax in MOVE_MODELS:
            with _timed("C-MOVE"):
                Retrieval(self, services.retrieve, req, context,
                          pending_interval=services.pending_interval).move()
        elif isinstance(req, C_GET) and syntax in GET_MODELS:
            with _timed("C-GET"):
                Retrieval(self, services.retrieve, req, context,
                          pending_interval=services.pending_interval).get()
        else:
            super().SCP(req, context)

    def _denied(self, access: AccessControl, req: Any, context: PresentationContext) -> bool:
        """Answer a request the calling AE may not make with a failure and its reason
        (``access.py``); True when it was refused."""
        service, command_field = _SERVICES.get(type(req), (None, 0))
        denied = access.denial(self.assoc, service) if service is not None else None
        if denied is None:
            return False
        command = encoding.command_set(
            sop_class_uid=str(req.AffectedSOPClassUID),
            command_field=command_field,
            message_id_responded_to=int(req.MessageID or 0),
            status=int(query_status(denied)),
            error_comment=str(denied),
        )
        fast.send_when_drained(self.assoc, encoding.p_data(
            cast(int, context.context_id), command, None, int(self.dimse.maximum_pdu_size or 0)))
        return True


@contextlib.contextmanager
def _timed(service: str) -> Iterator[None]:
    """The request's time in the metrics (``pacs_dimse_request_duration_seconds``)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics.dimse_request(service, time.perf_counter() - started)


class StorageSCP(StorageServiceClass):
    """pynetdicom's Storage SCP with a lean C-STORE response (PS3.4 B.2.3)."""

    def SCP(self, req: C_STORE, context: PresentationContext) -> None:  # noqa: N802
        context_id = cast(int, context.context_id)
        try:
            answer = evt.trigger(self.assoc, evt.EVT_C_STORE,
                                 {"request": req, "context": context.as_tuple})
        except Exception:  # a handler bug must not kill the association (as pynetdicom does)
            log.exception("C-STORE handler failed")
            answer = int(Status.PROCESSING_FAILURE)
        finally:
            if req._dataset_file:
                req._dataset_file.close()
                # the store moved it into place; else it is left over (a failed store)
                if os.path.lexists(req._dataset_file.name):
                    with contextlib.suppress(OSError):
                        os.unlink(req._dataset_file.name)
        if not self.assoc.is_established:
            return
        if isinstance(answer, Dataset):
            status, comment = int(answer.Status), str(answer.get("ErrorComment", "") or "")
        else:
            status, comment = int(cast(int, answer)), ""
        command = encoding.command_set(
            sop_class_uid=str(req.AffectedSOPClassUID),
            command_field=encoding.C_STORE_RSP,
            message_id_responded_to=int(req.MessageID or 0),
            status=status,
            sop_instance_uid=str(req.AffectedSOPInstanceUID),
            error_comment=comment or None,
        )
        fast.send_when_drained(
            self.assoc,
            encoding.p_data(context_id, command, None, int(self.dimse.maximum_pdu_size or 0)),
        )


def install(services: QueryRetrieveServices | None, transport: Transport, *,
            accept_unknown_sop_classes: bool = True) -> None:
    """Serve Q/R (when ``services`` is given) and storage requests with the classes above,
    on the fast transport (their responses go straight to its DUL); storage classes
    pynetdicom does not list only with ``accept_unknown_sop_classes``, else pynetdicom's
    answer (no service class: A-ABORT), as on the stock transport."""
    QueryRetrieveSCP.services = services
    query_retrieve = frozenset(FIND_MODELS) | frozenset(MOVE_MODELS) | frozenset(GET_MODELS)
    if services is not None and services.worklist is not None:
        query_retrieve |= frozenset(WORKLIST)

    def choose(uid: str) -> type[Any] | None:
        if uid in query_retrieve:
            return QueryRetrieveSCP
        pynetdicoms = uid_to_service_class(uid)
        if pynetdicoms is StorageServiceClass or pynetdicoms is NonPatientObjectStorageServiceClass:
            return StorageSCP
        if (pynetdicoms is ServiceClass and accept_unknown_sop_classes
                and is_storage_class(uid)):  # one it does not list
            return StorageSCP
        return None

    transport.serve_requests_with(choose)
