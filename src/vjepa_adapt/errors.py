"""Errors a user can act on. The CLI prints these as one line (no traceback) and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    """Base class: a problem with the user's input, config, files or environment."""


class ConfigError(UserError):
    """A config key, type, value or combination is invalid (message names the field)."""


class BadInputError(UserError):
    """Too much of the input is unusable (e.g. more than the allowed share of clips are bad)."""


class WeightsError(UserError):
    """Weights are missing, unreadable, or match too little of the model to be trusted."""


class NotBuiltError(UserError):
    """A stage that this version of the toolkit does not implement yet."""
