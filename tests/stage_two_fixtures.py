"""Kept only for tests/validate, which imports trained_setup from here: the shared helpers live
in tests/fakes.py and reach tests as conftest.py fixtures. Delete once validate uses them."""

from tests.fakes import trained_setup

__all__ = ["trained_setup"]
