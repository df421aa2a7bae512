"""Target databases: restored from a pg_dump of the source, emptied before
every measured run."""

import os
import subprocess
import time

from .common import die
from .datasets import CHUNKS_SQL, all_chunk_relations_sql, row_counts


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


# Target: drop the queues, then empty every chunk and every compressed
# chunk relation (listed by datasets.all_chunk_relations_sql).
RESET_QUEUES_SQL = """
DROP SCHEMA IF EXISTS __hyperfill CASCADE;
DROP SCHEMA IF EXISTS __backfill CASCADE;
"""

# TRUNCATE leaves the uncompressed rows of a partially compressed chunk on
# TimescaleDB 2.29 (it empties the compressed relation only), so those heaps
# are emptied with a DELETE afterwards.
RESET_TARGET_SQL = """
DO $$
DECLARE l text; c regclass;
BEGIN
    SELECT string_agg(rel::text, ', ') INTO l FROM ({relations}) r(rel);
    IF l IS NOT NULL THEN EXECUTE 'TRUNCATE ' || l; END IF;
    FOR c IN SELECT chunk FROM ({chunks}) ch WHERE is_compressed LOOP
        EXECUTE 'DELETE FROM ONLY ' || c::text;
    END LOOP;
END $$;
"""


def reset_target(tgt, tgt_db):
    tgt.psql(tgt_db, RESET_QUEUES_SQL)
    tgt.psql(tgt_db, RESET_TARGET_SQL.format(relations=all_chunk_relations_sql(tgt, tgt_db), chunks=CHUNKS_SQL))
    left = row_counts(tgt, tgt_db)
    if any(left.values()):
        die(f"target {tgt_db} still has rows after TRUNCATE: {left}")


def settle(src, tgt):
    """Between runs: flush dirty buffers on both servers, so that a run does
    not pay for the previous one's writes."""
    src.psql("postgres", "CHECKPOINT")
    tgt.psql("postgres", "CHECKPOINT")
