"""Storage: the blob store (files, knows nothing of DICOM) and the index (the only SQL)."""
