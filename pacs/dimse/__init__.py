"""DIMSE front end: a pynetdicom AE whose handlers each make one service call."""
