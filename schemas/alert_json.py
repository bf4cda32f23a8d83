"""An Alert record as flat JSON: what webhooks and training processes receive.

The envelope shrinks to the fields a reader acts on (event_id, to deduplicate;
time_us; node), and NaN/Inf, which JSON lacks, become null (the alert's
message says which it was). Shared by the collector's webhook and the agent's
relay to the SDK, so both hand out the same shape.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["flat_alert"]


def flat_alert(alert: dict[str, Any]) -> dict[str, Any]:
    env = alert["envelope"]
    out = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v
        for k, v in alert.items()
        if k != "envelope"
    }
    out.update(event_id=env["event_id"], time_us=env["time_us"], node=env["node"])
    return out
