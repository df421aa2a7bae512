#!/usr/bin/env python3
"""hyperfill benchmark: hyperfill copy against the raw COPY limit.

Run it through benches/run.sh, which sets up the servers and builds the
binary first; see docs/benchmarks.md for what is measured and how to read
the results.  Standard library only.

For every scenario (a source database with a synthetic dataset, cached
between runs, and a target database restored from a pg_dump of it), and for
every parallelism P:

  hyperfill   `hyperfill stage` (timed apart), then `hyperfill copy -p P`
              under /usr/bin/time: wall, user+sys CPU, peak RSS
  raw         every chunk (and compressed chunk table) through
              `psql -c 'COPY (SELECT * FROM ONLY c) TO STDOUT (FORMAT binary)'
               | psql -c 'COPY c FROM STDIN (FORMAT binary)'`, under
              `xargs -P P`; the start-up cost of one such pipe (measured on an
              empty table) is subtracted for the "raw-net" figure
  backfill    with --backfill-bin: timescaledb-backfill, like hyperfill
  compare     with --compare-bin: another hyperfill build (say, the previous
              commit's), like hyperfill

The target chunks are emptied (TRUNCATE) before every measured run, so every
run copies the same data into empty chunks.  Server CPU is read from /proc
(the postmaster's own and reaped children's times plus its live children),
so it is only available when the servers run on this machine.
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Bump when the dataset definition changes in a way the generated SQL does
# not show (the SQL text itself is part of the cache key anyway).
DATASET_VERSION = 1
DB_PREFIX = "hfbench"
EPOCH_2025 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
DAYS = 30
DEVICES = 32
PARTITIONS = 4
# Binary COPY bytes per row of each table, measured on the generated data
# (they only steer how many rows make `--scale` x 10 MB).
ROW_BYTES = {"metrics": 52, "events": 177, "ticks": 42}
# timestamptz bound for stage (after every generated row) and the same in
# epoch milliseconds for the bigint hypertable.
UNTIL_TS = "2030-01-01 00:00:00+00"
UNTIL_MS = "1893456000000"
TS_FILTER = r"^public\.(metrics|events)$"
MS_FILTER = r"^public\.ticks$"

SCENARIOS = {
    "even": "30 days of 1-day chunks: 3 hypertables, 180 chunks of about equal size",
    "many-small": "the rows of `even` in 2-hour chunks (--small-chunks-per-day): 2,160 chunks",
    "one-huge": "the bytes of `even`, but one events chunk is 20x every other chunk (--huge-factor)",
    "compressed": "the rows of `even`, every chunk compressed (licensed TimescaleDB only)",
}


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"ERROR: {msg}")
    sys.exit(1)


# ---------------------------------------------------------------- servers ---


class Server:
    """One PostgreSQL server, reached through its superuser URL."""

    def __init__(self, name, admin_url, bindir):
        self.name = name
        self.admin_url = admin_url
        self.psql_bin = os.path.join(bindir, "psql")
        self.pg_dump_bin = os.path.join(bindir, "pg_dump")
        self.postmaster = None  # pid, when the server runs on this machine

    def url(self, db):
        # postgres://user@host:port/postgres?x -> .../db?x
        base, sep, query = self.admin_url.partition("?")
        base = base.rsplit("/", 1)[0] + "/" + db
        return base + (sep + query if sep else "")

    def psql(self, db, sql, check=True, quiet=True):
        """Run SQL (from stdin, so any length) and return stdout, unaligned."""
        env = dict(os.environ)
        if quiet:
            env["PGOPTIONS"] = (env.get("PGOPTIONS", "") + " -c client_min_messages=warning").strip()
        p = subprocess.run(
            [self.psql_bin, "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", self.url(db)],
            input=sql, capture_output=True, text=True, env=env,
        )
        if check and p.returncode != 0:
            die(f"{self.name} {db}: psql failed ({p.returncode}):\n{p.stderr.strip()}\nSQL: {sql[:400]}")
        return p.stdout

    def value(self, db, sql):
        return self.psql(db, sql).strip()

    def rows(self, db, sql):
        return [line.split("\t") for line in self.psql(db, sql).splitlines() if line]

    def db_exists(self, db):
        return self.value("postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{db}'") == "1"

    def recreate_db(self, db):
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        self.psql("postgres", f'CREATE DATABASE "{db}"')

    def drop_db(self, db):
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    def find_postmaster(self):
        """The postmaster's pid when the server runs here: the parent of its
        checkpointer (which lives as long as the server)."""
        try:
            aux = int(self.value("postgres", "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"))
            with open(f"/proc/{aux}/stat") as f:
                parent = int(_stat_fields(f.read())[1])
            with open(f"/proc/{parent}/comm") as f:
                comm = f.read().strip()
            if comm in ("postgres", "postmaster"):
                self.postmaster = parent
        except (OSError, ValueError):
            self.postmaster = None
        return self.postmaster


def _stat_fields(stat):
    """Fields of /proc/pid/stat after the command name: [state, ppid, ...]."""
    return stat[stat.rfind(")") + 2:].split()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_cpu_ticks(postmaster):
    """CPU ticks of a server: the postmaster, its exited (reaped) children and
    its live children.  A child that exits between two samples moves from the
    live sum into cutime/cstime, so differences are exact."""
    if postmaster is None:
        return None
    try:
        with open(f"/proc/{postmaster}/stat") as f:
            fs = _stat_fields(f.read())
        total = sum(int(x) for x in fs[11:15])  # utime stime cutime cstime
    except OSError:
        return None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fs = _stat_fields(f.read())
        except OSError:
            continue
        if int(fs[1]) == postmaster:
            total += int(fs[11]) + int(fs[12])
    return total


def machine_busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return sum(v[:8]) - v[3] - v[4]


class CpuProbe:
    """Server and machine CPU between start() and stop(), in seconds."""

    def __init__(self, src, tgt):
        self.src, self.tgt = src, tgt

    def start(self):
        self.t0 = (server_cpu_ticks(self.src.postmaster), server_cpu_ticks(self.tgt.postmaster), machine_busy_ticks())

    def stop(self):
        t1 = (server_cpu_ticks(self.src.postmaster), server_cpu_ticks(self.tgt.postmaster), machine_busy_ticks())
        d = [None if a is None or b is None else (b - a) / CLK_TCK for a, b in zip(self.t0, t1)]
        return {"source_server_cpu_s": d[0], "target_server_cpu_s": d[1], "machine_busy_cpu_s": d[2]}


def noise_note(rec):
    o = rec.get("other_cpu_s")
    return "" if o is None else f", {o:.2f}s CPU used by others meanwhile"


def add_other_cpu(rec):
    """CPU the machine spent on anything but this run (noise from others)."""
    parts = (rec["client_cpu_s"], rec["source_server_cpu_s"], rec["target_server_cpu_s"], rec["machine_busy_cpu_s"])
    rec["other_cpu_s"] = None if None in parts else max(0.0, parts[3] - parts[0] - parts[1] - parts[2])
    return rec


def timed(cmd, env=None, stdout=None, stderr=None):
    """Run cmd under /usr/bin/time; returns (rc, wall s, user+sys s, max RSS KiB)."""
    fd, tfile = tempfile.mkstemp(prefix="hfbench-time.")
    os.close(fd)
    try:
        t0 = time.monotonic()
        p = subprocess.run(
            ["/usr/bin/time", "-f", "%U %S %M", "-o", tfile] + cmd,
            env=env, stdout=stdout, stderr=stderr,
        )
        wall = time.monotonic() - t0
        with open(tfile) as f:
            last = [l for l in f.read().splitlines() if l.strip()][-1].split()
        return p.returncode, wall, float(last[0]) + float(last[1]), int(last[2])
    finally:
        os.unlink(tfile)


# ---------------------------------------------------------------- dataset ---


def per_day_rows(scenario, scale, huge_factor=20):
    """Rows per day for each table: {table: [rows of day 0, ..., day 29]}."""
    total = scale * 10_000_000
    # `even`: 180 chunks of B bytes each (120 metrics chunks = 30 days x 4
    # partitions, 30 events and 30 ticks chunks).
    chunk_bytes = total / 180
    mult = [1.0] * DAYS
    ev_mult = [1.0] * DAYS
    if scenario == "one-huge":
        # 179 chunks of b and one of 20 b: 199 b = 180 B.
        base = 180 / (179 + huge_factor)
        mult = [base] * DAYS
        ev_mult = [base] * DAYS
        ev_mult[9] = huge_factor * base
    return {
        "metrics": [max(DEVICES, round(PARTITIONS * chunk_bytes * m / ROW_BYTES["metrics"])) for m in mult],
        "events": [max(1, round(chunk_bytes * m / ROW_BYTES["events"])) for m in ev_mult],
        "ticks": [max(1, round(chunk_bytes * m / ROW_BYTES["ticks"])) for m in mult],
    }


def dataset_sql(scenario, scale, small_per_day, huge_factor):
    if scenario == "many-small":
        hours = 24 // small_per_day
        iv, iv_ms = f"{hours} hours", hours * 3_600_000
    else:
        iv, iv_ms = "1 day", 86_400_000
    rows = per_day_rows(scenario, scale, huge_factor)
    day_s, day_ms = 86400, 86_400_000
    start_ms = int(EPOCH_2025.timestamp() * 1000)
    # (day, step) per table; the step spreads the day's rows evenly.
    m_steps = ", ".join(f"({d}, {day_s * DEVICES / r!r})" for d, r in enumerate(rows["metrics"]))
    e_steps = ", ".join(f"({d}, {day_s / r!r})" for d, r in enumerate(rows["events"]))
    t_steps = ", ".join(f"({d}, {max(1, day_ms // r)})" for d, r in enumerate(rows["ticks"]))
    sql = f"""
