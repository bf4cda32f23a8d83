"""One warning per cause and run: the SDK lives in someone else's training log.

A sender that cannot reach the agent, or a metric that cannot be read, would
otherwise repeat its warning every cycle. The sender's parts (buffer,
encoder, transport) share one `WarnOnce`, so together they say each thing
once, and at most about a hundred things per run.
"""

from __future__ import annotations

import logging

__all__ = ["WarnOnce"]


class WarnOnce:
    """Warnings through `log`, each `key` once; silent after about 100 keys."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.seen: set[str] = set()

    def __call__(self, key: str, msg: str, *args: object) -> None:
        if key in self.seen or len(self.seen) > 100:
            return
        self.seen.add(key)
        self.log.warning(msg, *args)
