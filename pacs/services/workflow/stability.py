"""Stability: a study that received nothing for the stability period is checked once more as a
whole (the first frame of each series is decoded), quarantined if that fails, and its routing
planned when it is archived."""

from __future__ import annotations

import datetime as dt

import pydicom
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array

from pacs.services.blob_errors import UNAVAILABLE
from pacs.services.decoding_limits import (
    VIEWING_EXTRA_PER_SAMPLE,
    Geometry,
    GeometryError,
    check_codestream,
)
from pacs.services.errors import DecoderBusy, DecodeTooLarge, NotFound, OutOfResources
from pacs.services.qa_checks import Finding, undecodable_pixel_data
from pacs.services.workflow.base import WorkflowBase, log, log_takeover
from pacs.services.workflow.gate import finding_rows
from pacs.services.workflow.routes import plan_routes
from pacs.services.workflow.states import Action, StudyState
from pacs.services.workflow.transitions import locked_state, transition
from storage.blob_store import BlobNotFound, BlobStoreUnavailable

#: Studies one stability pass claims at most (the worker runs again at once while busy).
SETTLE_BATCH = 100


class Stability(WorkflowBase):
    """The stability pass, study by study under this server's lease."""

    def settle(self, now: dt.datetime | None = None) -> list[str]:
        """Mark studies stable that received nothing for the stability period; run the study
        checks on them and plan their routing, one claimed study at a time (at most
        :data:`SETTLE_BATCH` a pass). Returns the UIDs that became stable."""
        now = now or dt.datetime.now(dt.UTC)
        quiet_since = now - self.stable_after
        with self._unit_of_work() as repository:
            if not repository.studies.quiet_studies(quiet_since, limit=1, now=now):
                return []  # no write transaction every pass for nothing
        settled: list[str] = []
        tried: list[str] = []
        while len(tried) < SETTLE_BATCH:
            with self._unit_of_work(write=True) as repository:
                claim = repository.studies.claim_quiet_study(
                    quiet_since, now=now, owner=self.node, lease=self.lease, skip=tried)
            if claim is None:
                break
            study_instance_uid = claim.study_instance_uid
            tried.append(study_instance_uid)
            log_takeover("stability check", claim)
            done = False
            try:
                with self._renewal(study_instance_uid, "stability"):
                    done = self._settle(study_instance_uid, quiet_since)
                if done:
                    settled.append(study_instance_uid)
            except (OutOfResources, NotFound) as error:
                log.warning("stability of %s: %s", study_instance_uid, error)
            finally:
                if not done:  # a stable study's lease went with its marking
                    self._release(study_instance_uid)
        return settled

    def _settle(self, study_instance_uid: str, quiet_since: dt.datetime) -> bool:
        with self._unit_of_work() as repository:
            firsts = repository.studies.first_instances_of_series(study_instance_uid)
        found = [f for f in (self._decodable(file.blob_key, file.sop_instance_uid)
                             for file in firsts if can_decode(file.transfer_syntax_uid))
                 if f is not None]
        who = "pacs:stability"
        with self._unit_of_work(write=True) as repository:
            if not repository.studies.mark_stable(study_instance_uid, owner=self.node,
                                                  quiet_since=quiet_since):
                # an instance arrived during the check (a later round checks it again), or
                # this server stalled past its lease and another took the study over
                return False
            state = locked_state(repository, study_instance_uid)
            missing = repository.mpps.missing_instances(study_instance_uid)
            if missing:
                found.append(incomplete(missing))
                repository.mpps.mark_incomplete_checked(study_instance_uid,
                                                        dt.datetime.now(dt.UTC))
            if found:
                repository.findings.add(study_instance_uid, finding_rows(found))
                if state in (StudyState.RECEIVED, StudyState.ARCHIVED):
                    new = transition(repository, study_instance_uid, Action.QUARANTINE,
                                     who=who, current=state,
                                     detail={"findings": [f.code for f in found]})
                    assert new is not None
                    state = new
            repository.audit.append(actor=who, action="stable", outcome=state.value,
                                    study_instance_uid=study_instance_uid,
                                    detail={"node": self.node})
            study = repository.studies.study(study_instance_uid)
            if state is StudyState.ARCHIVED and study is not None:
                plan_routes(repository, study, self.rules, who)
        return True

    def _decodable(self, key: str, sop_instance_uid: str) -> Finding | None:
        """The study check on pixel data: decode the first frame of the file. A frame too
        large to view within the decoding limit (the rendering budget) is not decoded, and not
        judged; waiting too long for a decoding slot raises :class:`DecoderBusy`, so the
        study is settled at a later round."""
        try:
            with self.blobs.open(key) as source:
                ds = pydicom.dcmread(source, defer_size=1024)  # large values are not read
                if "PixelData" not in ds and "FloatPixelData" not in ds:
                    return None
                try:
                    geometry = Geometry.of(ds)
                except GeometryError as error:
                    return undecodable_pixel_data(sop_instance_uid, str(error))
                try:
                    self.limits.check(geometry, frames=1, what=f"SOP Instance {sop_instance_uid}",
                                      extra_per_sample=VIEWING_EXTRA_PER_SAMPLE)
                except DecodeTooLarge as error:
                    log.info("pixel check skipped: %s", error)
                    return None
                if ds.file_meta.TransferSyntaxUID.is_encapsulated and "PixelData" in ds:
                    first = get_frame(ds.PixelData, 0, number_of_frames=geometry.number_of_frames)
                    check_codestream(first, geometry, what=f"SOP Instance {sop_instance_uid}")
                source.seek(0)
                with self.limits.slot():
                    pixel_array(source, index=0)  # the first frame: decoding it is the check
        except BlobNotFound:
            return undecodable_pixel_data(sop_instance_uid, "the stored file is missing")
        except BlobStoreUnavailable as error:  # not the file's fault: settled at a later round
            raise OutOfResources(UNAVAILABLE) from error
        except DecoderBusy:
            raise
        except Exception as error:  # any decoder failure is the finding
            return undecodable_pixel_data(sop_instance_uid, f"{type(error).__name__}: {error}")
        return None


#: Missing SOP Instance UIDs an ``incomplete`` finding names at most (it counts them all).
LISTED_MISSING = 20


def incomplete(missing: list[str]) -> Finding:
    """A COMPLETED MPPS references instances the study lacks once it is stable (PS3.4 F.7:
    the modality said it sent them)."""
    listed = ", ".join(missing[:LISTED_MISSING])
    more = f" and {len(missing) - LISTED_MISSING} more" if len(missing) > LISTED_MISSING else ""
    return Finding("incomplete", f"the completed MPPS references {len(missing)} instance"
                   f"{'' if len(missing) == 1 else 's'} that did not arrive: {listed}{more}",
                   sop_instance_uid=missing[0])


def can_decode(transfer_syntax_uid: str) -> bool:
    """Whether this server has a decoder for the syntax (video, for one, it has not): the
    pixel check judges only what it can decode."""
    try:
        return bool(get_decoder(transfer_syntax_uid).is_available)
    except (NotImplementedError, ValueError):
        return False

