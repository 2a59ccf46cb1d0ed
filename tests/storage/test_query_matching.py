"""Repository.find / instances_for on a real index (SQLite, and PostgreSQL when switched on).

Every matching kind of PS3.4 C.2.2.2 at every level, computed keys, paging, and the rule that
viewers see archived studies only.
"""

from __future__ import annotations

from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from pacs.services.workflow import VISIBLE_TO_VIEWERS, StudyState
from storage.attributes import Level
from storage.index import Index
from storage.index.matching import find_statement
from storage.query import (
    Computed,
    Condition,
    InvalidQueryValue,
    Query,
    SequenceItem,
    SingleValue,
    condition,
    sequence_condition,
)
from tests.factories import datasets as f
from tests.support.index import index_datasets

ARCHIVED = StudyState.ARCHIVED


def viewer_query(*args: Any, **kwargs: Any) -> Query:
    """A query that sees what viewers see (the query service scopes every query so)."""
    return Query(*args, visible_states=VISIBLE_TO_VIEWERS, **kwargs)


def store(index: Index, *datasets: Dataset, state: StudyState = ARCHIVED) -> None:
    index_datasets(index, datasets, state=state)


def conditions(**values: str) -> tuple[Condition, ...]:
    built = tuple(condition(keyword, value) for keyword, value in values.items())
    return tuple(c for c in built if c is not None)


def find(index: Index, level: Level, *keys: str, fuzzy: bool = True,
         limit: int | None = None, offset: int = 0, **values: str) -> list[dict[str, Any]]:
    query = viewer_query(level, conditions(**values), keys, limit=limit, offset=offset,
                  fuzzy_person_names=fuzzy)
    with index.unit_of_work() as repo:
        return list(repo.find(query))


def column(rows: list[dict[str, Any]], key: str) -> list[Any]:
    return [row[key] for row in rows]


# -- single value, wildcard, person names -----------------------------------------------------


def test_person_names_match_ignoring_case_and_accents(index: Index) -> None:
    store(index,
          f.ct_instance(PatientID="P1", PatientName="Doe^John"),
          f.ct_instance(PatientID="P2", PatientName="DOE^JANE"),
          f.ct_instance(PatientID="P3", PatientName="Smith^Doe"),
          f.non_ascii_instance("ISO_IR 192", PatientID="P4", PatientName="Müller^Jürgen"),
          f.non_ascii_instance("ISO_IR 192", PatientID="P5", PatientName="Διονύσιος^Καλός"),
          f.non_ascii_instance("ISO_IR 192", PatientID="P6", PatientName="山田^太郎"))

    doe = find(index, Level.STUDY, "PatientName", PatientName="doe*")
    muller = find(index, Level.PATIENT, "PatientName", PatientName="MULLER^JURGEN")
    greek = find(index, Level.STUDY, "PatientName", PatientName="ΔΙΟΝΥΣΙΟΣ*")
    japanese = find(index, Level.SERIES, "PatientName", PatientName="山田*")
    exact_case = find(index, Level.STUDY, "PatientName", PatientName="Doe^John")

    assert sorted(column(doe, "PatientName")) == ["DOE^JANE", "Doe^John"]
    assert column(muller, "PatientName") == ["Müller^Jürgen"]
    assert column(greek, "PatientName") == ["Διονύσιος^Καλός"]
    assert column(japanese, "PatientName") == ["山田^太郎"]
    assert column(exact_case, "PatientID") == ["P1"]


def test_without_fuzzy_names_person_names_match_exactly(index: Index) -> None:
    store(index, f.ct_instance(PatientID="P1", PatientName="Doe^John"),
          f.ct_instance(PatientID="P2", PatientName="DOE^JOHN"),
          f.ct_instance(PatientID="P3", PatientName="Müller^Jürgen"))

    exact = find(index, Level.STUDY, PatientName="DOE^JOHN", fuzzy=False)
    folded = find(index, Level.STUDY, PatientName="doe^john", fuzzy=False)
    wildcard = find(index, Level.STUDY, PatientName="D?e*", fuzzy=False)
    accents = find(index, Level.STUDY, PatientName="Muller*", fuzzy=False)

    assert column(exact, "PatientID") == ["P2"]
    assert folded == [] and accents == []
    assert column(wildcard, "PatientID") == ["P1"]


