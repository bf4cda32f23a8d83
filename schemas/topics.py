"""Which topic each event type travels on (the suffix after the prefix).

Training events share one topic keyed by run, so one run's lifecycle,
metrics and checkpoints stay in order on one partition. Hardware samples are
keyed by node.
"""

from __future__ import annotations

__all__ = ["SDK_TYPES", "TOPIC_OF", "TOPIC_SUFFIXES", "topic_for"]

TOPIC_OF: dict[str, str] = {
    "RunStarted": "training",
    "Metrics": "training",
    "CheckpointSaved": "training",
    "DatasetUsed": "training",
    "RunFinished": "training",
    "EvalLogged": "training",
    "RunEvent": "training",
    "GpuSample": "hardware",
    "GpuSamples": "hardware",
    "GpuEvent": "hardware",
    "HostSample": "hardware",
    "AccessEvent": "access",
    "Alert": "alerts",
}
TOPIC_SUFFIXES = ("training", "hardware", "access", "alerts")
# What a training process may send through the agent's socket.
SDK_TYPES = frozenset(
    {
        "RunStarted",
        "Metrics",
        "CheckpointSaved",
        "DatasetUsed",
        "EvalLogged",
        "RunEvent",
        "RunFinished",
        "AccessEvent",
    }
)


def topic_for(prefix: str, event_type: str) -> str:
    return f"{prefix}.{TOPIC_OF[event_type]}"
