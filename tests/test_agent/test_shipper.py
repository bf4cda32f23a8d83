"""The shipper's delivery bookkeeping (its Kafka path runs in test_reliability)."""

from __future__ import annotations

import sys
import threading
from functools import partial
from pathlib import Path

from agent.shipper import Shipper
from agent.spool import Spool


def test_reports_settled_from_two_threads_ack_each_record_once(tmp_path: Path) -> None:
    """Delivery reports are collected during a poll and acked after it; when
    stop()'s flush serves reports while the shipper thread still polls, no
    report may be lost (its segment could never be trimmed) or counted twice."""
    spool = Spool(tmp_path, segment_bytes=2_000)
    spool.open()
    rids = spool.append([("t.training", b"k", b"v%05d" % i) for i in range(20_000)])
    records, _ = spool.read(0, len(rids))
    shipper = Shipper([spool], bootstrap="127.0.0.1:9")  # never connects: no poll here
    callbacks = [partial(shipper._on_delivery, 0, r, 0.0) for r in records]

    def report(part: list) -> None:  # type: ignore[type-arg]
        for i, callback in enumerate(part):
            callback(None, None)  # type: ignore[arg-type]
            if i % 97 == 0:
                shipper._settle()
        shipper._settle()

    threads = [threading.Thread(target=report, args=(callbacks[k::2],)) for k in range(2)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches between any two bytecodes, about
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    shipper._settle()
    assert shipper.stats.delivered == len(rids)
    assert spool.stats().pending == 0
    assert spool.stats().segments == 1  # every full segment trimmed