def test_other_text_matches_case_sensitively(index: Index) -> None:
    store(index, f.ct_instance(PatientID="P1", StudyDescription="CT CHEST"),
          f.ct_instance(PatientID="P2", StudyDescription="ct chest low dose"))

    assert column(find(index, Level.STUDY, StudyDescription="CT CHEST"), "PatientID") == ["P1"]
    assert column(find(index, Level.STUDY, StudyDescription="ct*"), "PatientID") == ["P2"]
    assert find(index, Level.STUDY, StudyDescription="ct chest") == []
    assert find(index, Level.STUDY, PatientID="p1") == []


def test_question_mark_and_literal_percent_and_underscore(index: Index) -> None:
    store(index, *(f.ct_instance(PatientID=pid, AccessionNumber=acc) for pid, acc in
                   [("P1", "A%1"), ("P2", "A_1"), ("P3", "AB1"), ("P4", "A%12")]))

    def accessions(value: str) -> list[str]:
        return sorted(column(find(index, Level.STUDY, "AccessionNumber", AccessionNumber=value),
                             "AccessionNumber"))

    assert accessions("A_1") == ["A_1"]
    assert accessions("A%1") == ["A%1"]
    assert accessions("A_*") == ["A_1"]
    assert accessions("A%*") == ["A%1", "A%12"]
    assert accessions("A?1") == ["A%1", "AB1", "A_1"]
    assert accessions("*1") == ["A%1", "AB1", "A_1"]


def test_uid_lists_match_any_of_the_uids(index: Index) -> None:
    datasets = [f.ct_instance(PatientID=f"P{i}") for i in range(3)]
    store(index, *datasets)
    wanted = [str(datasets[0].StudyInstanceUID), str(datasets[2].StudyInstanceUID)]

    rows = find(index, Level.STUDY, StudyInstanceUID="\\".join(wanted))
    images = find(index, Level.IMAGE, SOPInstanceUID=f"{datasets[1].SOPInstanceUID}\\1.2.3")

    assert sorted(column(rows, "StudyInstanceUID")) == sorted(wanted)
    assert column(images, "SOPInstanceUID") == [datasets[1].SOPInstanceUID]


# -- ranges ----------------------------------------------------------------------------------


def test_date_ranges_with_open_ends(index: Index) -> None:
    store(index, *(f.ct_instance(PatientID=pid, StudyDate=day) for pid, day in
                   [("P1", "20231231"), ("P2", "20240115"), ("P3", "20240301")]))

    def ids(value: str, level: Level = Level.STUDY) -> list[str]:
        return sorted(column(find(index, level, StudyDate=value), "PatientID"))

    assert ids("20240101-20240131") == ["P2"]
    assert ids("-20231231") == ["P1"]
    assert ids("20240101-") == ["P2", "P3"]
    assert ids("20240301") == ["P3"]
    assert ids("20240115-20240301", Level.PATIENT) == ["P2", "P3"]
    assert ids("20240115-20240301", Level.IMAGE) == ["P2", "P3"]


def test_partial_times_and_ranges(index: Index) -> None:
    store(index, *(f.ct_instance(PatientID=pid, StudyTime=time) for pid, time in
                   [("P1", "0800"), ("P2", "101500"), ("P3", "235959.5")]))

    def ids(value: str) -> list[str]:
        return sorted(column(find(index, Level.STUDY, StudyTime=value), "PatientID"))

    assert ids("10-11") == ["P2"]
    assert ids("1015-") == ["P2", "P3"]
    assert ids("-08") == ["P1"]
    assert ids("-1015") == ["P1", "P2"]
    assert ids("2300-0900") == ["P1", "P3"]  # across midnight
    assert ids("101500") == ["P2"]


