"""Checks: one module per kind behind :class:`cutover.checks.base.Check`."""
