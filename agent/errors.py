"""Agent errors, each caught where something can be done about it."""

from __future__ import annotations

__all__ = ["AgentError", "SpoolCorruptError", "SpoolError"]


class AgentError(Exception):
    """Root of the agent's own errors."""


class SpoolError(AgentError):
    """The spool directory cannot be written (disk full, permissions)."""


class SpoolCorruptError(SpoolError):
    """A spool frame failed its checksum where it cannot be a torn tail."""