\\set ON_ERROR_STOP 1
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS timescaledb;
SELECT setseed(0.4242);

CREATE TABLE public.metrics (
    time        timestamptz NOT NULL,
    device_id   integer     NOT NULL,
    temperature double precision,
    humidity    double precision,
    status      text
);
SELECT create_hypertable('public.metrics', 'time', partitioning_column => 'device_id',
                         number_partitions => {PARTITIONS}, chunk_time_interval => interval '{iv}');

CREATE TABLE public.events (
    time    timestamptz NOT NULL,
    kind    text        NOT NULL,
    payload jsonb,
    message text
);
SELECT create_hypertable('public.events', 'time', chunk_time_interval => interval '{iv}');

-- epoch milliseconds
CREATE TABLE public.ticks (
    ts     bigint NOT NULL,
    symbol text   NOT NULL,
    price  double precision,
    volume integer
);
SELECT create_hypertable('public.ticks', 'ts', chunk_time_interval => {iv_ms});

-- for measuring the start-up cost of one raw psql | psql pipe
CREATE TABLE public.hfbench_empty (LIKE public.metrics);

-- {DEVICES} device ids, {DEVICES // PARTITIONS} in each hash partition (the slices split the
-- hash range [0, 2^31-1) in {PARTITIONS} equal parts), so the metrics chunks are of equal size
CREATE TEMP TABLE hfbench_devices AS
SELECT d FROM (
    SELECT d, row_number() OVER (
               PARTITION BY least(_timescaledb_functions.get_partition_hash(d) / (2147483647 / {PARTITIONS}),
                                  {PARTITIONS - 1})
               ORDER BY d) AS k
    FROM generate_series(1, 1000) AS d) AS x
