"""Schema upgrades keep the data: an index filled at an older revision, upgraded to head."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, text

from storage.index import Index
from storage.index.migrate import alembic_config, pending_changes, upgrade


def test_upgrade_from_0002_keeps_every_row(database_url: str) -> None:
    index = Index(database_url)
    try:
        upgrade(index.engine, "0002")
        with index.engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO patient (id, patient_id, issuer_of_patient_id, created_at) "
                "VALUES (1, 'P1', '', CURRENT_TIMESTAMP)"))
            connection.execute(text(
                "INSERT INTO study (id, patient_fk, study_instance_uid, state, created_at) "
                "VALUES (1, 1, '1.2.3', 'archived', CURRENT_TIMESTAMP)"))
            connection.execute(text(
                "INSERT INTO series (id, study_fk, series_instance_uid, created_at) "
                "VALUES (1, 1, '1.2.3.4', CURRENT_TIMESTAMP)"))
            for n in range(3):
                connection.execute(text(
                    "INSERT INTO instance (series_fk, sop_instance_uid, transfer_syntax_uid, "
                    "blob_key, blob_size, blob_sha256, received_at) VALUES "
                    f"(1, '1.2.3.4.{n}', '1.2.840.10008.1.2.1', 'k{n}', 1, 'k{n}', "
                    "CURRENT_TIMESTAMP)"))
        index.upgrade()
        with index.engine.connect() as connection:
            counts = [connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                      for table in ("patient", "study", "series", "instance")]
            study = connection.execute(text(
                "SELECT state, stable_at, state_changed_at FROM study")).one()
            rejected = connection.execute(text("SELECT rejected FROM series")).scalar_one()
        assert counts == [1, 1, 1, 3]
        assert study.state == "archived"
        assert study.stable_at is not None and study.state_changed_at is not None
        assert not rejected
        assert pending_changes(index.engine) == []
    finally:
        index.dispose()


def test_upgrade_from_0005_adds_the_ae_registry_and_keeps_tokens(database_url: str) -> None:
    index = Index(database_url)
    try:
        upgrade(index.engine, "0005")
        with index.engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO api_token (name, lookup_id, role, secret_sha256, created_at) "
                "VALUES ('ohif', '0123456789ab', 'viewer', 'h', CURRENT_TIMESTAMP)"))
        index.upgrade()
        with index.engine.begin() as connection:
            tokens = connection.execute(text("SELECT name FROM api_token")).scalars().all()
            connection.execute(text(
                "INSERT INTO application_entities (ae_title, hosts, services, source, "
                "created_at) VALUES ('CT1', '[\"10.0.0.5\"]', '[\"store\"]', 'cli', "
                "CURRENT_TIMESTAMP)"))
            entry = connection.execute(text(
                "SELECT ae_title, port, move_destination FROM application_entities")).one()
        assert tokens == ["ohif"]
        assert tuple(entry) == ("CT1", None, False)  # the server default: not a destination
        assert pending_changes(index.engine) == []
    finally:
        index.dispose()


def test_0011_adds_the_study_leases_and_its_downgrade_removes_them(database_url: str) -> None:
    index = Index(database_url)
    try:
        index.upgrade()
        with index.engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO patient (id, patient_id, issuer_of_patient_id, created_at) "
                "VALUES (1, 'P1', '', CURRENT_TIMESTAMP)"))
            connection.execute(text(
                "INSERT INTO study (id, patient_fk, study_instance_uid, state, created_at, "
                "lease_owner, lease_expires_at) VALUES (1, 1, '1.2.3', 'archived', "
                "CURRENT_TIMESTAMP, 'node-a', CURRENT_TIMESTAMP)"))
        command.downgrade(alembic_config(index.engine), "0010")
        columns = {c["name"] for c in inspect(index.engine).get_columns("study")}
        assert not {"lease_owner", "lease_expires_at"} & columns
        index.upgrade()
        with index.engine.connect() as connection:
            study = connection.execute(text(
                "SELECT study_instance_uid, lease_owner, lease_expires_at FROM study")).one()
        assert tuple(study) == ("1.2.3", None, None)  # the row kept, free to claim
        assert pending_changes(index.engine) == []
    finally:
        index.dispose()
