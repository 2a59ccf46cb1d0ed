"""pacs: a DICOM PACS mini-server (DIMSE and DICOMweb over one index and a file store)."""

__version__ = "0.1.0"