WHERE k <= {DEVICES // PARTITIONS};

INSERT INTO public.metrics
SELECT t, d,
       round((20 + 8 * sin(extract(epoch FROM t) / 43200.0 + d) + random())::numeric, 2)::float8,
       round((55 + 15 * cos(extract(epoch FROM t) / 86400.0 + d / 3.0) + 2 * random())::numeric, 1)::float8,
       CASE WHEN random() < 0.97 THEN 'ok' WHEN random() < 0.5 THEN 'warn' ELSE 'error' END
FROM (VALUES {m_steps}) AS v(day, step_s)
CROSS JOIN LATERAL generate_series(
    timestamptz '2025-01-01 00:00:00+00' + v.day * interval '1 day',
    timestamptz '2025-01-01 00:00:00+00' + (v.day + 1) * interval '1 day' - interval '1 microsecond',
    make_interval(secs => v.step_s)) AS t
CROSS JOIN (SELECT d FROM hfbench_devices ORDER BY d) AS dev(d);

INSERT INTO public.events
SELECT t, k.kind,
       jsonb_build_object('seq', n, 'source', 'sensor-' || (n % 50), 'ok', n % 7 <> 0,
                          'value', round((random() * 1000)::numeric, 3),
                          'tags', jsonb_build_array('site-' || (n % 5), k.kind)),
       'user ' || (n % 500) || ' ' || k.kind || ' object ' || (n % 97) || ' from 10.0.'
           || (n % 256) || '.' || (n % 13) || ' in ' || round((random() * 300)::numeric, 1) || ' ms'
FROM (VALUES {e_steps}) AS v(day, step_s)
CROSS JOIN LATERAL generate_series(
    timestamptz '2025-01-01 00:00:00+00' + v.day * interval '1 day',
    timestamptz '2025-01-01 00:00:00+00' + (v.day + 1) * interval '1 day' - interval '1 microsecond',
    make_interval(secs => v.step_s)) WITH ORDINALITY AS g(t, n)
CROSS JOIN LATERAL (SELECT (ARRAY['login', 'logout', 'click', 'view', 'purchase', 'error'])[1 + (g.n % 6)::int] AS kind) AS k;

INSERT INTO public.ticks
SELECT ts, (ARRAY['AAPL', 'MSFT', 'GOOG', 'AMZN', 'TSLA', 'NVDA', 'META', 'IBM'])[1 + (n % 8)::int],
       round((100 + 50 * sin(ts / 3.6e6) + random())::numeric, 4)::float8,
       (random() * 1000)::int
FROM (VALUES {t_steps}) AS v(day, step_ms)
CROSS JOIN LATERAL generate_series({start_ms}::bigint + v.day * {day_ms}::bigint,
                                   {start_ms}::bigint + (v.day + 1) * {day_ms}::bigint - 1,
                                   v.step_ms::bigint) WITH ORDINALITY AS g(ts, n);
"""
    if scenario == "compressed":
        sql += """
ALTER TABLE public.metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                                timescaledb.compress_orderby = 'time DESC');
ALTER TABLE public.events SET (timescaledb.compress, timescaledb.compress_orderby = 'time DESC');
ALTER TABLE public.ticks SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                              timescaledb.compress_orderby = 'ts DESC');
SELECT count(public.compress_chunk(c)) FROM public.show_chunks('public.metrics') c;
SELECT count(public.compress_chunk(c)) FROM public.show_chunks('public.events') c;
SELECT count(public.compress_chunk(c)) FROM public.show_chunks('public.ticks') c;
"""
    return sql


def dataset_signature(sql):
    return f"v{DATASET_VERSION}-" + hashlib.sha256(sql.encode()).hexdigest()[:16]


def ensure_dataset(src, scenario, scale, small_per_day, huge_factor, rebuild):
    db = f"{DB_PREFIX}_{scenario.replace('-', '_')}_src"
    sql = dataset_sql(scenario, scale, small_per_day, huge_factor)
    sig = dataset_signature(sql)
    if not rebuild and src.db_exists(db):
        have = src.psql(db, "SELECT value FROM public.hfbench_meta WHERE key = 'dataset'", check=False).strip()
        if have == sig:
            log(f"{scenario}: source database {db} already built (scale {scale}), reusing it")
            return db, 0.0
    log(f"{scenario}: building source database {db} (scale {scale})")
    t0 = time.monotonic()
    src.recreate_db(db)
    src.psql(db, sql)
    # Hint bits, visibility map and statistics, so that no measured run pays
    # for the first read of fresh rows.
    src.psql(db, "VACUUM ANALYZE")
    # Written last: an interrupted build is rebuilt next time.
    src.psql(db, f"CREATE TABLE public.hfbench_meta (key text PRIMARY KEY, value text);"
                 f"INSERT INTO public.hfbench_meta VALUES ('dataset', '{sig}'), ('scale', '{scale}');")
    took = time.monotonic() - t0
    log(f"{scenario}: built in {took:.1f}s")
    return db, took


# Source: the relations a raw copy moves, largest first: every chunk whose
# rows are in its own heap (uncompressed, or partially compressed), and the
# compressed chunk tables (chunks of the internal compressed hypertables).
RAW_RELATIONS_SQL = """
SELECT format('%I.%I', c.schema_name, c.table_name),
       pg_table_size(format('%I.%I', c.schema_name, c.table_name)::regclass),
       pg_total_relation_size(format('%I.%I', c.schema_name, c.table_name)::regclass),
       h.compression_state = 2
FROM _timescaledb_catalog.chunk c
JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id
WHERE NOT c.dropped
  AND NOT (c.compressed_chunk_id IS NOT NULL AND c.status & 8 = 0)
ORDER BY 2 DESC, 1
"""

HYPERTABLES = ["metrics", "events", "ticks"]


def dataset_facts(src, db):
    rels = src.rows(db, RAW_RELATIONS_SQL)
    chunks = int(src.value(db, """
        SELECT count(*) FROM _timescaledb_catalog.chunk c
        JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id
        WHERE NOT c.dropped AND h.compression_state <> 2"""))
    compressed = int(src.value(db, """
        SELECT count(*) FROM _timescaledb_catalog.chunk
        WHERE NOT dropped AND compressed_chunk_id IS NOT NULL"""))
    counts = row_counts(src, db)
    return {
        "chunks": chunks,
        "compressed_chunks": compressed,
        "raw_relations": [r[0] for r in rels],
        "raw_relation_count": len(rels),
        "source_table_bytes": sum(int(r[1]) for r in rels),
        "source_total_bytes": sum(int(r[2]) for r in rels),
        "rows": counts,
    }


def row_counts(server, db):
    q = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM public.{t}" for t in HYPERTABLES)
    return {r[0]: int(r[1]) for r in server.rows(db, q)}


# ----------------------------------------------------------------- target ---


def prepare_target(src, tgt, src_db, tgt_db, workdir):
    """Fresh target database restored from a pg_dump of the source without
    chunk data, as the migration docs (and scripts/demo.sh) do."""
    t0 = time.monotonic()
    dump = os.path.join(workdir, f"{src_db}.sql")
    p = subprocess.run(
        [src.pg_dump_bin, "-d", src.url(src_db), "--format=plain", "--quote-all-identifiers",
         "--no-tablespaces", "--no-owner", "--no-privileges",
         "--exclude-table-data=_timescaledb_internal.*", f"--file={dump}"],
        capture_output=True, text=True)
    if p.returncode != 0:
        die(f"pg_dump of {src_db} failed:\n{p.stderr}")
    version = src.value(src_db, "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    tgt.recreate_db(tgt_db)
    tgt.psql(tgt_db, f"CREATE EXTENSION IF NOT EXISTS timescaledb VERSION '{version}'")
    env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")
    p = subprocess.run(
        [tgt.psql_bin, "-X", "-q", "-d", tgt.url(tgt_db), "-v", "ON_ERROR_STOP=1", "--echo-errors",
         "-o", "/dev/null",
         "-c", "select public.timescaledb_pre_restore();",
         "-f", dump,
         "-c", "select public.timescaledb_post_restore();"],
        capture_output=True, text=True, env=env)
    if p.returncode != 0:
        die(f"restoring the dump of {src_db} into {tgt_db} failed:\n{p.stderr[-3000:]}")
    tgt.psql(tgt_db, """
        SELECT public.alter_job(id::integer, scheduled => false)
        FROM _timescaledb_config.bgw_job WHERE id >= 1000""")
    return time.monotonic() - t0


# Target: empty every chunk (TimescaleDB adds a compressed chunk's compressed
# table; it is listed anyway) and drop the queues.
RESET_TARGET_SQL = """
DROP SCHEMA IF EXISTS __hyperfill CASCADE;
DROP SCHEMA IF EXISTS __backfill CASCADE;
DO $$
DECLARE l text;
BEGIN
    SELECT string_agg(format('%I.%I', schema_name, table_name), ', ') INTO l
    FROM _timescaledb_catalog.chunk WHERE NOT dropped;
    IF l IS NOT NULL THEN EXECUTE 'TRUNCATE ' || l; END IF;