def test_date_times_with_utc_offsets_compare_in_utc(index: Index) -> None:
    store(index, *(f.ct_instance(PatientID="P1", InstanceNumber=n, AcquisitionDateTime=dt)
                   for n, dt in [(1, "20240101120000+0100"), (2, "20240101113000"),
                                 (3, "20240101130000-0100"), (4, "20231231")]))

    def numbers(value: str) -> list[int]:
        rows = find(index, Level.IMAGE, "InstanceNumber", AcquisitionDateTime=value)
        return sorted(column(rows, "InstanceNumber"))

    assert numbers("20240101110000-20240101120000") == [1, 2]
    assert numbers("20240101130000+0200-20240101133000+0200") == [1, 2]
    assert numbers("20240101") == [1, 2, 3]
    assert numbers("20240101140000+0000") == [3]
    assert numbers("-20231231235959") == [4]
    assert numbers("2024-") == [1, 2, 3]
    rows = find(index, Level.IMAGE, "AcquisitionDateTime", AcquisitionDateTime="20240101")
    assert "20240101120000+0100" in column(rows, "AcquisitionDateTime")  # returned as sent


# -- lower-level keys, sequences, computed keys ---------------------------------------------


def test_numbers_and_lower_levels(index: Index) -> None:
    store(index, *(f.ct_instance(PatientID="P1", SeriesNumber=s, InstanceNumber=i)
                   for s in (1, 2) for i in (1, 2, 3)),
          f.mr_instance(PatientID="P2", SeriesNumber=7))

    series = find(index, Level.SERIES, "Modality", "SeriesNumber", SeriesNumber="2")
    images = find(index, Level.IMAGE, "InstanceNumber", "SOPClassUID", "Rows",
                  PatientID="P1", InstanceNumber="3")
    mr_patients = find(index, Level.PATIENT, Modality="MR")
    ct_studies = find(index, Level.STUDY, SOPClassUID=str(f.CT_IMAGE))

    assert [(r["Modality"], r["SeriesNumber"]) for r in series] == [("CT", 2)]
    assert [(r["InstanceNumber"], r["SOPClassUID"], r["Rows"]) for r in images] == [
        (3, f.CT_IMAGE, 64), (3, f.CT_IMAGE, 64)]
    assert column(mr_patients, "PatientID") == ["P2"]
    assert column(ct_studies, "PatientID") == ["P1"]


def _requested(procedure: str, step: str) -> Dataset:
    item = Dataset()
    item.RequestedProcedureID = procedure
    item.ScheduledProcedureStepID = step
    return item


def test_sequence_matching_needs_one_item_to_match_every_key(index: Index) -> None:
    store(index,
          f.ct_instance(PatientID="P1", RequestAttributesSequence=[
              _requested("RP1", "SPS1"), _requested("RP2", "SPS2")]),
          f.ct_instance(PatientID="P2", RequestAttributesSequence=[_requested("RP3", "SPS3")]))

    def ids(level: Level, **item: str) -> list[str]:
        sequence = sequence_condition("RequestAttributesSequence", conditions(**item))
        query = viewer_query(level, (sequence,) if sequence else ())
        with index.unit_of_work() as repo:
            return sorted(column(list(repo.find(query)), "PatientID"))

    assert ids(Level.STUDY, RequestedProcedureID="RP1") == ["P1"]
    assert ids(Level.SERIES, RequestedProcedureID="RP1", ScheduledProcedureStepID="SPS1") == ["P1"]
    assert ids(Level.STUDY, RequestedProcedureID="RP1", ScheduledProcedureStepID="SPS2") == []
    assert ids(Level.PATIENT, ScheduledProcedureStepID="SPS*") == ["P1", "P2"]
    assert ids(Level.IMAGE, RequestedProcedureID="RP3") == ["P2"]


