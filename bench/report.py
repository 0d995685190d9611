#!/usr/bin/env python3
"""Turns bench/run's raw measurements into the Markdown table (and a JSON summary).

Usage: report.py RAW_DIR OUT.md OUT.json
"""

import csv
import json
import random
import statistics
import sys

LISTENERS = ["plain", "passthrough", "capture", "tap"]
LABEL = {
    "plain": "plain Envoy (no filter)",
    "passthrough": "do-nothing wasm (passthrough build)",
    "capture": "TruthTable capture + delivery",
    "tap": "envoy.filters.http.tap (file per exchange)",
    "copy_only": "copy-only build (headers, bodies, details through the ABI; no record, no delivery)",
    "record_only": "record-only build (copies + framed records written, then discarded; no delivery)",
    "raw_abi": "capture + delivery, raw-ABI build of 516b67f (before the proxy-wasm SDK)",
    "framed": "TruthTable capture + delivery, delivery_format framed",
    "sdk_maps": "capture + delivery, header maps read with the SDK's get_map_bytes",
    "no_timing": "capture + delivery, built without response chunk times (no-chunk-timing)",
    "direct": "no Envoy (client -> upstream)",
}
WORKLOAD = {"json": "1 KiB POST / 1 KiB JSON", "json32k": "32 KiB POST (RAG prompt) / 1 KiB JSON",
            "64k": "GET 64 KiB", "sse": "GET SSE 50 events"}