END $$;
"""


def reset_target(tgt, tgt_db):
    tgt.psql(tgt_db, RESET_TARGET_SQL)
    left = row_counts(tgt, tgt_db)
    if any(left.values()):
        die(f"target {tgt_db} still has rows after TRUNCATE: {left}")


def settle(src, tgt):
    """Between runs: flush dirty buffers on both servers, so that a run does
    not pay for the previous one's writes."""
    src.psql("postgres", "CHECKPOINT")
    tgt.psql("postgres", "CHECKPOINT")


# ------------------------------------------------------------------- runs ---


class Runner:
    def __init__(self, args, src, tgt, outdir):
        self.args = args
        self.src, self.tgt = src, tgt
        self.outdir = outdir
        self.logdir = os.path.join(outdir, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.cpu = CpuProbe(src, tgt)
        self.startup = {}  # scenario -> P -> best (shortest) start-up measurement
        self._no_progress = {}

    def no_progress(self, binary):
        """["--no-progress"] when this binary's copy has that flag (newer
        hyperfill builds), else nothing."""
        if binary not in self._no_progress:
            out = subprocess.run([binary, "copy", "--help"], capture_output=True, text=True).stdout
            self._no_progress[binary] = ["--no-progress"] if "--no-progress" in out else []
        return self._no_progress[binary]

    def _logfile(self, name):
        return open(os.path.join(self.logdir, name), "w")

    def tool_run(self, tool, binary, scenario, src_db, tgt_db, p, rep):
        """stage (timed apart) + copy under /usr/bin/time, for hyperfill or
        timescaledb-backfill (same command line)."""
        s_url, t_url = self.src.url(src_db), self.tgt.url(tgt_db)
        reset_target(self.tgt, tgt_db)
        tag = f"{scenario}-{tool}-p{p}-r{rep}"
        with self._logfile(f"{tag}.stage.log") as lf:
            t0 = time.monotonic()
            for until, flt in ((UNTIL_TS, TS_FILTER), (UNTIL_MS, MS_FILTER)):
                rc = subprocess.run([binary, "stage", "--source", s_url, "--target", t_url,
                                     "--until", until, "--filter", flt],
                                    stdout=lf, stderr=subprocess.STDOUT).returncode
                if rc != 0:
                    die(f"{tool} stage failed (exit {rc}); see {lf.name}")
            stage_s = time.monotonic() - t0
        settle(self.src, self.tgt)
        cmd = [binary, "copy", "--source", s_url, "--target", t_url, "--parallelism", str(p)]
        cmd += self.no_progress(binary)
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        with self._logfile(f"{tag}.copy.log") as lf:
            self.cpu.start()
            rc, wall, cpu, rss = timed(cmd, env=env, stdout=lf, stderr=subprocess.STDOUT)
            srv = self.cpu.stop()
        if rc != 0:
            die(f"{tool} copy failed (exit {rc}); see {lf.name}")
        rec = {"scenario": scenario, "tool": tool, "p": p, "rep": rep, "wall_s": wall,
               "client_cpu_s": cpu, "client_rss_kib": rss, "stage_s": stage_s, **srv}
        add_other_cpu(rec)
        if tool in ("hyperfill", "compare"):
            r = self.tgt.rows(tgt_db, """
                SELECT count(*) FILTER (WHERE state = 'done'), count(*),
                       coalesce(sum(rows_copied), 0), coalesce(sum(bytes_copied), 0)
                FROM __hyperfill.task""")[0]
            done, total = int(r[0]), int(r[1])
            if done != total:
                die(f"hyperfill copy left {total - done} of {total} tasks not done; see {lf.name}")
            rec.update(tasks=total, rows_copied=int(r[2]), bytes_copied=int(r[3]))
        return rec

    def raw_run(self, scenario, src_db, tgt_db, relations, p, rep):
        reset_target(self.tgt, tgt_db)
        settle(self.src, self.tgt)
        rc, wall, cpu, rss, srv = self._xargs_pipes(src_db, tgt_db, relations, p,
                                                    f"{scenario}-raw-p{p}-r{rep}.log")
        if rc != 0:
            die(f"raw pipes failed (xargs exit {rc}); see {self.logdir}/{scenario}-raw-p{p}-r{rep}.log")
        return add_other_cpu({"scenario": scenario, "tool": "raw", "p": p, "rep": rep, "wall_s": wall,
                              "client_cpu_s": cpu, "client_rss_kib": rss, "pipes": len(relations), **srv})

    def _xargs_pipes(self, src_db, tgt_db, relations, p, logname):
        fd, listfile = tempfile.mkstemp(prefix="hfbench-rels.")
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(relations) + "\n")
        env = dict(os.environ, HFB_PSQL=self.src.psql_bin,
                   HFB_SRC=self.src.url(src_db), HFB_TGT=self.tgt.url(tgt_db))
        try:
            with self._logfile(logname) as lf:
                self.cpu.start()
                rc, wall, cpu, rss = timed(
                    ["xargs", "-a", listfile, "-d", "\n", "-P", str(p), "-n", "1",
                     os.path.join(HERE, "raw-pipe.sh")],
                    env=env, stdout=lf, stderr=subprocess.STDOUT)
                srv = self.cpu.stop()
        finally:
            os.unlink(listfile)
        return rc, wall, cpu, rss, srv

    def measure_startup(self, scenario, src_db, tgt_db, p):
        """Wall time per pipe of the raw pipe on an empty table, at this P."""
        n = self.args.startup_samples
        rc, wall, cpu, _, srv = self._xargs_pipes(src_db, tgt_db, ["public.hfbench_empty"] * n, p,
                                                  f"{scenario}-startup-p{p}.log")
        if rc != 0:
            die(f"empty raw pipes failed; see {self.logdir}/{scenario}-startup-p{p}.log")
        s_cpu, t_cpu = srv["source_server_cpu_s"], srv["target_server_cpu_s"]
        all_cpu = None if s_cpu is None or t_cpu is None else (cpu + s_cpu + t_cpu) / n
        log(f"{scenario}: raw pipe start-up at P={p}: {1000 * wall / n:.1f} ms wall per pipe, "
            f"{1000 * cpu / n:.1f} ms psql CPU" +
            ("" if all_cpu is None else f", {1000 * all_cpu:.1f} ms CPU with both servers'"))
        m = {"wall_per_pipe_s": wall / n, "cpu_per_pipe_s": cpu / n, "total_cpu_per_pipe_s": all_cpu, "samples": n}
        have = self.startup.setdefault(scenario, {}).get(p)
        if have is None:
            self.startup[scenario][p] = m
        else:  # the least of each: noise only adds
            for k in ("wall_per_pipe_s", "cpu_per_pipe_s", "total_cpu_per_pipe_s"):
                if m[k] is not None and (have[k] is None or m[k] < have[k]):
                    have[k] = m[k]

    def check_target(self, src_counts, tgt_db, what):
        got = row_counts(self.tgt, tgt_db)
        if got != src_counts:
            die(f"{what}: target rows {got} differ from source rows {src_counts}")

    def profile(self, scenario, src_db, tgt_db):
        """hyperfill copy -p 1 with tokio-postgres' statement log: round trips
        per task and where the per-task wall time goes (client side)."""
        s_url, t_url = self.src.url(src_db), self.tgt.url(tgt_db)
        reset_target(self.tgt, tgt_db)
        for until, flt in ((UNTIL_TS, TS_FILTER), (UNTIL_MS, MS_FILTER)):
            subprocess.run([self.args.hyperfill_bin, "stage", "--source", s_url, "--target", t_url,
                            "--until", until, "--filter", flt],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        settle(self.src, self.tgt)
        logpath = os.path.join(self.logdir, f"{scenario}-profile.log")
        env = dict(os.environ, RUST_LOG="tokio_postgres=debug,hyperfill=debug", NO_COLOR="1")
        with open(logpath, "w") as lf:
            t0 = time.monotonic()
            rc = subprocess.run([self.args.hyperfill_bin, "copy", "--source", s_url, "--target", t_url,
                                 "--parallelism", "1"] + self.no_progress(self.args.hyperfill_bin),
                                env=env, stdout=subprocess.DEVNULL, stderr=lf).returncode
            wall = time.monotonic() - t0
        if rc != 0:
            log(f"profile run failed (exit {rc}); see {logpath}")
            return None
        tasks = int(self.tgt.value(tgt_db, "SELECT count(*) FROM __hyperfill.task WHERE state = 'done'"))
        return analyse_statement_log(logpath, tasks, wall)


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


# ----------------------------------------------------------------- report ---


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def best(runs):
    """The run with the shortest wall time: on a shared machine, noise only
    ever adds time, so the fastest of the repeats is the best estimate."""
    return min(runs, key=lambda r: r["wall_s"]) if runs else None


def least_total_cpu(runs):
    totals = [r["client_cpu_s"] + r["source_server_cpu_s"] + r["target_server_cpu_s"] for r in runs
              if r["source_server_cpu_s"] is not None and r["target_server_cpu_s"] is not None]
    return min(totals) if totals else None


def extra_tools(meta):
    """The other binaries measured like hyperfill: [(label, path)]."""
    return [(t, meta.get(f"{t}_bin")) for t in ("backfill", "compare") if meta.get(f"{t}_bin")]


def summarise(results, facts, startup, scenarios, plist, others):
    """Best of the repeats per (scenario, tool, P), plus derived ratios."""
    table = []
    for sc in scenarios:
        for p in plist:
            def runs(tool):
                return [r for r in results if r["scenario"] == sc and r["tool"] == tool and r["p"] == p]
            hf, raw = best(runs("hyperfill")), best(runs("raw"))
            if not hf or not raw:
                continue
            f = facts[sc]
            row = {"scenario": sc, "p": p, "repeats": len(runs("hyperfill"))}
            row["hf_s"] = hf["wall_s"]
            row["raw_s"] = raw["wall_s"]
            net = raw["wall_s"] - f["raw_relation_count"] * startup[sc][p]["wall_per_pipe_s"]
            # When start-up is nearly all of the raw time, the difference is noise.
            row["raw_net_s"] = net if net >= 0.1 * raw["wall_s"] else None
            row["ratio_net"] = None if row["raw_net_s"] is None else row["raw_net_s"] / row["hf_s"]
            row["ratio_gross"] = row["raw_s"] / row["hf_s"]
            row["bytes"] = hf["bytes_copied"]
            row["copy_rows"] = hf["rows_copied"]
            row["rows"] = sum(f["rows"].values())
            row["hf_mb_s"] = row["bytes"] / 1e6 / row["hf_s"]
            row["raw_net_mb_s"] = None if row["raw_net_s"] is None else row["bytes"] / 1e6 / row["raw_net_s"]
            row["hf_disk_mb_s"] = f["source_table_bytes"] / 1e6 / row["hf_s"]
            row["hf_rows_s"] = row["rows"] / row["hf_s"]
            row["hf_cpu_s"] = hf["client_cpu_s"]
            row["hf_rss_mib"] = hf["client_rss_kib"] / 1024
            row["hf_src_cpu_s"] = hf["source_server_cpu_s"]
            row["hf_tgt_cpu_s"] = hf["target_server_cpu_s"]
            row["hf_other_s"] = hf["other_cpu_s"]
            row["raw_cpu_s"] = raw["client_cpu_s"]
            row["raw_src_cpu_s"] = raw["source_server_cpu_s"]
            row["raw_tgt_cpu_s"] = raw["target_server_cpu_s"]
            row["raw_other_s"] = raw["other_cpu_s"]
            row["stage_s"] = med(r["stage_s"] for r in runs("hyperfill"))
            # CPU cost, robust to noise from other work on the machine: client
            # plus both servers, the least over the repeats.
            row["hf_total_cpu_s"] = least_total_cpu(runs("hyperfill"))
            raw_cpu = least_total_cpu(runs("raw"))
            per_pipe = startup[sc][p]["total_cpu_per_pipe_s"]
            row["raw_total_cpu_s"] = raw_cpu
            row["raw_net_cpu_s"] = (None if raw_cpu is None or per_pipe is None
                                    else raw_cpu - f["raw_relation_count"] * per_pipe)
            row["cpu_ratio_net"] = (None if row["raw_net_cpu_s"] is None or not row["hf_total_cpu_s"]
                                    or row["raw_net_cpu_s"] < 0.1 * raw_cpu
                                    else row["raw_net_cpu_s"] / row["hf_total_cpu_s"])
            for t, _ in others:
                o = best(runs(t))
                if o is None:
                    continue
                row[f"{t}_s"] = o["wall_s"]
                row[f"{t}_ratio_net"] = None if row["raw_net_s"] is None else row["raw_net_s"] / o["wall_s"]
                row[f"{t}_vs_hf"] = o["wall_s"] / row["hf_s"]
                row[f"{t}_cpu_s"] = o["client_cpu_s"]
                row[f"{t}_total_cpu_s"] = least_total_cpu(runs(t))
                row[f"{t}_rss_mib"] = o["client_rss_kib"] / 1024
            table.append(row)
    derived = {"one_huge_vs_even": [], "per_task_overhead": []}
    by = {(r["scenario"], r["p"]): r for r in table}
    for p in plist:
        e, h, m = by.get(("even", p)), by.get(("one-huge", p)), by.get(("many-small", p))
        if e and h:
            derived["one_huge_vs_even"].append({
                "p": p, "hyperfill": h["hf_s"] / e["hf_s"], "raw": h["raw_s"] / e["raw_s"],
                "raw_net": (h["raw_net_s"] / e["raw_net_s"]
                            if h["raw_net_s"] is not None and e["raw_net_s"] is not None else None),
                **{t: h[f"{t}_s"] / e[f"{t}_s"] for t, _ in others if f"{t}_s" in h and f"{t}_s" in e}})
        if e and m:
            dn = facts["many-small"]["chunks"] - facts["even"]["chunks"]
            dr = facts["many-small"]["raw_relation_count"] - facts["even"]["raw_relation_count"]
            derived["per_task_overhead"].append({
                "p": p, "extra_chunks": dn,
                "hyperfill_ms_per_chunk": 1000 * (m["hf_s"] - e["hf_s"]) / dn,
                "raw_ms_per_chunk": 1000 * (m["raw_s"] - e["raw_s"]) / dr,
                "raw_net_ms_per_chunk": (1000 * (m["raw_net_s"] - e["raw_net_s"]) / dr
                                         if m["raw_net_s"] is not None and e["raw_net_s"] is not None else None),
                "hyperfill_cpu_ms_per_chunk": 1000 * (m["hf_cpu_s"] - e["hf_cpu_s"]) / dn,
                **{f"{t}_ms_per_chunk": 1000 * (m[f"{t}_s"] - e[f"{t}_s"]) / dn
                   for t, _ in others if f"{t}_s" in m and f"{t}_s" in e},
                "hyperfill_server_cpu_ms_per_chunk": (
                    1000 * ((m["hf_src_cpu_s"] or 0) + (m["hf_tgt_cpu_s"] or 0)
                            - (e["hf_src_cpu_s"] or 0) - (e["hf_tgt_cpu_s"] or 0)) / dn
                    if m["hf_src_cpu_s"] is not None else None),
            })
    return table, derived


def fmt(v, nd=2):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown(meta, facts, startup, table, derived, profile, others):
    out = []
    w = out.append
    w(f"### Run {meta['run_id']}")
    w("")
    w(f"- servers: source `{meta['source']}`, target `{meta['target']}`, TimescaleDB {meta['tsdb_version']}, "
      f"license `{meta['license']}`")
    w(f"- {meta['hyperfill_version']} (binary built {meta.get('hyperfill_built', '?')}, sha256 "
      f"{meta.get('hyperfill_sha256', '?')}; tree at commit {meta['git_commit']}{', dirty' if meta['git_dirty'] else ''}), "
      f"scale {meta['scale']}, repeats {meta['repeat']} (fastest reported), {meta['cpus']} CPUs, "
      f"load average at start {' '.join(meta['loadavg_at_start'])}, started {meta['started']}, "
      f"took {meta['duration_s'] / 60:.1f} min")
    for t, path in others:
        w(f"- {t}: `{path}` ({meta.get(f'{t}_version') or '?'})")
    w(f"- connections: sslmode {meta.get('sslmode') or 'as in the URLs (libpq default: prefer)'}; "
      f"psql's session used TLS: {meta.get('psql_tls', '?')}")
    w("")
    w("| scenario | chunks | relations (raw) | rows | COPY MB | source heap MB | source heap+idx MB | stage s |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for sc, f in facts.items():
        rows_p = [r for r in table if r["scenario"] == sc]
        b = rows_p[0]["bytes"] / 1e6 if rows_p else None
        st = med(r["stage_s"] for r in rows_p) if rows_p else None
        w(f"| {sc} | {f['chunks']} | {f['raw_relation_count']} | {sum(f['rows'].values()):,} | {fmt(b, 1)} | "
          f"{f['source_table_bytes'] / 1e6:.1f} | {f['source_total_bytes'] / 1e6:.1f} | {fmt(st)} |")
    w("")
    w("Raw pipe start-up (one `psql | psql` on an empty table; wall time per pipe at each P, "
      "subtracted per relation for raw-net):")
    w("")
    for sc, per_p in startup.items():
        w(f"- {sc}: " + ", ".join(
            f"P={p}: {1000 * s['wall_per_pipe_s']:.1f} ms"
            + ("" if s["total_cpu_per_pipe_s"] is None else f" ({1000 * s['total_cpu_per_pipe_s']:.1f} ms CPU)")
            for p, s in sorted(per_p.items())))
    w("")
    hdr = ("| scenario | P | hyperfill s | raw s | raw-net s | ratio (raw-net/hf) | ratio (raw/hf) | "
           "hf MB/s | raw-net MB/s | hf rows/s | hf CPU s | peak RSS MiB |")
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t, _ in others:
        hdr += f" {t} s | {t} ratio (raw-net/{t}) | {t} s / hf s | {t} CPU s | {t} total CPU s | {t} RSS MiB |"
        sep += "---:|---:|---:|---:|---:|---:|"
    w(hdr)
    w(sep)
    for r in table:
        line = (f"| {r['scenario']} | {r['p']} | {fmt(r['hf_s'])} | {fmt(r['raw_s'])} | {fmt(r['raw_net_s'])} | "
                f"**{fmt(r['ratio_net'])}** | {fmt(r['ratio_gross'])} | {fmt(r['hf_mb_s'], 1)} | "
                f"{fmt(r['raw_net_mb_s'], 1)} | {r['hf_rows_s']:,.0f} | {fmt(r['hf_cpu_s'])} | "
                f"{fmt(r['hf_rss_mib'], 1)} |")
        for t, _ in others:
            line += (f" {fmt(r.get(f'{t}_s'))} | {fmt(r.get(f'{t}_ratio_net'))} | {fmt(r.get(f'{t}_vs_hf'))} | "
                     f"{fmt(r.get(f'{t}_cpu_s'))} | {fmt(r.get(f'{t}_total_cpu_s'))} | "
                     f"{fmt(r.get(f'{t}_rss_mib'), 1)} |")
        w(line)
    w("")
    w("Where the CPU went (seconds; server = all processes of that PostgreSQL server; "
      "noise = machine CPU used by anything else during the run):")
    w("")
    w("| scenario | P | hf client | hf source srv | hf target srv | hf noise | raw client (psql) | "
      "raw source srv | raw target srv | raw noise | hf total | raw-net total | CPU ratio (raw-net/hf) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        w(f"| {r['scenario']} | {r['p']} | {fmt(r['hf_cpu_s'])} | {fmt(r['hf_src_cpu_s'])} | "
          f"{fmt(r['hf_tgt_cpu_s'])} | {fmt(r['hf_other_s'])} | {fmt(r['raw_cpu_s'])} | "
          f"{fmt(r['raw_src_cpu_s'])} | {fmt(r['raw_tgt_cpu_s'])} | {fmt(r['raw_other_s'])} | "
          f"{fmt(r['hf_total_cpu_s'])} | {fmt(r['raw_net_cpu_s'])} | **{fmt(r['cpu_ratio_net'])}** |")
    w("")
    if derived["one_huge_vs_even"]:
        w("one-huge / even wall time at the same P (same bytes): " + "; ".join(
            f"P={d['p']}: hyperfill {d['hyperfill']:.2f}, raw {d['raw']:.2f}, raw-net {fmt(d['raw_net'])}"
            + "".join(f", {t} {d[t]:.2f}" for t, _ in others if t in d)
            for d in derived["one_huge_vs_even"]))
        w("")
    if derived["per_task_overhead"]:
        w("Per-chunk overhead, (many-small − even) / extra chunks (same rows and bytes):")
        w("")
        w("| P | extra chunks | hyperfill wall ms/chunk | raw wall ms/chunk | raw-net wall ms/chunk | "
          "hyperfill CPU ms/chunk | server CPU ms/chunk (hyperfill run) |"
          + "".join(f" {t} wall ms/chunk |" for t, _ in others))
        w("|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(others))
        for d in derived["per_task_overhead"]:
            w(f"| {d['p']} | {d['extra_chunks']} | {d['hyperfill_ms_per_chunk']:.2f} | {d['raw_ms_per_chunk']:.2f} | "
              f"{fmt(d['raw_net_ms_per_chunk'])} | {d['hyperfill_cpu_ms_per_chunk']:.3f} | "
              f"{fmt(d['hyperfill_server_cpu_ms_per_chunk'])} |"
              + "".join(f" {fmt(d.get(f'{t}_ms_per_chunk'))} |" for t, _ in others))
        w("")
    if profile:
        w(f"Profile (hyperfill copy -p 1 on {profile['scenario']}, statement log on): "
          f"{profile['wall_per_task_ms']:.2f} ms per task, {profile['statements_per_task']:.1f} "
          f"client round trips per task of which {profile['prepares_per_task']:.1f} are prepares.")
        w("")
        w("| statement (client view) | per task | ms per task |")
        w("|---|---:|---:|")
        for s in profile["by_statement"]:
            w(f"| `{s['statement'].replace('|', '/')}` | {s['per_task']:.2f} | {s['ms_per_task']:.3f} |")
        w("")
    return "\n".join(out)


# ------------------------------------------------------------------- main ---


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="benches/run.sh",
        description="Benchmark hyperfill copy against raw psql COPY pipes (see docs/benchmarks.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n" + "".join(f"  {k:11s} {v}\n" for k, v in SCENARIOS.items()) +
               "\nbenches/run.sh alone also takes: --no-build (measure the existing binary),\n"
               "--no-env (use HYPERFILL_TEST_SOURCE_URL/HYPERFILL_TEST_TARGET_URL as they are),\n"
               "--private-clusters (a separate pair of clusters for the benchmark, see run.sh).")
    ap.add_argument("--scale", type=float, default=10,
                    help="dataset size: about SCALE x 10 MB of binary COPY data per scenario (default 10)")
    ap.add_argument("--parallelism", default="1,2,4", help="comma-separated P values (default 1,2,4)")
    ap.add_argument("--scenarios", default="even,many-small,one-huge,compressed",
                    help="comma-separated subset of: " + ", ".join(SCENARIOS) +
                         " (compressed only runs on a Timescale-licensed server)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measured runs per cell; the fastest is reported (noise only adds time)")
    ap.add_argument("--backfill-bin", help="also measure this timescaledb-backfill binary")
    ap.add_argument("--compare-bin",
                    help="also measure this other hyperfill binary (e.g. an older build), reported as 'compare'")
    ap.add_argument("--sslmode", choices=["disable", "prefer", "require"],
                    help="sslmode for every connection, psql's and the tools' (default: as the URLs say)")
    ap.add_argument("--hyperfill-bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "hyperfill"),
        help="hyperfill binary (default: target/release/hyperfill; a copy of it is measured)")
    ap.add_argument("--small-chunks-per-day", type=int, default=12, choices=[2, 3, 4, 6, 8, 12, 24],
                    help="chunks per day per partition in many-small (default 12: 2-hour chunks)")
    ap.add_argument("--huge-factor", type=int, default=20,
                    help="one-huge: the huge chunk is this many times every other chunk (default 20)")
    ap.add_argument("--startup-samples", type=int, default=60,
                    help="empty pipes run to measure the raw pipe start-up cost at each P (default 60)")
    ap.add_argument("--reprepare", choices=["truncate", "restore"], default="truncate",
                    help="between runs: TRUNCATE the target chunks (default), or restore a fresh target")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the source datasets even if cached")
    ap.add_argument("--keep-targets", action="store_true",
                    help="keep the target databases at the end (dropped by default; the sources stay cached)")
    ap.add_argument("--no-profile", action="store_true", help="skip the statement-log profile of many-small")
    ap.add_argument("--out", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "bench"),
        help="where results go (default target/bench)")
    ap.add_argument("--report", metavar="DIR",
                    help="only re-render DIR/results.md from DIR/results.json (no servers needed)")
    ap.add_argument("--drop", action="store_true", help="drop every hfbench_* database on both servers and exit")
    # Handled by run.sh; accepted here so the same arguments can be passed on.
    ap.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-env", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def git(*a):
    p = subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else ""


def render(doc):
    facts, startup = doc["datasets"], {k: {int(p): v for p, v in d.items()} for k, d in doc["startup"].items()}
    meta = doc["meta"]
    others = extra_tools(meta)
    table, derived = summarise(doc["results"], facts, startup, meta["scenarios"], meta["parallelism"], others)
    return table, derived, markdown(meta, facts, startup, table, derived, doc.get("profile"), others)


def main(argv):
    args = parse_args(argv)
    if args.report:
        with open(os.path.join(args.report, "results.json")) as fh:
            doc = json.load(fh)
        _, _, md = render(doc)
        with open(os.path.join(args.report, "results.md"), "w") as fh:
            fh.write(md + "\n")
        print(md)
        return 0
    src_url = os.environ.get("HYPERFILL_TEST_SOURCE_URL")
    tgt_url = os.environ.get("HYPERFILL_TEST_TARGET_URL")
    if not src_url or not tgt_url:
        die("HYPERFILL_TEST_SOURCE_URL / HYPERFILL_TEST_TARGET_URL are not set (run through benches/run.sh)")
    bindir = os.environ.get("HYPERFILL_PG_BINDIR", "/usr/lib/postgresql/15/bin")
    src, tgt = Server("source", src_url, bindir), Server("target", tgt_url, bindir)

    if args.drop:
        for s in (src, tgt):
            for (db,) in s.rows("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{DB_PREFIX}\\_%'"):
                log(f"dropping {s.name} database {db}")
                s.drop_db(db)
        return 0

    plist = [int(x) for x in args.parallelism.split(",") if x.strip()]
    if not plist or min(plist) < 1:
        die("--parallelism: give positive integers, e.g. 1,2,4")
    if not os.access("/usr/bin/time", os.X_OK):
        die("/usr/bin/time is missing (apt-get install time)")
    if not os.access(args.hyperfill_bin, os.X_OK):
        die(f"hyperfill binary {args.hyperfill_bin} not found (cargo build --release)")
    for opt in ("backfill_bin", "compare_bin"):
        path = getattr(args, opt)
        if path and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            die(f"--{opt.replace('_', '-')} {path} is not an executable file")

    run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    # License: the setting exists once the extension library is loaded.
    lic = src.psql("postgres", "BEGIN; CREATE EXTENSION IF NOT EXISTS timescaledb; "
                               "SELECT current_setting('timescaledb.license'); ROLLBACK").strip().splitlines()[-1]
    tsdb = src.value("postgres", "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'")
    outdir = os.path.join(args.out, f"{run_id}-{lic}")
    os.makedirs(outdir, exist_ok=True)
    # Measure a copy of the binary: a rebuild during the run does not change it.
    bin_copy = os.path.join(outdir, "hyperfill")
    shutil.copy2(args.hyperfill_bin, bin_copy)
    args.hyperfill_bin = bin_copy
    hf_version = subprocess.run([bin_copy, "--version"], capture_output=True, text=True).stdout.strip()
    with open(bin_copy, "rb") as fh:
        hf_sha = hashlib.sha256(fh.read()).hexdigest()[:12]
    hf_built = datetime.datetime.fromtimestamp(os.path.getmtime(bin_copy)).isoformat(timespec="seconds")
    if args.sslmode:
        for s in (src, tgt):
            s.admin_url += ("&" if "?" in s.admin_url else "?") + f"sslmode={args.sslmode}"
    psql_tls = src.value("postgres", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == "t"

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            die(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    if "compressed" in scenarios and lic != "timescale":
        log(f"skipping scenario 'compressed': timescaledb.license = {lic} has no compression")
        scenarios.remove("compressed")
    if not args.backfill_bin:
        log("no --backfill-bin: timescaledb-backfill is not measured")
    if args.compare_bin:
        # a copy, like hyperfill's own
        cmp_copy = os.path.join(outdir, "compare-" + os.path.basename(args.compare_bin))
        shutil.copy2(args.compare_bin, cmp_copy)
        args.compare_bin = cmp_copy
    for pm in (src.find_postmaster(), tgt.find_postmaster()):
        if pm is None:
            log("a server does not run on this machine: server CPU is not measured")

    others_meta = {}
    for t in ("backfill", "compare"):
        path = getattr(args, f"{t}_bin")
        if path:
            v = subprocess.run([path, "--version"], capture_output=True, text=True)
            others_meta[f"{t}_bin"] = path
            others_meta[f"{t}_version"] = (v.stdout or v.stderr).strip().splitlines()[0] if (v.stdout or v.stderr).strip() else "?"
    meta = {
        **others_meta,
        "run_id": f"{run_id}-{lic}", "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "source": re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", src_url),
        "target": re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", tgt_url),
        "license": lic, "tsdb_version": tsdb, "hyperfill_version": hf_version,
        "hyperfill_sha256": hf_sha, "hyperfill_built": hf_built,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", "migrations")),
        "scale": args.scale, "repeat": args.repeat, "parallelism": plist, "scenarios": scenarios,
        "small_chunks_per_day": args.small_chunks_per_day, "huge_factor": args.huge_factor,
        "reprepare": args.reprepare,
        "cpus": os.cpu_count(), "sslmode": args.sslmode, "psql_tls": psql_tls,
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
    }
    t_start = time.monotonic()
    runner = Runner(args, src, tgt, outdir)
    results, facts, builds, profile = [], {}, {}, None
    workdir = tempfile.mkdtemp(prefix="hfbench-")
    try:
        for sc in scenarios:
            src_db, took = ensure_dataset(src, sc, args.scale, args.small_chunks_per_day,
                                          args.huge_factor, args.rebuild)
            builds[sc] = took
            facts[sc] = dataset_facts(src, src_db)
            f = facts[sc]
            log(f"{sc}: {f['chunks']} chunks ({f['compressed_chunks']} compressed), "
                f"{f['raw_relation_count']} relations to copy raw, {sum(f['rows'].values()):,} rows, "
                f"{f['source_table_bytes'] / 1e6:.1f} MB heap on the source")
            tgt_db = f"{DB_PREFIX}_{sc.replace('-', '_')}_tgt"
            log(f"{sc}: preparing target database {tgt_db} (pg_dump, pre/post restore)")
            prep = prepare_target(src, tgt, src_db, tgt_db, workdir)
            log(f"{sc}: target prepared in {prep:.1f}s")
            for rep in range(1, args.repeat + 1):
                for p in plist:
                    runner.measure_startup(sc, src_db, tgt_db, p)
                for p in plist:
                    tools = [("hyperfill", args.hyperfill_bin)]
                    tools += [(t, path) for t, path in extra_tools(meta)]
                    for tool, binary in tools:
                        if args.reprepare == "restore":
                            prepare_target(src, tgt, src_db, tgt_db, workdir)
                        r = runner.tool_run(tool, binary, sc, src_db, tgt_db, p, rep)
                        runner.check_target(f["rows"], tgt_db, f"{sc} {tool} P={p}")
                        results.append(r)
                        log(f"{sc} {tool:9s} P={p}: {r['wall_s']:.2f}s wall, {r['client_cpu_s']:.2f}s CPU, "
                            f"{r['client_rss_kib'] / 1024:.1f} MiB peak RSS (stage {r['stage_s']:.2f}s)"
                            f"{noise_note(r)}")
                    if args.reprepare == "restore":
                        prepare_target(src, tgt, src_db, tgt_db, workdir)
                    r = runner.raw_run(sc, src_db, tgt_db, f["raw_relations"], p, rep)
                    runner.check_target(f["rows"], tgt_db, f"{sc} raw P={p}")
                    results.append(r)
                    log(f"{sc} raw       P={p}: {r['wall_s']:.2f}s wall, {r['client_cpu_s']:.2f}s psql CPU"
                        f"{noise_note(r)}")
            if sc == "many-small" and not args.no_profile:
                log(f"{sc}: profiling hyperfill copy -p 1 with the statement log")
                profile = runner.profile(sc, src_db, tgt_db)
                if profile:
                    profile["scenario"] = sc
            with open(os.path.join(outdir, "partial-results.json"), "w") as fh:
                json.dump({"meta": meta, "results": results, "startup": runner.startup,
                           "datasets": {k: {kk: vv for kk, vv in v.items() if kk != "raw_relations"}
                                        for k, v in facts.items()}}, fh, indent=1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.keep_targets:
        # Re-created by every run anyway; the source datasets stay cached.
        for sc in scenarios:
            tgt.drop_db(f"{DB_PREFIX}_{sc.replace('-', '_')}_tgt")

    meta["duration_s"] = time.monotonic() - t_start
    facts_out = {k: {kk: vv for kk, vv in v.items() if kk != "raw_relations"} for k, v in facts.items()}
    doc = {"meta": meta, "datasets": facts_out, "dataset_build_s": builds, "startup": runner.startup,
           "results": results, "profile": profile}
    table, derived, md = render(doc)
    doc.update(summary=table, derived=derived)
    with open(os.path.join(outdir, "results.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
    with open(os.path.join(outdir, "results.md"), "w") as fh:
        fh.write(md + "\n")
    try:
        os.unlink(os.path.join(outdir, "partial-results.json"))
    except OSError:
        pass
    latest = os.path.join(args.out, "latest")
    try:
        if os.path.islink(latest):
            os.unlink(latest)
        os.symlink(os.path.basename(outdir), latest)
    except OSError:
        pass
    print(md)
    log(f"results: {outdir}/results.md and results.json ({meta['duration_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
