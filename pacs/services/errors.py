"""Named, protocol-neutral errors; each front end maps them in one table.

::

    PacsError
    ├── InvalidInstance        the data cannot be understood (corrupt, truncated)
    │   ├── NotDicom           no DICOM Part 10 preamble and prefix at all
    │   ├── MissingAttribute   a required UID is absent or not a valid UID
    │   └── InflatesTooLarge   a deflated data set inflates beyond PACS_MAX_DECODED_MB (ingest)
    ├── SopClassMismatch       the dataset is not what the request announced
    │   └── StudyMismatch      it belongs to another study than the request's target (STOW-RS)
    ├── OutOfResources         disk full, index unreachable or locked: try again later
    │   └── DecoderBusy        every decoding slot stayed taken: try again shortly
    ├── NotFound               no such object
    ├── SignInRefused          a sign-in at the OIDC identity provider that did not succeed:
    │                          a message for the browser, a reason for the audit trail
    │                          (oidc_sign_in.py)
    ├── CannotTranscode        a stored instance cannot be converted to the transfer syntax
    │   │                      a peer accepts (no decoder, corrupt codestream, or a
    │   │                      compressed target)
    │   └── DecodeTooLarge     decoding it would take more than PACS_MAX_DECODED_MB
    ├── InvalidQuery           a query that cannot be run (malformed value, bad identifier)
    ├── UnknownPeer            a C-MOVE destination that is not registered (AE registry)
    ├── NotAuthorized          a peer asks for a service it is not allowed (AE registry)
    ├── IllegalTransition      a workflow action the study's current state does not allow
    ├── Conflict               a change that clashes with what is stored (an imaging order
    │                          whose AccessionNumber another order has, a cancelled order
    │                          changed: orders.py)
    ├── InvalidValue           a value given for a change cannot be used (a token's name or
    │   │                      role, an AE's host: auth.py TokenError, ae_registry.py)
    │   └── AlreadyExists      the name or title is taken (a token, a registered AE)
    ├── CredentialRefused      a bearer credential not accepted, with the reason (auth.py)
    │   └── OidcError          an OIDC access token not accepted (oidc.py)
    └── UnreadableTlsFile      a certificate, key or CA file that cannot be read (tls.py)
"""

from __future__ import annotations


class PacsError(Exception):
    """Base of every error a service raises on purpose; the message is for the peer."""


class InvalidInstance(PacsError):
    """The data is not a readable DICOM instance."""


class NotDicom(InvalidInstance):
    """Not a DICOM Part 10 file (no 128-byte preamble followed by ``DICM``)."""


class MissingAttribute(InvalidInstance):
    """A required attribute is absent or invalid."""


class InflatesTooLarge(InvalidInstance):
    """A deflated data set (PS3.5 A.5) that inflates beyond the decoding limit: refused
    before it is inflated whole (0xC000 on C-STORE)."""


class SopClassMismatch(PacsError):
    """The dataset's SOP Class or Instance UID differs from the request's (PS3.4 B.2.3)."""


class StudyMismatch(SopClassMismatch):
    """The instance's Study Instance UID differs from the study a request targets
    (STOW-RS ``POST /studies/{study}``, PS3.18 10.5.1). Names the instance, which is known."""

    def __init__(self, message: str, *, sop_class_uid: str, sop_instance_uid: str) -> None:
        super().__init__(message)
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


class OutOfResources(PacsError):
    """Storage or index cannot take the instance now (disk full, database unavailable)."""


class DecoderBusy(OutOfResources):
    """Every decoding slot (PACS_MAX_CONCURRENT_DECODES) stayed taken for the bounded wait."""


class NotFound(PacsError):
    """The requested object does not exist (or is not visible)."""


class SignInRefused(PacsError):
    """A sign-in at the identity provider that did not succeed: ``str(error)`` is for the
    browser (no token, no URL, no detail of the provider's answer), ``reason`` a few words for
    the audit trail; ``next_path`` is the page the sign-in was for, when it is known."""

    def __init__(self, message: str, reason: str, next_path: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.next_path = next_path


class CannotTranscode(PacsError):
    """A stored instance cannot be sent in the transfer syntax the peer accepted.

    The message names the SOP Instance UID and the reason (no decoder for the stored transfer
    syntax, a corrupt codestream, or a target that would need compressing).
    """


class DecodeTooLarge(CannotTranscode):
    """Decoding (or inflating) a stored instance would take more memory than the limit
    (PACS_MAX_DECODED_MB), judged from its header before anything is decoded."""


class InvalidQuery(PacsError):
    """A query the index cannot run: a malformed value or range, an unsupported key."""


class UnknownPeer(PacsError):
    """An AE title that is not a registered move destination (PS3.4 C.4.2.1.5)."""


class NotAuthorized(PacsError):
    """A registered peer asks for a service it is not allowed (a modality's C-GET): refused
    before anything is read or sent; the message names the peer and the service."""


class IllegalTransition(PacsError):
    """A QA action that the study's state does not allow (accepting a rejected study, ...)."""

    def __init__(self, message: str, *, current_state: str) -> None:
        super().__init__(message)
        self.current_state = current_state


class Conflict(PacsError):
    """A change that clashes with what is stored: an order's AccessionNumber or Study
    Instance UID that another order has, a change to a cancelled order. The message names
    the field and the order it clashes with."""


class InvalidValue(PacsError):
    """A value given for a change (a token's name, an AE's host) that cannot be used; the
    message says which and why, for the user."""


class AlreadyExists(InvalidValue):
    """What a change would add exists already (a token of that name, an AE of that title)."""
