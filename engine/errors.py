"""Errors the engine raises on purpose, so callers can tell them from bugs."""

from __future__ import annotations


class UserInputError(ValueError):
    """The uploaded model or data cannot be used; the message says why, for a person."""


class JobCancelled(Exception):
    """The ``should_cancel`` hook returned True; training stopped at a step boundary."""