def test_computed_keys_count_and_list_the_hierarchy(index: Index) -> None:
    store(index, *(f.ct_instance(PatientID="P1", SeriesNumber=1, InstanceNumber=i)
                   for i in range(1, 3)))
    store(index, *(f.mr_instance(PatientID="P1", PatientName="DOE^JOHN", StudyDate="20240115",
                                 AccessionNumber="ACC-CT-1", SeriesNumber=s, InstanceNumber=i)
                   for s in (2, 3) for i in range(1, 4)))
    store(index, f.cr_instance(PatientID="P1", PatientName="DOE^JOHN"),
          state=StudyState.QUARANTINED)
    all_keys = tuple(Computed)

    [patient] = find(index, Level.PATIENT, *all_keys)
    [study] = find(index, Level.STUDY, *all_keys)
    series = find(index, Level.SERIES, *all_keys)

    assert (patient["NumberOfPatientRelatedStudies"], patient["NumberOfPatientRelatedSeries"],
            patient["NumberOfPatientRelatedInstances"]) == (1, 3, 8)
    assert patient["ModalitiesInStudy"] is None and patient["NumberOfStudyRelatedSeries"] is None
    assert (study["NumberOfStudyRelatedSeries"], study["NumberOfStudyRelatedInstances"]) == (3, 8)
    assert study["ModalitiesInStudy"] == ["CT", "MR"]
    assert study["SOPClassesInStudy"] == sorted([f.CT_IMAGE, f.MR_IMAGE])
    assert study["NumberOfSeriesRelatedInstances"] is None
    assert sorted(column(series, "NumberOfSeriesRelatedInstances")) == [2, 3, 3]
    assert column(series, "NumberOfStudyRelatedInstances") == [8, 8, 8]


def test_matching_on_modalities_and_sop_classes_in_study(index: Index) -> None:
    store(index, f.ct_instance(PatientID="P1"), f.mr_instance(PatientID="P1", StudyDate="20240115",
                                                             AccessionNumber="ACC-CT-1"),
          f.mr_instance(PatientID="P2"), f.cr_instance(PatientID="P3"))

    def ids(**values: str) -> list[str]:
        return sorted(column(find(index, Level.STUDY, "ModalitiesInStudy", **values),
                             "PatientID"))

    assert ids(ModalitiesInStudy="CT") == ["P1"]
    assert ids(ModalitiesInStudy="MR") == ["P1", "P2"]
    assert ids(ModalitiesInStudy="CT\\CR") == ["P1", "P3"]
    assert ids(SOPClassesInStudy=str(f.MR_IMAGE)) == ["P1", "P2"]
    [both] = find(index, Level.STUDY, "ModalitiesInStudy", ModalitiesInStudy="CT")
    assert both["ModalitiesInStudy"] == ["CT", "MR"]  # all of the study's, not the matched one
    assert sorted(column(find(index, Level.SERIES, ModalitiesInStudy="CT"), "PatientID")) == [
        "P1", "P1"]


def test_one_row_per_study_however_many_instances(index: Index) -> None:
    store(index, *(f.ct_instance(PatientID="BIG", InstanceNumber=i, Rows=8, Columns=8)
                   for i in range(1, 301)))

    rows = find(index, Level.STUDY, "NumberOfStudyRelatedInstances", "ModalitiesInStudy",
                ModalitiesInStudy="CT", SOPClassUID=str(f.CT_IMAGE), PatientName="doe*")
    patients = find(index, Level.PATIENT, "NumberOfPatientRelatedInstances", Modality="CT")

    assert len(rows) == 1 and rows[0]["NumberOfStudyRelatedInstances"] == 300
    assert len(patients) == 1 and patients[0]["NumberOfPatientRelatedInstances"] == 300
    with index.unit_of_work() as repo:
        big = viewer_query(Level.STUDY, conditions(PatientID="BIG"))
        assert len(repo.instances_for(big)) == 300


