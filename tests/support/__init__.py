"""Test support: a real ``pacs serve`` subprocess, DCMTK runners, databases."""
