"""The statement-log profile: where a hyperfill copy -p 1 spends its time per
task, from tokio-postgres' debug log."""

import datetime
import re


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\S+Z)\s+DEBUG\s+(.*)$")

# Known statements of hyperfill, by a fragment of their SQL (first match
# wins); anything else is labelled with the start of its SQL.
KNOWN_SQL = [
    ("FOR NO KEY UPDATE SKIP LOCKED", "claim the next task (target)"),
    ("SET state = 'done'", "mark the task done (target)"),
    ("compressed_chunk_id", "chunk compression state"),
    ("jsonb_object_agg", "target chunk lookup by slices"),
    ("pg_get_triggerdef", "invalidation trigger lookup (target)"),
    ("EXISTS (SELECT 1 FROM ONLY", "is the target chunk empty? (target)"),
    ("pg_attribute", "relation columns"),
    ("BEGIN ISOLATION LEVEL", "BEGIN repeatable read (source)"),
    ("BEGIN; SET LOCAL synchronous_commit", "BEGIN + synchronous_commit off (target)"),
    ("COMMIT", "COMMIT"),
    ("TO STDOUT", "COPY (SELECT cols FROM ONLY chunk) TO STDOUT (source)"),
    ("FROM STDIN", "COPY chunk (cols) FROM STDIN (target)"),
]


def label_sql(sql):
    flat = re.sub(r"\s+", " ", sql).strip()
    for frag, label in KNOWN_SQL:
        if frag in flat:
            return label
    return re.sub(r'"[^"]*"', '"…"', flat)[:80]


def parse_statement_log(path):
    """(timestamp, kind) per tokio-postgres debug line; a multi-line SQL text
    continues on the lines without a timestamp."""
    raw = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = LOG_LINE.match(line)
            if m:
                raw.append([m.group(1), m.group(2)])
            elif raw:
                raw[-1][1] += "\n" + line
    names, events = {}, []
    for ts, msg in raw:
        kind = None
        m = re.match(r"preparing query (\S+?)(?: with types .*?)?: (.*)", msg, re.S)
        if m:
            names[m.group(1)] = label_sql(m.group(2))
            kind = "prepare: " + names[m.group(1)]
        if kind is None:
            m = re.match(r"executing statement batch: (.*)", msg, re.S) or \
                re.match(r"executing simple query: (.*)", msg, re.S)
            if m:
                kind = "simple: " + label_sql(m.group(1))
        if kind is None:
            m = re.match(r"executing copy (in|out) statement (\S+)", msg)
            if m:
                kind = f"COPY {m.group(1)}"
        if kind is None:
            m = re.match(r"executing statement (\S+) with parameters", msg)
            if m:
                kind = "execute: " + names.get(m.group(1), "?")
        if kind is None:
            continue
        t = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        events.append((t, kind))
    return events


def analyse_statement_log(path, tasks, wall):
    """Attribute the gap after each logged statement to that statement (with
    one worker, a statement's gap is its round trip, the server's work on it
    and the client's until the next statement)."""
    events = parse_statement_log(path)
    if len(events) < 2 or tasks == 0:
        return None
    per = {}
    for (ts, kind), (nxt, _) in zip(events, events[1:]):
        c, t = per.get(kind, (0, 0.0))
        per[kind] = (c + 1, t + (nxt - ts))
    prepares = sum(c for k, (c, _) in per.items() if k.startswith("prepare"))
    trips = sum(c for c, _ in per.values())
    top = sorted(per.items(), key=lambda kv: -kv[1][1])
    top = [kv for kv in top if kv[1][0] >= tasks * 0.5][:20]
    return {
        "tasks": tasks,
        "wall_s": wall,
        "wall_per_task_ms": 1000 * wall / tasks,
        "logged_ms_per_task": 1000 * (events[-1][0] - events[0][0]) / tasks,
        "statements_per_task": trips / tasks,
        "prepares_per_task": prepares / tasks,
        "by_statement": [{"statement": k, "per_task": c / tasks, "ms_per_task": 1000 * t / tasks}
                         for k, (c, t) in top],
    }
