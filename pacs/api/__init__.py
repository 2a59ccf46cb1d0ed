"""The QA and administration REST API (:mod:`pacs.api.routes`), a front end of its own:
JSON over HTTP under ``/api``, documented at ``/docs``."""
