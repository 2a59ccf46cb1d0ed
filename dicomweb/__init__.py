"""DICOMweb front end (PS3.18) on FastAPI; for now only the health endpoint."""
