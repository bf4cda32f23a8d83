"""Agent errors, each caught where something can be done about it."""

from __future__ import annotations

__all__ = ["AgentError", "SpoolError", "SpoolFullError"]


class AgentError(Exception):
    """Root of the agent's own errors."""


class SpoolError(AgentError):
    """The spool directory cannot be written (disk full, permissions)."""


class SpoolFullError(SpoolError):
    """The spool is at its byte limit and its policy is to refuse: the sender
    keeps the batch (the SDK spools it locally and retries)."""
