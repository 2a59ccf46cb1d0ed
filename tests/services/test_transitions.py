"""Every change of a study's state goes through ``transition``: checked against the one table,
written, audited; a move the table refuses writes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pacs.services.errors import IllegalTransition, NotFound
from pacs.services.workflow import Action, StudyState, transition
from storage.index import Index
from tests.factories import datasets as f
from tests.support.index import index_datasets

ROOT = Path(__file__).resolve().parents[2]


def _stored(index: Index, state: StudyState) -> str:
    ds = f.ct_instance()
    index_datasets(index, [ds], state=state)
    return str(ds.StudyInstanceUID)


def _state_and_trail(index: Index, study: str) -> tuple[str | None, list[tuple[str, str]]]:
    with index.unit_of_work() as repository:
        found = repository.studies.study(study)
        trail = [(e.action, e.outcome) for e in repository.audit.events(study_instance_uid=study)]
    return (found.state if found else None), trail


def test_a_legal_move_is_written_and_audited_with_where_it_came_from(index: Index) -> None:
    study = _stored(index, StudyState.ARCHIVED)

    with index.unit_of_work(write=True) as repository:
        new = transition(repository, study, Action.QUARANTINE, who="test",
                         detail={"findings": ["x"]})
    with index.unit_of_work() as repository:
        [event] = repository.audit.events(study_instance_uid=study)

    assert new is StudyState.QUARANTINED
    assert _state_and_trail(index, study) == ("quarantined", [("quarantine", "quarantined")])
    assert event.actor == "test" and event.detail == {"from": "archived", "findings": ["x"]}


@pytest.mark.parametrize(("state", "action"), [
    (StudyState.ARCHIVED, Action.ACCEPT),
    (StudyState.REJECTED, Action.ACCEPT),
    (StudyState.ARCHIVED, Action.PURGE),
    (StudyState.REJECTED, Action.QUARANTINE),
])
def test_a_move_the_table_refuses_writes_nothing(index: Index, state: StudyState,
                                                 action: Action) -> None:
    study = _stored(index, state)

    with pytest.raises(IllegalTransition), index.unit_of_work(write=True) as repository:
        transition(repository, study, action, who="test")

    assert _state_and_trail(index, study) == (state.value, [])


def test_a_purge_deletes_the_rejected_studys_rows(index: Index) -> None:
    study = _stored(index, StudyState.REJECTED)

    with index.unit_of_work(write=True) as repository:
        gone = transition(repository, study, Action.PURGE, who="test")

    assert gone is None
    assert _state_and_trail(index, study) == (None, [("delete", "purged")])


def test_an_unknown_study_is_not_found(index: Index) -> None:
    with pytest.raises(NotFound), index.unit_of_work(write=True) as repository:
        transition(repository, "1.2.3.4.5.6", Action.ACCEPT, who="test")


def test_nothing_else_in_the_server_writes_a_study_state() -> None:
    """The index's state writes are called from the transition function alone."""
    writers = {
        str(path.relative_to(ROOT))
        for package in ("pacs", "dicomweb")
        for path in (ROOT / package).rglob("*.py")
        if re.search(r"\.(set_state|delete_study)\(", path.read_text())
    }
    assert writers == {"pacs/services/workflow/transitions.py"}