def test_limit_and_offset_page_through_every_match_once(index: Index) -> None:
    store(index, *(f.ct_instance(PatientID=f"P{i}", PatientName=f"DOE^{i}") for i in range(7)))

    pages = [find(index, Level.STUDY, limit=3, offset=o, PatientName="doe*") for o in (0, 3, 6)]
    everything = find(index, Level.STUDY, PatientName="doe*")

    assert [len(p) for p in pages] == [3, 3, 1]
    assert [r for page in pages for r in page] == everything
    assert len({r["StudyInstanceUID"] for r in everything}) == 7
    assert find(index, Level.STUDY, limit=0) == []


def test_each_row_of_a_page_gets_the_computed_keys_of_its_own_entity(index: Index) -> None:
    """Counts and lists are computed on the page's ids, at the query's level and above."""
    makers = {"CT": f.ct_instance, "MR": f.mr_instance, "CR": f.cr_instance}
    studies = {  # study: patient, [(series number, modality, instances)]
        "S1": ("P1", [(1, "CT", 2)]),
        "S2": ("P2", [(1, "MR", 1), (2, "MR", 3)]),
        "S3": ("P3", [(1, "CR", 4), (2, "CT", 1), (3, "CT", 2)]),
        "S4": ("P1", [(1, "MR", 5)]),
    }
    series_uid: dict[tuple[str, int], str] = {}
    for name, (pid, series) in studies.items():
        for number, modality, count in series:
            store(index, *(makers[modality](
                PatientID=pid, PatientName=f"DOE^{pid}", StudyInstanceUID=f.make_uid(name),
                SeriesNumber=number, InstanceNumber=i, Rows=8, Columns=8,
            ) for i in range(1, count + 1)))
            series_uid[(name, number)] = str(f.make_uid("series", f.make_uid(name), modality,
                                                        number))
    by_uid = {str(f.make_uid(name)): name for name in studies}
    keys = tuple(Computed)

    def pages(level: Level, size: int, **values: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while page := find(index, level, *keys, limit=size, offset=len(rows), **values):
            rows += page
        return rows

    study_rows = pages(Level.STUDY, 3)  # no condition: the page walks the studies in order
    assert [by_uid[r["StudyInstanceUID"]] for r in study_rows] == ["S1", "S2", "S3", "S4"]
    for row in study_rows:
        series = studies[by_uid[row["StudyInstanceUID"]]][1]
        assert row["NumberOfStudyRelatedSeries"] == len(series)
        assert row["NumberOfStudyRelatedInstances"] == sum(n for *_, n in series)
        assert row["ModalitiesInStudy"] == sorted({m for _, m, _ in series})

    series_rows = pages(Level.SERIES, 2)
    assert len(series_rows) == 7
    for row in series_rows:
        name = by_uid[row["StudyInstanceUID"]]
        [(number, _, count)] = [s for s in studies[name][1]
                                if series_uid[(name, s[0])] == row["SeriesInstanceUID"]]
        assert row["NumberOfSeriesRelatedInstances"] == count
        assert row["NumberOfStudyRelatedInstances"] == sum(n for *_, n in studies[name][1])

    patient_rows = {r["PatientID"]: r for r in pages(Level.PATIENT, 1)}
    assert {pid: (r["NumberOfPatientRelatedStudies"], r["NumberOfPatientRelatedSeries"],
                  r["NumberOfPatientRelatedInstances"]) for pid, r in patient_rows.items()} == {
        "P1": (2, 2, 7), "P2": (1, 2, 4), "P3": (1, 3, 7)}

    images = pages(Level.IMAGE, 2, SeriesInstanceUID=series_uid[("S3", 1)])
    assert len(images) == 4
    assert {(r["NumberOfSeriesRelatedInstances"], r["NumberOfStudyRelatedSeries"])
            for r in images} == {(4, 3)}


# -- visibility ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state", [StudyState.QUARANTINED, StudyState.RECEIVED, StudyState.REJECTED]
)
def test_studies_not_archived_are_invisible_until_archived(index: Index, state: StudyState) -> None:
    hidden = f.ct_instance(PatientID="HIDDEN", PatientName="HIDDEN^ONE")
    store(index, hidden, state=state)
    store(index, f.ct_instance(PatientID="SHOWN", PatientName="SHOWN^ONE"))
    everything = viewer_query(Level.PATIENT)

    with index.unit_of_work() as repo:
        seen = {level: column(list(repo.find(viewer_query(level))), "PatientID") for level in Level}
        by_uid = list(repo.find(viewer_query(Level.IMAGE, conditions(
            SOPInstanceUID=str(hidden.SOPInstanceUID)))))
        retrievable = {i.sop_instance_uid for i in repo.instances_for(everything)}
    with index.unit_of_work(write=True) as repo:
        assert repo.studies.set_state(str(hidden.StudyInstanceUID), ARCHIVED)
        assert not repo.studies.set_state("1.2.3.4.5", ARCHIVED)
    with index.unit_of_work() as repo:
        after = column(list(repo.find(viewer_query(Level.STUDY))), "PatientID")

    assert seen == {level: ["SHOWN"] for level in Level}
    assert by_uid == []
    assert hidden.SOPInstanceUID not in retrievable and len(retrievable) == 1
    assert sorted(after) == ["HIDDEN", "SHOWN"]


