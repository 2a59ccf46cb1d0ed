"""The index: SQLAlchemy tables over the blob store; the only package that speaks SQL."""

from storage.index.application_entities import AeRecord
from storage.index.database import Index, IndexDataError, IndexNotDurable, IndexUnavailable
from storage.index.orders import OrderFilter, OrderRecord, StepRecord
from storage.index.repository import (
    FiledPatient,
    InstanceRow,
    Repository,
    StoredInstance,
    UpsertOutcome,
    UpsertResult,
)
from storage.index.sessions import SessionRecord
from storage.index.sign_ins import PendingSignIn
from storage.index.tokens import TokenRecord

__all__ = [
    "AeRecord",
    "FiledPatient",
    "Index",
    "IndexDataError",
    "IndexNotDurable",
    "IndexUnavailable",
    "InstanceRow",
    "OrderFilter",
    "OrderRecord",
    "PendingSignIn",
    "Repository",
    "SessionRecord",
    "StepRecord",
    "StoredInstance",
    "TokenRecord",
    "UpsertOutcome",
    "UpsertResult",
]
