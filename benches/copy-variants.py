#!/usr/bin/env python3
"""How the target's COPY of an empty chunk could be cheaper (issue 12): the
same chunk files loaded into the same empty target chunks four ways,
alternating, timed by psql on the target:

  plain             what hyperfill does to an empty whole chunk today:
                    SELECT EXISTS (is it empty?), COPY, COMMIT
  freeze            TRUNCATE ONLY the chunk, COPY ... (FREEZE), COMMIT
                    (FREEZE needs the table truncated or created in the
                    same transaction)
  idx-after         DROP the chunk's indexes, COPY, CREATE them again
  freeze+idx-after  both

All in one transaction with synchronous_commit off, as hyperfill's. Not
part of the test suite; run after benches/run.sh has built the source
dataset (the target database is restored here from its pg_dump):

  eval "$(scripts/lib/clusters.sh env)"
  benches/copy-variants.py [--dataset hfbench_even_src] [--table metrics] [--chunks 4] [--reps 6]

The chunks are written to /tmp by the source server (COPY TO a file: both
servers must run on this machine, as the benchmark's clusters do).
Standard library only.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib.common import die  # noqa: E402
from benchlib.servers import Server  # noqa: E402
from benchlib.targets import prepare_target  # noqa: E402

VARIANTS = ["plain", "freeze", "idx-after", "freeze+idx-after"]


def body(variant, chunk, path, indexes):
    drops = "".join(f"DROP INDEX {i};\n" for i, _ in indexes)
    creates = "".join(f"{d};\n" for _, d in indexes)
    freeze = "freeze" in variant
    after = "idx-after" in variant
    return ("BEGIN;\nSET LOCAL synchronous_commit = off;\n"
            + (f"TRUNCATE ONLY {chunk};\n" if freeze else f"SELECT EXISTS (SELECT 1 FROM ONLY {chunk});\n")
            + (drops if after else "")
            + f"COPY {chunk} FROM '{path}' (FORMAT binary{', FREEZE' if freeze else ''});\n"
            + (creates if after else "")
            + "COMMIT;\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="hfbench_even_src", help="source database (built by benches/run.sh)")
    ap.add_argument("--table", default="metrics", help="hypertable whose largest chunks are loaded")
    ap.add_argument("--chunks", type=int, default=4, help="chunks per measurement")
    ap.add_argument("--reps", type=int, default=6, help="measurements per variant")
    args = ap.parse_args()
    bindir = os.environ.get("HYPERFILL_PG_BINDIR", "/usr/lib/postgresql/15/bin")
    src = Server("source", os.environ["HYPERFILL_TEST_SOURCE_URL"], bindir)
    tgt = Server("target", os.environ["HYPERFILL_TEST_TARGET_URL"], bindir)
    tgt_db = args.dataset.removesuffix("_src") + "_variants_tgt"
    work = tempfile.mkdtemp(prefix="hfbench-variants-")
    os.chmod(work, 0o777)  # the servers' OS user writes and reads the files
    prepare_target(src, tgt, args.dataset, tgt_db, work)
    chunks = src.rows(args.dataset, f"""
        SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks
        WHERE hypertable_schema = 'public' AND hypertable_name = '{args.table}'
        ORDER BY pg_relation_size(format('%I.%I', chunk_schema, chunk_name)) DESC, 1 LIMIT {args.chunks}""")
    if not chunks:
        die(f"no chunks of public.{args.table} in {args.dataset}")
    files = []
    for i, (c,) in enumerate(chunks):
        path = os.path.join(work, f"{i}.bin")
        src.psql(args.dataset, f"COPY {c} TO '{path}' (FORMAT binary)")
        idx = tgt.rows(tgt_db, f"SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) "
                               f"FROM pg_index WHERE indrelid = '{c}'::regclass")
        files.append((c, path, idx))
    mb = sum(os.path.getsize(p) for _, p, _ in files) / 1e6
    print(f"{len(files)} chunks of public.{args.table}, {mb:.1f} MB of COPY data, "
          f"{len(files[0][2])} indexes each", flush=True)

    def run(variant):
        total = 0.0
        for c, path, idx in files:
            tgt.psql(tgt_db, f"TRUNCATE ONLY {c}; CHECKPOINT")
            p = subprocess.run([tgt.psql_bin, "-X", "-v", "ON_ERROR_STOP=1", "-d", tgt.url(tgt_db)],
                               input="\\timing on\n" + body(variant, c, path, idx),
                               capture_output=True, text=True)
            if p.returncode:
                die(f"{variant} on {c}: {p.stderr}")
            total += sum(float(x) for x in re.findall(r"Time: ([0-9.]+) ms", p.stdout))
        return total

    res = {v: [] for v in VARIANTS}
    for rep in range(args.reps):
        for v in VARIANTS if rep % 2 == 0 else list(reversed(VARIANTS)):
            res[v].append(run(v))
            print(f"rep {rep + 1} {v}: {res[v][-1]:.0f} ms", flush=True)
    base = statistics.median(res["plain"])
    print("\n| variant | median ms | runs ms | / plain |\n|---|---:|---|---:|")
    for v in VARIANTS:
        m = statistics.median(res[v])
        print(f"| {v} | {m:.0f} | {', '.join(f'{x:.0f}' for x in res[v])} | {m / base:.2f} |")
    tgt.drop_db(tgt_db)
    subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