def test_the_query_sees_the_states_its_caller_names_and_nothing_unscoped(index: Index) -> None:
    """Storage decides no visibility: a query sees the studies of the states it was given
    (the workflow's choice), and one given none sees nothing."""
    store(index, f.ct_instance(PatientID="HELD"), state=StudyState.QUARANTINED)
    store(index, f.ct_instance(PatientID="SHOWN"))

    with index.unit_of_work() as repo:
        unscoped = {level: list(repo.find(Query(level))) for level in Level}
        unscoped_items = repo.instances_for(Query(Level.PATIENT))
        held = column(list(repo.find(Query(Level.STUDY, visible_states=frozenset(
            {StudyState.QUARANTINED})))), "PatientID")
        both = column(list(repo.find(Query(Level.PATIENT, visible_states=frozenset(
            {StudyState.QUARANTINED, StudyState.ARCHIVED})))), "PatientID")

    assert unscoped == {level: [] for level in Level} and unscoped_items == []
    assert held == ["HELD"]
    assert sorted(both) == ["HELD", "SHOWN"]


def test_patient_counts_ignore_studies_not_archived(index: Index) -> None:
    store(index, f.ct_instance(PatientID="P1", StudyDate="20240101"))
    store(index, f.ct_instance(PatientID="P1", StudyDate="20240202", InstanceNumber=2),
          state=StudyState.REJECTED)

    only_rejected_match = find(index, Level.PATIENT, StudyDate="20240202-")
    [patient] = find(index, Level.PATIENT, "NumberOfPatientRelatedStudies",
                     "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances")

    assert only_rejected_match == []
    assert (patient["NumberOfPatientRelatedStudies"], patient["NumberOfPatientRelatedSeries"],
            patient["NumberOfPatientRelatedInstances"]) == (1, 1, 1)


# -- retrieve --------------------------------------------------------------------------------


