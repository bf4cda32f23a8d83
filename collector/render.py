"""Human-readable text for the query commands (`--json` bypasses this)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "alerts",
    "dead_letters",
    "lineage",
    "metric_points",
    "metric_summary",
    "run_details",
    "runs_table",
]


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def runs_table(rows: list[dict[str, Any]]) -> str:
    return _table(rows, ["run_id", "project", "name", "status", "user", "host", "started"])


def metric_summary(rows: list[dict[str, Any]]) -> str:
    cols = [
        "name",
        "points",
        "first_step",
        "last_step",
        "first",
        "last",
        "min",
        "max",
        "non_finite",
    ]
    return _table(rows, cols)


def metric_points(rows: list[dict[str, Any]]) -> str:
    return _table(rows, ["step", "time", "value"])


def dead_letters(rows: list[dict[str, Any]]) -> str:
    return _table(rows, ["topic", "partition", "offset", "error_type", "reason", "received_at"])


def run_details(run: dict[str, Any]) -> str:
    git = (
        f"{run.get('git_commit') or '-'} on {run.get('git_branch') or '-'}"
        f"{' (dirty)' if run.get('git_dirty') else ''}"
    )
    finished = run.get("finished") or {}
    lines = [
        f"run       {run['run_id']}  ({run['project']} / {run['name']})",
        f"status    {run['status']}"
        + (f"  at {finished.get('finished')}" if finished else "")
        + (f"  error: {finished.get('error')}" if finished.get("error") else ""),
        f"started   {run['event_time']} by {run['user']} on {run['host']} (pid {run['pid']})",
        f"command   {' '.join(run['command'])}",
        f"code      {git}",
        f"python    {run['python_version']} ({run['python_implementation']}), "
        f"{len(run['packages'])} packages",
        f"os        {run['os']}",
        "config    " + (", ".join(f"{k}={v}" for k, v in sorted(run["config"].items())) or "-"),
        "",
        "datasets",
        _indent(_table(run["datasets"], ["name", "version", "content_hash", "license", "uri"])),
        "",
        "checkpoints",
        _indent(_table(run["checkpoints"], ["step", "path", "size_bytes", "sha256"])),
        "",
        "metrics",
        _indent(metric_summary(run["metrics"])),
    ]
    if run.get("evaluations"):
        evals = [
            {**e, "metrics": ", ".join(f"{k}={_cell(v)}" for k, v in sorted(e["metrics"].items()))}
            for e in run["evaluations"]
        ]
        lines += ["", "evaluations", _indent(_table(evals, ["name", "dataset", "step", "metrics"]))]
    if run.get("events"):
        events = [
            {**e, "attrs": ", ".join(f"{k}={v}" for k, v in sorted(e["attrs"].items()))}
            for e in run["events"]
        ]
        lines += ["", "events", _indent(_table(events, ["logged", "kind", "step", "attrs"]))]
    return "\n".join(lines)


def lineage(runs: list[dict[str, Any]]) -> str:
    """Checkpoint → run → data, code, config, environment: audit question 1."""
    if not runs:
        return "no run logged a checkpoint with that sha256"
    blocks = []
    for run in runs:
        lines = [
            f"written by run {run['run_id']} ({run['project']} / {run['name']}), "
            f"status {run['status']}, {run['user']}@{run['host']}",
            f"  code     commit {run.get('git_commit') or '-'} "
            f"branch {run.get('git_branch') or '-'}{' (dirty)' if run.get('git_dirty') else ''}",
            f"  command  {' '.join(run['command'])}",
            "  config   "
            + (", ".join(f"{k}={v}" for k, v in sorted(run["config"].items())) or "-"),
            f"  env      python {run['python_version']}, {len(run['packages'])} packages, "
            f"{run['os']}",
        ]
        for d in run["datasets"]:
            lines.append(
                f"  data     {d['name']} {d.get('version') or ''} sha256:{d.get('content_hash')} "
                f"license {d.get('license') or '-'} preprocessing "
                f"[{'; '.join(d.get('preprocessing') or [])}]"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def alerts(rows: list[dict[str, Any]]) -> str:
    return _table(
        rows, ["time", "severity", "state", "detector", "run_id", "metric", "step", "message"]
    )
