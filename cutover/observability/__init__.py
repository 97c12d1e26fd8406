"""Logs and metrics: no decisions here."""
