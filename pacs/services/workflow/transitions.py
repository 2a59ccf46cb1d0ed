"""The one function through which a study's state changes.

Every move (the gate's quarantine, a reviewer's accept or reject, the stability check's
quarantine, the purge) is checked against :data:`~pacs.services.workflow.states.TRANSITIONS`,
written, and audited here, in the caller's unit of work: a move the table does not allow never
reaches the index, and none goes unrecorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pacs.services.changes import ChangeEvent, record_change
from pacs.services.errors import NotFound
from pacs.services.workflow.states import Action, StudyState, next_state
from storage.index import Repository

#: The audit trail's name of each action, where it is not the action's own.
_AUDITED_AS = {Action.PURGE: "delete"}

#: The change feed's event of each move (``pacs.services.changes``).
_CHANGE = {Action.ARCHIVE: ChangeEvent.ARCHIVED, Action.ACCEPT: ChangeEvent.ARCHIVED,
           Action.QUARANTINE: ChangeEvent.QUARANTINED, Action.REJECT: ChangeEvent.REJECTED,
           Action.CORRECT: ChangeEvent.CORRECTED, Action.PURGE: ChangeEvent.DELETED}


def locked_state(repository: Repository, study_instance_uid: str, *, owner: str | None = None
                 ) -> StudyState:
    """The study's state, its row locked for this unit of work (PostgreSQL); with ``owner``,
    only while that server holds its lease. :class:`NotFound` when there is no such study
    (or the lease is not ``owner``'s)."""
    state = repository.studies.lock_study(study_instance_uid, owner=owner)
    if state is None:
        raise NotFound(f"no study {study_instance_uid}")
    return StudyState(state)


def transition(
    repository: Repository,
    study_instance_uid: str,
    action: Action,
    *,
    who: str,
    current: StudyState | None = None,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> StudyState | None:
    """Apply ``action`` to a study: the state it leads to, written and audited.

    ``current``: the state the caller read under the study's lock in this unit of work (else
    it is locked and read here). ``reason``: why a study is rejected. The audit event is
    ``action`` → the new state, its detail ``{"from": current, **detail}``; the change feed
    gets the move's event in the same unit of work. A purge deletes the
    study's rows (its files are the caller's) and returns None. :class:`IllegalTransition`
    when the table does not allow the move: nothing is written.
    """
    if current is None:
        current = locked_state(repository, study_instance_uid)
    new = next_state(current, action)
    if new is None:
        repository.studies.delete_study(study_instance_uid)
    else:
        repository.studies.set_state(study_instance_uid, new.value, reason=reason)
    repository.audit.append(
        actor=who, action=_AUDITED_AS.get(action, action.value),
        outcome=new.value if new is not None else "purged",
        study_instance_uid=study_instance_uid,
        detail={"from": current.value, **(detail or {})},
    )
    record_change(repository, _CHANGE[action], study_instance_uid)
    return new
