"""Test-only code shared by the test suites (pytest plugins, fixtures)."""
