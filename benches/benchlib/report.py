"""Results: the best of the repeats per cell, derived ratios, and the
markdown report (also re-rendered from results.json by --report)."""

import statistics


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
            if not hf:
                continue
            if not raw:
                # --no-raw: the raw columns stay empty
                raw = {k: None for k in ("wall_s", "client_cpu_s", "source_server_cpu_s",
                                         "target_server_cpu_s", "other_cpu_s")}
            f = facts[sc]
            row = {"scenario": sc, "p": p, "repeats": len(runs("hyperfill"))}
            row["hf_s"] = hf["wall_s"]
            row["raw_s"] = raw["wall_s"]
            net = (None if raw["wall_s"] is None
                   else raw["wall_s"] - f["raw_relation_count"] * startup[sc][p]["wall_per_pipe_s"])
            # When start-up is nearly all of the raw time, the difference is noise.
            row["raw_net_s"] = net if net is not None and net >= 0.1 * raw["wall_s"] else None
            row["ratio_net"] = None if row["raw_net_s"] is None else row["raw_net_s"] / row["hf_s"]
            row["ratio_gross"] = None if row["raw_s"] is None else row["raw_s"] / row["hf_s"]
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
            per_pipe = startup.get(sc, {}).get(p, {}).get("total_cpu_per_pipe_s")
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
        if e and h and e["raw_s"] and h["raw_s"]:
            derived["one_huge_vs_even"].append({
                "p": p, "hyperfill": h["hf_s"] / e["hf_s"], "raw": h["raw_s"] / e["raw_s"],
                "raw_net": (h["raw_net_s"] / e["raw_net_s"]
                            if h["raw_net_s"] is not None and e["raw_net_s"] is not None else None),
                **{t: h[f"{t}_s"] / e[f"{t}_s"] for t, _ in others if f"{t}_s" in h and f"{t}_s" in e}})
        if e and m and e["raw_s"] and m["raw_s"]:
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


def render(doc):
    facts, startup = doc["datasets"], {k: {int(p): v for p, v in d.items()} for k, d in doc["startup"].items()}
    meta = doc["meta"]
    others = extra_tools(meta)
    table, derived = summarise(doc["results"], facts, startup, meta["scenarios"], meta["parallelism"], others)
    return table, derived, markdown(meta, facts, startup, table, derived, doc.get("profile"), others)
