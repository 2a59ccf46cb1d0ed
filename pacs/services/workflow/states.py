"""Study states, the actions that move a study between them, and the one table of legal moves.

::

    received ──archive──▶ archived ──reject──▶ rejected ──purge──▶ (deleted)
        │                 ▲  │   ▲                 ▲
        └─quarantine─▶ quarantined ─accept─┘       │
                          │  └──────reject─────────┘
                          └─correct (re-checked, stays quarantined until accepted)

A study that is archived and fails a later instance's check goes to ``quarantined``. An
instance sent for a ``rejected`` study is stored and logged, but the study stays rejected (the
rejection is sticky until the purge). The index stores a state as its plain value and knows
no rule about it: which states a viewer sees is :data:`VISIBLE_TO_VIEWERS`, passed into every
query by the services.
"""

from __future__ import annotations

from enum import StrEnum

from pacs.services.errors import IllegalTransition


class StudyState(StrEnum):
    """Workflow state of a study."""

    RECEIVED = "received"
    QUARANTINED = "quarantined"
    ARCHIVED = "archived"
    REJECTED = "rejected"


VISIBLE_TO_VIEWERS: frozenset[str] = frozenset({StudyState.ARCHIVED.value})
"""The states whose studies viewers see (C-FIND/MOVE/GET, QIDO-RS, WADO-RS, routing)."""


class Action(StrEnum):
    ARCHIVE = "archive"  # every check passed (auto mode)
    QUARANTINE = "quarantine"  # a check failed, or manual mode
    ACCEPT = "accept"
    REJECT = "reject"
    CORRECT = "correct"
    PURGE = "purge"


R, Q, A, X = (StudyState.RECEIVED, StudyState.QUARANTINED, StudyState.ARCHIVED,
              StudyState.REJECTED)
TRANSITIONS: dict[tuple[StudyState, Action], StudyState | None] = {
    (R, Action.ARCHIVE): A,
    (R, Action.QUARANTINE): Q,
    (A, Action.QUARANTINE): Q,
    (Q, Action.QUARANTINE): Q,
    (Q, Action.ACCEPT): A,
    (Q, Action.REJECT): X,
    (A, Action.REJECT): X,
    (Q, Action.CORRECT): Q,
    (A, Action.CORRECT): A,
    (X, Action.PURGE): None,  # the study and its files are deleted
}


def next_state(current: StudyState, action: Action) -> StudyState | None:
    """The state ``action`` leads to; :class:`IllegalTransition` if it is not allowed."""
    key = (current, action)
    if key not in TRANSITIONS:
        raise IllegalTransition(f"cannot {action} a study that is {current}",
                                current_state=current.value)
    return TRANSITIONS[key]