def test_instances_for_lists_every_instance_under_the_matches_in_order(index: Index) -> None:
    first = [f.ct_instance(PatientID="P1", SeriesNumber=s, InstanceNumber=i)
             for s in (1, 2) for i in (3, 1, 2)]
    store(index, *first, f.mr_instance(PatientID="P2"))

    with index.unit_of_work() as repo:
        items = repo.instances_for(viewer_query(Level.PATIENT, conditions(PatientID="P1")))
        one_series = repo.instances_for(viewer_query(Level.SERIES, conditions(
            SeriesInstanceUID=str(first[0].SeriesInstanceUID))))
        paged = repo.instances_for(viewer_query(Level.STUDY, limit=1, offset=1))

    expected = sorted(first, key=lambda ds: (ds.SeriesNumber, ds.InstanceNumber))
    assert [i.sop_instance_uid for i in items] == [ds.SOPInstanceUID for ds in expected]
    assert {(i.study_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.blob_size)
            for i in items} == {(first[0].StudyInstanceUID, f.CT_IMAGE,
                                 pydicom.uid.ExplicitVRLittleEndian, 100)}
    assert [i.sop_instance_uid for i in one_series] == [ds.SOPInstanceUID for ds in expected[:3]]
    assert [i.sop_class_uid for i in paged] == [f.MR_IMAGE]


def test_unsupported_matching_is_refused(index: Index) -> None:
    unsupported = viewer_query(Level.STUDY, (Condition("KVP", SingleValue("120")),))
    sequence_as_value = viewer_query(Level.STUDY, (Condition("PatientID", SequenceItem(())),))

    with index.unit_of_work() as repo, pytest.raises(InvalidQueryValue, match="not supported"):
        list(repo.find(unsupported))
    with index.unit_of_work() as repo, pytest.raises(InvalidQueryValue, match="not a sequence"):
        list(repo.find(sequence_as_value))


# -- indexes ---------------------------------------------------------------------------------


def _plan(index: Index, query: Query) -> str:
    statement = find_statement(query, index.engine.dialect.name)
    with index.engine.connect() as connection:
        if index.is_sqlite:
            sql = str(statement.compile(index.engine, compile_kwargs={"literal_binds": True}))
            rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)
            return "\n".join(str(row[3]) for row in rows)
        connection.exec_driver_sql("ANALYZE")
        connection.exec_driver_sql("SET enable_seqscan = off")
        sql = str(statement.compile(index.engine, compile_kwargs={"literal_binds": True}))
        return "\n".join(str(row[0]) for row in connection.exec_driver_sql("EXPLAIN " + sql))


@pytest.mark.parametrize(
    ("values", "searched"),
    [({"PatientID": "P00042"}, "ix_patient_patient_id"),
     ({"PatientName": "smi*"}, "ix_patient_patient_name_norm"),
     ({"StudyDate": "20240105-20240110"}, "ix_study_study_date"),
     ({"StudyDate": "-20240103"}, "ix_study_study_date"),
     ({"AccessionNumber": "ACC-0042*"}, "ix_study_accession_number")],
)
def test_matching_uses_the_indexes(index: Index, values: dict[str, str], searched: str) -> None:
    with index.engine.begin() as connection:  # a few thousand rows, cheaply
        from sqlalchemy import insert

        from storage.index.models import patient, study
        connection.execute(insert(patient), [
            {"id": i, "patient_id": f"P{i:05d}", "issuer_of_patient_id": "",
             "patient_name": f"SMITH{i}^A" if i % 50 == 0 else f"JONES{i}^B",
             "patient_name_norm": f"smith{i}^a" if i % 50 == 0 else f"jones{i}^b"}
            for i in range(1, 3001)])
        connection.execute(insert(study), [
            {"id": i, "patient_fk": i, "study_instance_uid": f"1.2.{i}", "state": "archived",
             "study_date": f"2024{1 + i % 12:02d}{1 + i % 28:02d}",
             "accession_number": f"ACC-{i:05d}"}
            for i in range(1, 3001)])
    query = viewer_query(Level.STUDY, conditions(**values), ("StudyDate", "PatientName",
                                                      "ModalitiesInStudy"), limit=1001)

    plan = _plan(index, query)
    with index.unit_of_work() as repo:
        found = list(repo.find(query))

    assert found, plan
    assert searched in plan, plan
    if index.is_sqlite:
        assert "SCAN study" not in plan and "SCAN patient" not in plan, plan
    else:
        assert "Seq Scan on study" not in plan and "Seq Scan on patient" not in plan, plan
