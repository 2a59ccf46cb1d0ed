"""The C-STORE SCU of routing: one association per job, every instance sent from its file.

Contexts as for C-MOVE (the stored pairs plus uncompressed fall-backs); each instance goes out
unchanged when its transfer syntax was accepted, decoded otherwise (``RetrieveService.prepared``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, build_context, evt

from pacs.dimse.contexts import missing_context
from pacs.dimse.transport import Transport
from pacs.services.errors import CannotTranscode, NotFound
from pacs.services.retrieve import Destination, RetrievePlan, RetrieveService
from pacs.services.routing import SendReport

log = logging.getLogger(__name__)


class StudySender:
    def __init__(self, ae_title: str, *, transport: Callable[[], Transport],
                 timeout: float = 30.0) -> None:
        """``transport``: gives the process's transport, installed (when the first job runs)."""
        self.ae_title = ae_title
        self._transport = transport
        self.timeout = timeout

    @property
    def transport(self) -> Transport:
        return self._transport()

    def __call__(self, destination: Destination, plan: RetrievePlan,
                 retrieve: RetrieveService) -> SendReport:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = self.timeout
        contexts = [build_context(cls, list(ts)) for cls, ts in plan.proposals()]
        assoc = ae.associate(destination.host, destination.port, contexts=contexts,
                             ae_title=destination.ae_title,
                             evt_handlers=[(evt.EVT_CONN_OPEN, self._opened)])
        if not assoc.is_established:
            return SendReport(0, len(plan.items),
                              f"cannot associate with {destination.ae_title} at "
                              f"{destination.host}:{destination.port}")
        accepted: dict[str, list[str]] = {}
        for context in assoc.accepted_contexts:
            accepted.setdefault(str(context.abstract_syntax), []).extend(
                str(ts) for ts in context.transfer_syntax)
        sent, failed, error = 0, 0, None
        try:
            with self.transport.sending(assoc):
                for number, item in enumerate(plan.items, start=1):
                    if not self.transport.connected(assoc):
                        failed += len(plan.items) - number + 1
                        error = error or "the peer closed the association"
                        break
                    problem = _store(self.transport, assoc, item, accepted, retrieve, number)
                    if problem is None:
                        sent += 1
                    else:
                        failed += 1
                        error = error or problem
        finally:
            if self.transport.connected(assoc):
                assoc.release()
            else:  # the peer aborted or went away: nothing to release
                assoc.abort()
        return SendReport(sent, failed, error)

    def _opened(self, event: Any) -> None:
        self.transport.requested(event.assoc)


def _store(transport: Transport, assoc: Any, item: Any, accepted: dict[str, list[str]],
           retrieve: RetrieveService, number: int) -> str | None:
    syntaxes = accepted.get(item.sop_class_uid or "")
    if not syntaxes:  # no context for the class at all: say so, not "no transfer syntax"
        problem = missing_context(assoc, item.sop_class_uid or "", peer_is_requestor=False)
        log.warning("routing %s: %s", item.sop_instance_uid, problem)
        return f"{item.sop_instance_uid}: {problem}"
    try:
        with retrieve.prepared(item, syntaxes) as ready:
            answer = transport.send_file(assoc, ready.path, msg_id=number % 65536,
                                      originator_aet=None, originator_id=None)
    except (CannotTranscode, NotFound) as problem:
        return str(problem)
    except (ValueError, AttributeError, RuntimeError) as problem:
        return f"{item.sop_instance_uid}: {problem}"
    status = answer.get("Status")
    if status is None:
        return f"{item.sop_instance_uid}: no C-STORE response"
    if int(status) not in (0x0000, 0x0001) and not 0xB000 <= int(status) <= 0xBFFF:
        return f"{item.sop_instance_uid}: C-STORE answered 0x{int(status):04X}"
    return None

