"""The QA workflow: study states and the one transition function, the gate every ingest
passes, review actions (accept, reject, correct, merge), stability, routing plans and purge.

- :mod:`.states`: :class:`StudyState`, the actions, the one table of legal moves, and which
  states viewers see;
- :mod:`.transitions`: :func:`transition`, through which every state change goes;
- :mod:`.gate`: the checks of each stored instance (:class:`QaGate`);
- :mod:`.review`, :mod:`.stability`, :mod:`.purge`: the parts of :class:`WorkflowService`;
- :mod:`.routes`: routing rules and the plan of a study's jobs; :mod:`.actors`: audit names.
"""

from pacs.services.workflow.actors import actor
from pacs.services.workflow.gate import QaGate
from pacs.services.workflow.routes import RouteRule
from pacs.services.workflow.service import StudyReview, WorkflowService
from pacs.services.workflow.stability import can_decode
from pacs.services.workflow.states import (
    TRANSITIONS,
    VISIBLE_TO_VIEWERS,
    Action,
    StudyState,
    next_state,
)
from pacs.services.workflow.transitions import transition
from storage.index.audit import AuditRecord
from storage.index.findings import FindingRecord
from storage.index.jobs import JobRecord
from storage.index.studies import StudyRecord

# The records front ends format (they never import the index themselves).
__all__ = ["TRANSITIONS", "VISIBLE_TO_VIEWERS", "Action", "AuditRecord", "FindingRecord",
           "JobRecord", "QaGate", "RouteRule", "StudyRecord", "StudyReview", "StudyState",
           "WorkflowService", "actor", "can_decode", "next_state", "transition"]
