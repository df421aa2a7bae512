"""Measured runs: hyperfill (and the optional other binaries), the raw
psql | psql pipes and their start-up cost, with wall time, client CPU and peak
RSS (/usr/bin/time) and server and machine CPU (/proc)."""

import os
import subprocess
import tempfile
import time

from .common import HERE, die, log
from .datasets import MS_FILTER, TS_FILTER, UNTIL_MS, UNTIL_TS, row_counts
from .profile import analyse_statement_log
from .servers import stat_fields
from .targets import reset_target, settle


CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_cpu_ticks(postmaster):
    """CPU ticks of a server: the postmaster, its exited (reaped) children and
    its live children.  A child that exits between two samples moves from the
    live sum into cutime/cstime, so differences are exact."""
    if postmaster is None:
        return None
    try:
        with open(f"/proc/{postmaster}/stat") as f:
            fs = stat_fields(f.read())
        total = sum(int(x) for x in fs[11:15])  # utime stime cutime cstime
    except OSError:
        return None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fs = stat_fields(f.read())
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

    def tool_run(self, tool, binary, scenario, src_db, tgt_db, p, rep, source_url=None, tag_extra=None):
        """stage (timed apart) + copy under /usr/bin/time, for hyperfill or
        timescaledb-backfill (same command line).  p = "auto": no
        --parallelism.  source_url: the copy reads the source there (the WAN
        proxy); stage always reads it directly."""
        s_url, t_url = self.src.url(src_db), self.tgt.url(tgt_db)
        reset_target(self.tgt, tgt_db)
        tag = f"{scenario}-{tool}-p{p}-r{rep}" + (f"-{tag_extra}" if tag_extra else "")
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
        cmd = [binary, "copy", "--source", source_url or s_url, "--target", t_url]
        if str(p) != "auto":
            cmd += ["--parallelism", str(p)]
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
               "client_cpu_s": cpu, "client_rss_kib": rss, "stage_s": stage_s, "copy_log": lf.name, **srv}
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