def interval(values, resamples=2000):
    """A 95% bootstrap interval of the median of `values` (the rounds resampled; fixed seed)."""
    rng = random.Random(1)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    raw, out_md, out_json = sys.argv[1:4]
    facts = json.load(open(f"{raw}/facts.json"))
    rows = list(csv.DictReader(open(f"{raw}/throughput.csv")))
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    summary = {"facts": facts, "throughput": {}, "latency": [], "ttfe": {}, "memory": [],
               "delivery": {}}
    md = []
    md.append(f"# TruthTable benchmark results ({facts['date']})\n")
    md.append(
        f"Machine: {facts['nproc']} CPUs ({facts['cpu']}), kernel {facts['kernel']}. "
        f"Envoy {facts['envoy']} (`--concurrency 1`), nginx {facts['nginx']} upstream, wrk {facts['wrk']}, "
        f"oha {facts['oha']}. Filter commit `{facts['commit']}` (capture wasm sha256 "
        f"`{facts['capture_wasm_sha256']}`, passthrough `{facts['passthrough_wasm_sha256']}`). "
        + ("Envoy pinned alone to CPU 1, load tools and upstreams to CPU 0 (BENCH_PIN=1).\n"
           if facts.get("pinned") else "Processes not pinned (the OS schedules Envoy, nginx and the load tool on the 2 CPUs).\n"))

    # Throughput.
    md.append(f"## Throughput (wrk -t1 -c{facts['connections']} -d{facts['duration']}, "
              f"{facts['rounds']} alternating rounds, median req/s, ratio to plain Envoy)\n")
    head = "| listener | " + " | ".join(
        f"{WORKLOAD[w]} req/s | x plain | per-round x plain | Envoy CPU µs/req" for w in workloads) + " |"
    md.append(head)
    md.append("|---" * (1 + 4 * len(workloads)) + "|")
    listeners = [l for l in LISTENERS + ["framed", "raw_abi", "sdk_maps", "copy_only", "record_only",
                                           "no_timing"]
                 if any(r["listener"] == l for r in rows)]
    med = {}
    for w in workloads:
        for l in listeners:
            sel = [r for r in rows if r["workload"] == w and r["listener"] == l]
            if not sel:
                continue
            rps = [float(r["rps"]) for r in sel]
            med[(w, l)] = {
                "median_rps": statistics.median(rps), "min_rps": min(rps), "max_rps": max(rps),
                "cpu_us_per_req": statistics.median(float(r["envoy_cpu_us_per_req"]) for r in sel),
                "errors": sum(int(r["errors"]) for r in sel),
                "requests": sum(int(r["requests"]) for r in sel),
            }
        plain_by_round = {r["round"]: float(r["rps"]) for r in rows
                          if r["workload"] == w and r["listener"] == "plain"}
        for l in listeners:
            if (w, l) in med:
                med[(w, l)]["ratio"] = med[(w, l)]["median_rps"] / med[(w, "plain")]["median_rps"]
                paired = [float(r["rps"]) / plain_by_round[r["round"]] for r in rows
                          if r["workload"] == w and r["listener"] == l and r["round"] in plain_by_round]
                med[(w, l)]["paired_ratios"] = paired
                med[(w, l)]["paired_ratio_median"] = statistics.median(paired)
                med[(w, l)]["cpu_ratio"] = (med[(w, "plain")]["cpu_us_per_req"]
                                            / med[(w, l)]["cpu_us_per_req"])
                summary["throughput"].setdefault(w, {})[l] = med[(w, l)]
    for l in listeners:
        cells = []
        for w in workloads:
            m = med.get((w, l))
            if m is None:
                cells.append("– | – | – | –")
                continue
            err = f" ({m['errors']} errors)" if m["errors"] else ""
            cells.append(f"{m['median_rps']:.0f} ({m['min_rps']:.0f}–{m['max_rps']:.0f}){err} | "
                         f"**{m['ratio']:.2f}** | {m['paired_ratio_median']:.2f} "
                         f"({min(m['paired_ratios']):.2f}–{max(m['paired_ratios']):.2f}) | "
                         f"{m['cpu_us_per_req']:.0f}")
        md.append(f"| {LABEL[l]} | " + " | ".join(cells) + " |")
    md.append("\n(x plain: ratio of the median req/s. Per-round x plain: the median (min–max) of "
              "the ratios to plain Envoy within each round — paired, so less sensitive to drift "
              "between rounds.)")
    md.append("\n(min–max over the rounds in brackets. Envoy CPU µs/req: Envoy's user+system CPU "
              "time during the run divided by the requests served — one worker, so the filter's "
              "cost shows here even when the shared 2 cores blur req/s.)\n")

    # Latency.
    lat = [json.loads(x) for x in open(f"{raw}/latency.jsonl") if x.strip()]
    summary["latency"] = lat
    if lat:
        md.append(f"## Latency at a fixed rate (oha -q RATE -c {facts['connections']} "
                  f"-z {facts['latency_duration']} --latency-correction)\n")
        md.append("| workload | rate req/s | listener | achieved req/s | p50 ms | p90 ms | p99 ms | non-2xx/errors |")
        md.append("|---|---|---|---|---|---|---|---|")
        for d in lat:
            md.append(f"| {WORKLOAD[d['workload']]} | {d['rate']} | {LABEL[d['listener']]} | "
                      f"{d['achieved_rps']:.0f} | {d['p50_ms']:.2f} | {d['p90_ms']:.2f} | "
                      f"{d['p99_ms']:.2f} | {d['not_ok'] + d['errors']} |")
        md.append("\n(The rate is half the slowest median of plain/passthrough/capture for that "
                  "workload unless BENCH_RATE is set; the tap filter may not sustain it — then its "
                  "achieved req/s is below the rate and its latency is queueing.)\n")

    # TTFE.
    ttfe = json.load(open(f"{raw}/ttfe.json"))
    if ttfe:
        md.append(f"## Time to the first SSE event ({facts['ttfe_requests']} streams per listener, "
                  f"50 events {facts['sse_delay_ms']} ms apart from a paced upstream, keep-alive, "
                  f"listeners in turn)\n")
        md.append("| listener | median ms | p90 ms | added vs plain (median) ms | median whole stream ms |")
        md.append("|---|---|---|---|---|")
        base = statistics.median(ttfe["plain"]["first_ms"])
        for l, d in ttfe.items():
            m = statistics.median(d["first_ms"])
            summary["ttfe"][l] = {"median_ms": m, "p90_ms": pct(d["first_ms"], 0.9),
                                  "added_vs_plain_ms": m - base,
                                  "median_total_ms": statistics.median(d["total_ms"])}
            added = "–" if l in ("plain", "direct") else f"{m - base:+.3f}"
            md.append(f"| {LABEL[l]} | {m:.3f} | {pct(d['first_ms'], 0.9):.3f} | {added} | "
                      f"{statistics.median(d['total_ms']):.1f} |")
        md.append("")

    # Memory.
    mem = [json.loads(x) for x in open(f"{raw}/memory.jsonl") if x.strip()]
    summary["memory"] = mem
    if mem:
        md.append(f"## Envoy resident memory, {facts['mem_downloads']} concurrent 4 MiB downloads "
                  f"× {facts['mem_waves']} waves (fresh Envoy per listener; VmRSS)\n")
        md.append("| listener | before MiB | peak MiB | after each wave MiB | 3 s after MiB | downloads 2xx | capture metrics |")
        md.append("|---|---|---|---|---|---|---|")
        for d in mem:
            mm = d["metrics"]
            metr = ", ".join(f"{k.replace('truthtable_', '')}={v}" for k, v in sorted(mm.items())
                             if k in ("truthtable_records_captured", "truthtable_records_delivered",
                                      "truthtable_records_without_bodies", "truthtable_records_dropped",
                                      "truthtable_body_bytes_truncated")
                             ) if d["listener"] == "capture" else ""
            md.append(f"| {LABEL[d['listener']]} | {d['before_kib'] / 1024:.0f} | {d['peak_kib'] / 1024:.0f} | "
                      f"{' / '.join(f'{x / 1024:.0f}' for x in d['after_each_wave_kib'])} | "
                      f"{d['after_kib'] / 1024:.0f} | {d['downloads_2xx']} | {metr} |")
        md.append("")

    # Delivery proof.
    deliv = {}
    for line in open(f"{raw}/delivery.txt"):
        parts = line.split()
        if len(parts) >= 2:
            deliv[parts[0]] = parts[-1]
    summary["delivery"] = deliv
    md.append("## Captures delivered (after the throughput, latency and SSE phases)\n")
    md.append("| what | count |")
    md.append("|---|---|")
    for k, v in deliv.items():
        md.append(f"| `{k}` | {v} |")
    md.append("")

    # Where the time goes.
    import glob
    runs = sorted(glob.glob(f"{raw}/perf-run-*.json"))
    if runs:
        md.append("## Where Envoy's CPU goes (perf, cpu-clock samples of the Envoy process during a 5 s wrk run)\n")
        md.append("| workload | listener | req/s | Envoy CPU µs/req | Envoy binary (incl. V8 runtime, ABI host side) µs | wasm code (V8 JIT) µs | kernel µs | libc & other µs |")
        md.append("|---|---|---|---|---|---|---|---|")
        perf = []
        for f in runs:
            d = json.load(open(f))
            w, l = d["workload"], d["listener"]
            us = d["ticks"] / d["clk_tck"] * 1e6 / max(d["wrk"]["requests"], 1)
            share = {"envoy": 0.0, "jit": 0.0, "kernel": 0.0, "other": 0.0}
            for line in open(f"{raw}/perf-dso-{w}-{l}.txt"):
                parts = line.split(None, 1)
                if len(parts) < 2 or not parts[0].endswith("%"):
                    continue
                frac, dso = float(parts[0][:-1]) / 100, parts[1].strip()
                key = ("envoy" if dso == "envoy" else "jit" if dso.startswith("[JIT]")
                       else "kernel" if dso.startswith("[kernel") else "other")
                share[key] += frac
            row = {"workload": w, "listener": l, "rps": d["wrk"]["rps"], "cpu_us_per_req": us,
                   **{f"{k}_us": v * us for k, v in share.items()}}
            perf.append(row)
        order = {l: i for i, l in enumerate(["plain", "passthrough", "copy_only", "record_only", "capture", "framed", "tap"])}
        workloads_order = {w: i for i, w in enumerate(WORKLOAD)}
        perf.sort(key=lambda r: (workloads_order.get(r["workload"], 9), order.get(r["listener"], 9)))
        for r in perf:
            md.append(f"| {WORKLOAD[r['workload']]} | {LABEL[r['listener']]} | {r['rps']:.0f} | "
                      f"{r['cpu_us_per_req']:.0f} | {r['envoy_us']:.0f} | {r['jit_us']:.1f} | "
                      f"{r['kernel_us']:.0f} | {r['other_us']:.0f} |")
        md.append("\n(The Envoy binary is stripped, so its share cannot be split by symbol here; "
                  "raw `perf report` excerpts are in `raw/perf-sym-*.txt`.)\n")
        summary["perf"] = perf

    # The bar: the SDK build against the raw-ABI build, in points of plain Envoy, paired per round.
    md.append("## Against the bar\n")
    for w in ("json", "64k"):
        t = summary["throughput"].get(w, {})
        if "capture" not in t or "raw_abi" not in t:
            continue
        by_round = {}
        for r in rows:
            if r["workload"] == w and r["listener"] in ("plain", "capture", "raw_abi"):
                by_round.setdefault(r["round"], {})[r["listener"]] = float(r["rps"])
        points = [100 * (d["raw_abi"] - d["capture"]) / d["plain"] for d in by_round.values()
                  if len(d) == 3]
        cost = statistics.median(points)
        summary["throughput"][w]["sdk_cost_points"] = {"median": cost, "per_round": points}
        lo, hi = interval(points)
        verdict = "met" if hi <= 3 else "NOT met" if lo > 3 else "not resolved"
        md.append(f"- {WORKLOAD[w]}: the SDK build keeps **{t['capture']['paired_ratio_median']:.3f}** "
                  f"of plain Envoy, the raw-ABI build {t['raw_abi']['paired_ratio_median']:.3f} "
                  f"(paired medians); the SDK costs **{cost:+.1f} points** of plain "
                  f"(95% interval of the median {lo:+.1f} to {hi:+.1f}; per round {min(points):+.1f} "
                  f"to {max(points):+.1f}; bar: at most 3) — {verdict}.")
    # The framing's bar: capture against the copy-only floor, paired per round.
    def paired(w, a, b):
        by_round = {}
        for r in rows:
            if r["workload"] == w and r["listener"] in (a, b):
                by_round.setdefault(r["round"], {})[r["listener"]] = float(r["rps"])
        ratios = [d[a] / d[b] for d in by_round.values() if len(d) == 2]
        if not ratios:
            return None
        return (statistics.median(ratios), min(ratios), max(ratios), *interval(ratios))
    for w, bar in (("json", 0.97), ("json32k", 0.90)):
        framed = paired(w, "framed", "copy_only")
        ndjson = paired(w, "capture", "copy_only")
        if framed is None:
            continue
        summary["throughput"][w]["framed_vs_copy_only"] = framed[0]
        if ndjson:
            summary["throughput"][w]["ndjson_vs_copy_only"] = ndjson[0]
        verdict = "met" if framed[3] >= bar else "NOT met" if framed[4] < bar else "not resolved"
        md.append(f"- {WORKLOAD[w]}: framed capture keeps **{framed[0]:.3f}** of the copy-only floor "
                  f"(95% interval of the median {framed[3]:.3f}–{framed[4]:.3f}; per round "
                  f"{framed[1]:.3f}–{framed[2]:.3f}; bar: at least {bar}) — {verdict}"
                  + (f"; NDJSON capture {ndjson[0]:.3f}." if ndjson else "."))
    maps = paired("json", "capture", "sdk_maps")
    if maps:
        summary["throughput"]["json"]["own_import_vs_sdk_maps"] = maps[0]
        md.append(f"- header maps through the filter's own import instead of the SDK's get_map_bytes: "
                  f"**{maps[0]:.3f}×** the throughput (95% interval of the median {maps[3]:.3f}–"
                  f"{maps[4]:.3f}; per round {maps[1]:.3f}–{maps[2]:.3f}).")
    for w in ("sse", "64k"):
        timing = paired(w, "capture", "no_timing")
        if timing:
            summary["throughput"][w]["chunk_timing_vs_none"] = timing[0]
            md.append(f"- {WORKLOAD[w]}: capture with response chunk times keeps **{timing[0]:.3f}×** "
                      f"the throughput of the same build without them (95% interval of the median "
                      f"{timing[3]:.3f}–{timing[4]:.3f}; per round {timing[1]:.3f}–{timing[2]:.3f}).")
    t = summary["throughput"].get("json", {})
    if "passthrough" in t and "tap" in t:
        md.append(f"- do-nothing wasm (1 KiB): {t['passthrough']['ratio']:.2f}; tap: {t['tap']['ratio']:.2f}.")
    if "capture" in summary["ttfe"]:
        a = summary["ttfe"]["capture"]["added_vs_plain_ms"]
        md.append(f"- added time to first SSE event (capture vs plain, medians): **{a:+.3f} ms** "
                  f"(bar: under 1 ms) — {'met' if a < 1 else 'NOT met'}.")
    for d in mem:
        if d["listener"] == "capture":
            w = d["after_each_wave_kib"]
            growth = (w[-1] - w[0]) / 1024 if len(w) > 1 else 0.0
            md.append(f"- capture listener memory: peak {d['peak_kib'] / 1024:.0f} MiB, "
                      f"after-wave RSS change from wave 1 to wave {len(w)}: {growth:+.0f} MiB.")
    md.append("")

    open(out_md, "w").write("\n".join(md))
    json.dump(summary, open(out_json, "w"), indent=1)


if __name__ == "__main__":
    main()
