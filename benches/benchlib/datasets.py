"""Synthetic source datasets: their SQL, building and caching them in
hfbench_* databases on the source, and the facts a run reports about them."""

import datetime
import hashlib
import time

from .common import log

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
    "half-compressed": "the rows of `even`, every other chunk compressed (licensed TimescaleDB only)",
}

# Scenarios that need compression (the Timescale license).
LICENSED = ("compressed", "half-compressed")



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
    if scenario == "half-compressed":
        sql += """
ALTER TABLE public.metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                                timescaledb.compress_orderby = 'time DESC');
ALTER TABLE public.events SET (timescaledb.compress, timescaledb.compress_orderby = 'time DESC');
ALTER TABLE public.ticks SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                              timescaledb.compress_orderby = 'ts DESC');
SELECT count(public.compress_chunk(c)) FROM (SELECT c, row_number() OVER () AS n
    FROM public.show_chunks('public.metrics') c) x WHERE n % 2 = 0;
SELECT count(public.compress_chunk(c)) FROM (SELECT c, row_number() OVER () AS n
    FROM public.show_chunks('public.events') c) x WHERE n % 2 = 0;
SELECT count(public.compress_chunk(c)) FROM (SELECT c, row_number() OVER () AS n
    FROM public.show_chunks('public.ticks') c) x WHERE n % 2 = 0;
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


# The chunk catalog differs between TimescaleDB releases (2.26 dropped
# `chunk.dropped`, 2.29 keys `chunk` by relid and keeps a compressed chunk's
# data in a standalone relation found through `compression_settings`), so
# the benchmark lists chunks through the stable `timescaledb_information.chunks`
# view and differs in one place only: how a chunk's compressed relation is
# found (CHUNK_COMPRESSED_SQL, chosen by whether `chunk.compressed_chunk_id`
# exists).  Both give (chunk regclass, compressed relation regclass) for
# every compressed chunk of a user hypertable.
CHUNKS_SQL = """
SELECT format('%I.%I', chunk_schema, chunk_name)::regclass AS chunk, is_compressed
FROM timescaledb_information.chunks
"""

CHUNK_COMPRESSED_SQL = {
    # 2.16 - 2.28: the compressed data is a chunk of the internal compressed hypertable
    "compressed_chunk_id": """
SELECT format('%I.%I', c.schema_name, c.table_name)::regclass AS chunk,
       format('%I.%I', cc.schema_name, cc.table_name)::regclass AS compressed
FROM _timescaledb_catalog.chunk c
JOIN _timescaledb_catalog.chunk cc ON cc.id = c.compressed_chunk_id
JOIN timescaledb_information.chunks i ON i.chunk_schema = c.schema_name AND i.chunk_name = c.table_name
""",
    # 2.29+: a standalone relation, named in the chunk's compression settings
    "compression_settings": """
SELECT s.relid AS chunk, s.compress_relid AS compressed
FROM _timescaledb_catalog.compression_settings s
JOIN timescaledb_information.chunks i
  ON format('%I.%I', i.chunk_schema, i.chunk_name)::regclass = s.relid
WHERE s.compress_relid IS NOT NULL
""",
}


def compressed_sql(server, db):
    """CHUNK_COMPRESSED_SQL for this database's TimescaleDB release."""
    has_id = server.value(db, """
        SELECT EXISTS (SELECT FROM pg_attribute
                       WHERE attrelid = '_timescaledb_catalog.chunk'::regclass
                         AND attname = 'compressed_chunk_id' AND NOT attisdropped)""")
    return CHUNK_COMPRESSED_SQL["compressed_chunk_id" if has_id == "t" else "compression_settings"]


def all_chunk_relations_sql(server, db):
    """Every chunk of a user hypertable and every compressed chunk relation
    (one column, regclass): what a reset of the target empties."""
    return f"""
SELECT chunk FROM ({CHUNKS_SQL}) ch
UNION ALL
SELECT compressed FROM ({compressed_sql(server, db)}) cz
"""


def raw_relations_sql(server, db):
    """The relations a raw copy moves, largest first: every chunk whose rows
    are in its own heap (uncompressed, or partially compressed: a compressed
    chunk's heap is empty otherwise), and the compressed relations."""
    return f"""
SELECT rel::text, pg_table_size(rel), pg_total_relation_size(rel), is_comp
FROM (
    SELECT chunk AS rel, false AS is_comp FROM ({CHUNKS_SQL}) ch
    WHERE NOT is_compressed OR pg_relation_size(chunk) > 0
    UNION ALL
    SELECT compressed, true FROM ({compressed_sql(server, db)}) cz
) r
ORDER BY 2 DESC, 1
"""


HYPERTABLES = ["metrics", "events", "ticks"]


def dataset_facts(src, db):
    rels = src.rows(db, raw_relations_sql(src, db))
    chunks = int(src.value(db, f"SELECT count(*) FROM ({CHUNKS_SQL}) ch"))
    compressed = int(src.value(db, f"SELECT count(*) FROM ({compressed_sql(src, db)}) cz"))
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
