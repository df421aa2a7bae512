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
import subprocess
import sys
import tempfile
import time

# The modules live in benches/benchlib; leave no __pycache__ in the tree.
sys.dont_write_bytecode = True

from benchlib.common import ROOT, die, log  # noqa: E402
from benchlib.datasets import DB_PREFIX, LICENSED, SCENARIOS, dataset_facts, ensure_dataset  # noqa: E402
from benchlib.wan import run_wan, wan_table  # noqa: E402
from benchlib.measure import Runner, noise_note  # noqa: E402
from benchlib.report import extra_tools, render  # noqa: E402
from benchlib.servers import Server  # noqa: E402
from benchlib.targets import prepare_target  # noqa: E402


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
    ap.add_argument("--no-raw", action="store_true",
                    help="skip the raw psql pipes (and their start-up samples): only the tools are measured, "
                         "e.g. for an A/B of two builds with --compare-bin")
    ap.add_argument("--wan-rtt", metavar="MS,...",
                    help="also run the WAN scenario: hyperfill copy with the source behind a delaying proxy "
                         "at these round-trip times (e.g. 0,25,50,100), against the direct copy")
    ap.add_argument("--wan-parallelism", default="auto",
                    help="P values of the WAN cells; 'auto' = no --parallelism (default auto)")
    ap.add_argument("--wan-only", action="store_true",
                    help="with --wan-rtt: skip the LAN tables' cells (hyperfill, raw pipes, others)")
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



def main(argv):
    args = parse_args(argv)
    if args.report:
        with open(os.path.join(args.report, "results.json")) as fh:
            doc = json.load(fh)
        _, _, md = render({**doc, "results": [r for r in doc["results"] if not r.get("wan")]})
        wan_md = wan_table(doc["results"])
        if wan_md:
            md += "\n\n## WAN: the source behind a delaying proxy\n\n" + wan_md
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
    for sc in LICENSED:
        if sc in scenarios and lic != "timescale":
            log(f"skipping scenario '{sc}': timescaledb.license = {lic} has no compression")
            scenarios.remove(sc)
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
        "reprepare": args.reprepare, "no_raw": args.no_raw, "wan_rtt": args.wan_rtt, "wan_parallelism": args.wan_parallelism,
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
            for rep in range(1, args.repeat + 1) if args.wan_rtt else ():
                run_wan(runner, args, sc, src_db, tgt_db, f, results, rep)
            for rep in range(1, args.repeat + 1) if not args.wan_only else ():
                for p in plist if not args.no_raw else ():
                    runner.measure_startup(sc, src_db, tgt_db, p)
                for p in plist:
                    tools = [("hyperfill", args.hyperfill_bin)]
                    tools += [(t, path) for t, path in extra_tools(meta)]
                    # Every other repetition in the opposite order: on this
                    # machine the run that follows another on the same
                    # target was measured ~15 % faster (an A/A of one
                    # binary), so a fixed order would favour the second tool.
                    if rep % 2 == 0:
                        tools.reverse()
                    for tool, binary in tools:
                        if args.reprepare == "restore":
                            prepare_target(src, tgt, src_db, tgt_db, workdir)
                        r = runner.tool_run(tool, binary, sc, src_db, tgt_db, p, rep)
                        runner.check_target(f["rows"], tgt_db, f"{sc} {tool} P={p}")
                        results.append(r)
                        log(f"{sc} {tool:9s} P={p}: {r['wall_s']:.2f}s wall, {r['client_cpu_s']:.2f}s CPU, "
                            f"{r['client_rss_kib'] / 1024:.1f} MiB peak RSS (stage {r['stage_s']:.2f}s)"
                            f"{noise_note(r)}")
                    if args.no_raw:
                        continue
                    if args.reprepare == "restore":
                        prepare_target(src, tgt, src_db, tgt_db, workdir)
                    r = runner.raw_run(sc, src_db, tgt_db, f["raw_relations"], p, rep)
                    runner.check_target(f["rows"], tgt_db, f"{sc} raw P={p}")
                    results.append(r)
                    log(f"{sc} raw       P={p}: {r['wall_s']:.2f}s wall, {r['client_cpu_s']:.2f}s psql CPU"
                        f"{noise_note(r)}")
            if sc == "many-small" and not args.no_profile and not args.wan_only:
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
    table, derived, md = render({**doc, "results": [r for r in results if not r.get("wan")]})
    wan_md = wan_table(results)
    if wan_md:
        md += "\n\n## WAN: the source behind a delaying proxy\n\n" + wan_md
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
