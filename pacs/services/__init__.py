"""Services decide: ingest, consistency checks (more to come: query, retrieve, workflow).

Protocol neutral and thread-safe; every front end calls these, none speaks SQL.
"""
