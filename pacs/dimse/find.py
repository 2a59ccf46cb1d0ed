"""C-FIND SCP (PS3.4 C.4.1): one pending response per match, C-CANCEL honoured between them.

The Identifier becomes a query (``identifiers.find_request``), the query service streams the
matches, and each response goes out through the lean encoders of ``encoding.py``: pynetdicom's
own C-FIND path spends two thirds of its time building and encoding pydicom datasets.
"""

from __future__ import annotations

import logging
from io import BytesIO
from typing import TYPE_CHECKING, cast

from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode

from pacs.dimse.identifiers import FIND_MODELS, find_request, response
from pacs.dimse.status import Status, query_status
from pacs.dimse.tls import subject_of
from pacs.dimse.transport import encoding, fast
from pacs.services.errors import PacsError
from pacs.services.query import QueryService
from pacs.services.workflow import actor

if TYPE_CHECKING:
    from pynetdicom.presentation import PresentationContext
    from pynetdicom.service_class import ServiceClass

log = logging.getLogger(__name__)


class Find:
    """One C-FIND request, from Identifier to final response."""

    def __init__(
        self,
        scp: ServiceClass,
        query: QueryService,
        request: C_FIND,
        context: PresentationContext,
        *,
        ae_title: str,
        fuzzy_person_names: bool,
    ) -> None:
        self.scp = scp
        self.query = query
        self.request = request
        self.context_id = cast(int, context.context_id)
        self.syntax = context.transfer_syntax[0]
        self.model = FIND_MODELS[str(context.abstract_syntax)]
        self.ae_title = ae_title
        self.fuzzy_person_names = fuzzy_person_names
        self.message_id = int(request.MessageID or 0)
        self.sop_class = str(request.AffectedSOPClassUID)
        self.max_pdu = int(scp.dimse.maximum_pdu_size or 0)

    def run(self) -> None:
        requestor = self.scp.assoc.requestor
        calling = str(requestor.ae_title).strip()
        who = actor("dimse", calling, requestor.address,
                    tls_subject=subject_of(self.scp.assoc))
        try:
            identifier = decode(
                cast(BytesIO, self.request.Identifier),
                self.syntax.is_implicit_VR,
                self.syntax.is_little_endian,
                self.syntax.is_deflated,
            )
            find = find_request(identifier, self.model,
                                fuzzy_person_names=self.fuzzy_person_names)
        except PacsError as error:
            status = query_status(error)
            log.warning("C-FIND from %s refused (0x%04X): %s", calling, status, error)
            self.query.refused(who=who, how="C-FIND", reason=str(error))
            self._send(status, comment=str(error))
            return
        except ValueError as error:  # an Identifier pydicom cannot decode
            log.warning("C-FIND from %s: undecodable identifier: %s", calling, error)
            self.query.refused(who=who, how="C-FIND", reason="cannot decode the identifier")
            self._send(Status.CANNOT_UNDERSTAND, comment=f"cannot decode identifier: {error}")
            return
        try:
            matches = self.query.find(find.query, who=who)  # audited by the service
        except PacsError as error:
            status = query_status(error)
            log.warning("C-FIND from %s refused (0x%04X): %s", calling, status, error)
            self._send(status, comment=str(error))
            return
        count = 0
        for row in matches:
            if self.scp.is_cancelled(self.message_id):
                log.info("C-FIND cancelled after %d matches", count)
                self._send(Status.CANCEL)
                return
            if not self.scp.assoc.is_established:
                return
            values, character_set = response(row, find, ae_title=self.ae_title)
            data = encoding.identifier(
                values, implicit_vr=self.syntax.is_implicit_VR, character_set=character_set
            )
            self._send(Status.PENDING, data=data)
            count += 1
        log.info("C-FIND %s level from %s: %d matches", find.query.level, calling, count)
        self._send(Status.SUCCESS)

    def _send(self, status: Status, *, data: bytes | None = None, comment: str = "") -> None:
        command = encoding.command_set(
            sop_class_uid=self.sop_class,
            command_field=encoding.C_FIND_RSP,
            message_id_responded_to=self.message_id,
            status=int(status),
            data_set=data is not None,
            error_comment=comment or None,
        )
        fast.send_when_drained(
            self.scp.assoc, encoding.p_data(self.context_id, command, data, self.max_pdu)
        )
