"""The web UI of the QA gate (:mod:`pacs.ui.pages`), a front end of its own: server-rendered
HTML pages and forms under ``/ui``."""
