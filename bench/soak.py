#!/usr/bin/env python3
"""The soak run behind bench/soak.sh (run that: it installs and builds what this needs).

Starts the Daytona test double (without --any-sandbox, so unknown sandboxes are 404),
daytona-authz and Envoy on 127.0.0.1 with bench.py's Stack, runs the `soak` tool (load-tools/; an
open-loop driver with a mix of valid, invalid and cold requests, each checked against its
expected outcome) for SOAK_DURATION seconds at SOAK_RATE requests/s, samples daytona-authz's RSS
and CPU (and its /metrics) every 5 s meanwhile, and writes the figures into BENCHMARKS.md between
`<!-- soak:begin -->` and `<!-- soak:end -->` (appended at the end the first time; bench.py keeps
that section when it rewrites the file). Standard library only. Exit status 1 when the run failed
(a wrong decision, a 5xx, a transport error, API calls that do not add up, or RSS not flat); the
figures are written either way, marked FAIL.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (bench/bench.py: Procs, Stack, /proc helpers)
from bench import DOMAIN, REPO, RELEASE, Failed, http, status_kib, cpu_seconds  # noqa: E402

SAMPLE_EVERY = 5.0  # seconds between RSS/CPU/metrics samples
CACHE_TTL = 60  # daytona-authz's --cache-ttl (its default), seconds
# Flat RSS: the end within this share of the reference (1 minute in), or within FLAT_MIB (the
# allocator's resident memory moves in steps of 1-2 MiB as it keeps and returns pages).
FLAT_SHARE, FLAT_MIB = 0.10, 3.0


class SoakStack(bench.Stack):
    """bench.py's Stack, remembering Envoy's admin port (for its stats)."""

    def envoy_config(self, authz_port, limit):
        text, listener, admin = super().envoy_config(authz_port, limit)
        self.envoy_admin = admin
        return text, listener, admin


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def metrics(http_port):
    """daytona-authz's /metrics as {name: total over labels} plus {name{labels}: value}."""
    try:
        status, body = http(f"http://127.0.0.1:{http_port}/metrics", timeout=2.0)
    except OSError:
        return {}
    if status != 200:
        return {}
    out = {}
    for line in body.decode(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        name, labels = m.group(1), m.group(2) or ""
        if name.endswith("_bucket"):
            continue
        out[name + labels] = value
        if labels:
            out[name] = out.get(name, 0.0) + value
    return out


def envoy_stats(admin_port):
    wanted = ("ext_authz", "dns_cache.daytona_preview_dns", "downstream_rq_5xx",
              "downstream_rq_completed", "cluster.daytona_authz.upstream_rq_")
    try:
        status, body = http(f"http://127.0.0.1:{admin_port}/stats", timeout=2.0)
    except OSError:
        return {}
    out = {}
    for line in body.decode(errors="replace").splitlines():
        name, _, value = line.partition(": ")
        if any(w in name for w in wanted) and value.strip().isdigit():
            out[name] = int(value)
    return out


def sample(t, pids, http_port):
    s = {"t": round(t, 2)}
    for name, pid in pids.items():
        try:
            s[f"{name}_rss_kib"] = status_kib(pid, "VmRSS")
            s[f"{name}_cpu_s"] = cpu_seconds(pid)
            s[f"{name}_threads"] = status_kib(pid, "Threads")
        except OSError:
            s[f"{name}_rss_kib"] = None
            s[f"{name}_cpu_s"] = None
    m = metrics(http_port)
    s["cache_entries"] = m.get("daytona_authz_preview_cache_entries")
    s["api_calls"] = m.get("daytona_authz_daytona_api_calls_total")
    s["alive_tasks"] = m.get("daytona_authz_runtime_alive_tasks")
    return s


def slope_per_min(points):
    """Least-squares slope of (t seconds, MiB) in MiB per minute."""
    if len(points) < 2:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in points) / var * 60


def rss_summary(samples, duration):
    ref_t = min(60.0, 0.2 * duration)
    during = [s for s in samples if s.get("authz_rss_kib")]
    loaded = [s for s in during if s["t"] >= 0]
    ref = next((s for s in loaded if s["t"] >= ref_t), loaded[-1])
    end = loaded[-1]
    after = [s for s in loaded if s["t"] >= ref["t"]]
    mib = lambda s: s["authz_rss_kib"] / 1024  # noqa: E731
    growth = mib(end) - mib(ref)
    allowed = max(FLAT_SHARE * mib(ref), FLAT_MIB)
    return {
        "before_mib": mib(during[0]),
        "ref_t": ref["t"],
        "ref_mib": mib(ref),
        "end_t": end["t"],
        "end_mib": mib(end),
        "max_mib": max(mib(s) for s in loaded),
        "max_after_ref_mib": max(mib(s) for s in after),
        "min_after_ref_mib": min(mib(s) for s in after),
        "growth_mib": growth,
        "allowed_mib": allowed,
        "slope_mib_per_min": slope_per_min([(s["t"], mib(s)) for s in after]),
        "flat": growth <= allowed,
        "samples": len(loaded),
        "largest_step": max(
            ((mib(b) - mib(a), a["t"], b["t"]) for a, b in zip(loaded, loaded[1:])),
            default=(0.0, 0.0, 0.0)),
    }


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--envoy", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--results", default=str(REPO / ".run" / "soak-results.json"))
    parser.add_argument("--report-only", action="store_true",
                        help="re-render the section of --out from --results without measuring")
    args = parser.parse_args()
    if args.report_only:
        res = json.loads(Path(args.results).read_text())
        res["rss"] = rss_summary(res["samples"], res["cfg"]["duration"])
        write_section(args.out, section(res))
        return 0

    cfg = {
        "duration": float(os.environ.get("SOAK_DURATION", 300)),
        "rate": float(os.environ.get("SOAK_RATE", 200)),
        "cold_pool": int(os.environ.get("SOAK_COLD_POOL", 768)),
        "warm_sandboxes": int(os.environ.get("SOAK_WARM_SANDBOXES", 4)),
        "cache_ttl": CACHE_TTL,
        "sample_every": SAMPLE_EVERY,
    }
    cfg["bucket"] = 60.0 if cfg["duration"] >= 180 else max(5.0, round(cfg["duration"] / 6))
    shown = " ".join(f"{k}={os.environ[k]}" for k in ("SOAK_DURATION", "SOAK_RATE",
                                                       "SOAK_COLD_POOL", "SOAK_WARM_SANDBOXES")
                     if k in os.environ)
    cfg["command"] = f"{shown + ' ' if shown else ''}bench/soak.sh"
    run_dir = Path(args.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    args.run_dir = str(run_dir)
    procs = bench.Procs(run_dir)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    bench.die_with_parent()
    t0 = time.monotonic()

    def log(message):
        print(f"[{time.monotonic() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    res = {"cfg": cfg,
           "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")}
    try:
        res["machine"] = bench.machine_info()
        commit = bench.version(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
        # What the binaries are built from: uncommitted changes elsewhere (this harness, docs)
        # do not change what is measured.
        inputs = ["src", "proto", "build.rs", "Cargo.toml", "Cargo.lock"]
        dirty = (subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", *inputs])
                 .returncode != 0
                 or bool(subprocess.run(["git", "-C", str(REPO), "ls-files", "--others",
                                         "--exclude-standard", "--", *inputs],
                                        capture_output=True, text=True).stdout.strip()))
        res["versions"] = {
            "daytona-authz": f"{commit}{' + uncommitted changes to src/ or Cargo.*' if dirty else ''}"
                             " (release build)",
            "rustc": bench.version(["rustc", "--version"]),
            "Envoy": bench.version([args.envoy, "--version"], r"version: (\S+)"),
        }

        stack = SoakStack(args, procs)
        stack.start_double(any_sandbox=False)
        # (Stack adds --upstream-domain for the double's preview proxy.)
        authz = stack.start_authz("authz", [
            "--cache-ttl", f"{CACHE_TTL}s", "--revocation-db", str(run_dir / "revocations.redb")])
        http_port = int(re.search(r"--http-addr 127\.0\.0\.1:(\d+)", authz.argv_shown).group(1))
        envoy = stack.start_envoy("envoy", authz.grpc_port)
        token = stack.mint(stack.sandbox)
        bench.wait_until("a 200 through Envoy",
                         lambda: http(f"http://127.0.0.1:{envoy.port}/",
                                      {"Host": f"3000-{stack.sandbox}.{DOMAIN}",
                                       "Authorization": f"Bearer {token}"})[0] == 200)
        res["commands"] = {
            "double": "daytona-double --api-addr 127.0.0.1:0 --proxy-addr 127.0.0.1:0 "
                      "(no --any-sandbox: the driver creates its sandboxes, others are 404)",
            "authz": authz.argv_shown.replace(str(run_dir), "RUN_DIR"),
            "envoy": "envoy -c envoy.yaml (ports moved to loopback) --concurrency 2 "
                     "--disable-hot-restart",
        }
        driver_out = run_dir / "soak.json"
        argv = [RELEASE / "soak",
                "--envoy", f"http://127.0.0.1:{envoy.port}", "--double", stack.api_root,
                "--secret-file", stack.secret_file, "--domain", DOMAIN,
                "--rate", cfg["rate"], "--duration", cfg["duration"],
                "--warm-sandboxes", cfg["warm_sandboxes"], "--cold-pool", cfg["cold_pool"],
                "--cache-ttl", CACHE_TTL, "--bucket", cfg["bucket"], "--out", driver_out]
        res["commands"]["driver"] = " ".join(
            bench.shell_quote(a) for a in argv).replace(str(stack.secret_file), "SECRET_FILE")
        pids = {"authz": authz.pid, "envoy": envoy.pid, "double": stack.double.pid}
        samples = [sample(-1.0, pids, http_port)]  # idle, before the driver
        log(f"soak: {cfg['duration']:.0f} s at {cfg['rate']:.0f} req/s through Envoy "
            f"(authz RSS idle {samples[0]['authz_rss_kib'] / 1024:.1f} MiB)")
        driver = procs.start("driver", argv)
        driver_log = run_dir / "driver.log"
        shown_upto = 0
        started = time.monotonic()
        deadline = started + cfg["duration"] + 120
        next_at = started
        next_log = started + 30
        while True:
            samples.append(sample(time.monotonic() - started, pids, http_port))
            try:
                text = driver_log.read_text(errors="replace")
            except OSError:
                text = ""
            if len(text) > shown_upto:
                sys.stderr.write(text[shown_upto:])
                sys.stderr.flush()
                shown_upto = len(text)
            if driver.poll() is not None:
                break
            if time.monotonic() >= next_log:
                s = samples[-1]
                log(f"t={s['t']:.0f} s: authz RSS {s['authz_rss_kib'] / 1024:.1f} MiB, "
                    f"CPU {s['authz_cpu_s'] - samples[0]['authz_cpu_s']:.1f} s, cache entries "
                    f"{s['cache_entries']}, API calls {s['api_calls']}")
                next_log += 30
            if time.monotonic() > deadline:
                procs.stop(driver)
                raise Failed("the driver did not finish in time")
            next_at += SAMPLE_EVERY
            time.sleep(max(0.0, next_at - time.monotonic()))
        if driver.returncode not in (0, 1) or not driver_out.exists():
            raise Failed(f"the driver failed ({driver.returncode}):\n{procs.log_tail('driver')}")
        res["driver"] = json.loads(driver_out.read_text())
        res["driver_exit"] = driver.returncode
        res["samples"] = samples
        res["metrics_end"] = {k: v for k, v in metrics(http_port).items()
                              if k.startswith("daytona_authz_") and "duration" not in k}
        res["envoy_stats"] = envoy_stats(stack.envoy_admin)
        res["rss"] = rss_summary(samples, cfg["duration"])
        load = [s for s in samples if s["t"] >= 0]
        res["cpu"] = {name: (load[-1][f"{name}_cpu_s"] - samples[0][f"{name}_cpu_s"])
                      for name in pids}
        res["load_seconds"] = load[-1]["t"]
        res["machine"]["load_after"] = open("/proc/loadavg").read().split()[:3]
        res["authz_log"] = log_counts(run_dir / "authz.log")
        res["pass"] = bool(res["driver"]["pass"] and res["rss"]["flat"])
        res["elapsed_s"] = time.monotonic() - t0
        keep_logs(run_dir)
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(res, indent=1, default=str))
        write_section(args.out, section(res))
        r, d = res["rss"], res["driver"]
        log(f"{'PASS' if res['pass'] else 'FAIL'}: {d['sent']:,} requests, {d['wrong']} wrong, "
            f"{d['server_errors']} 5xx, {d['transport_errors']} transport errors, API calls "
            f"{'add up' if d['api']['ok'] else 'DO NOT add up'}; authz RSS {r['ref_mib']:.1f} MiB "
            f"at {r['ref_t']:.0f} s → {r['end_mib']:.1f} MiB at the end "
            f"({'flat' if r['flat'] else 'NOT flat'}); wrote {args.out}")
        return 0 if res["pass"] else 1
    except Failed as e:
        print(f"soak: {e}", file=sys.stderr)
        keep_logs(run_dir)
        return 2
    finally:
        procs.stop_all()


def log_counts(path):
    counts = {"WARN": 0, "ERROR": 0}
    first = {}
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = ansi.sub("", line)
                for level in counts:
                    if re.search(rf"\b{level}\b", line):
                        counts[level] += 1
                        first.setdefault(level, line.strip()[:300])
    except OSError:
        pass
    return {"counts": counts, "first": first}


def keep_logs(run_dir):
    """The processes' logs of the last run, for a look after the run directory is gone."""
    dest = REPO / ".run" / "soak-logs"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("authz.log", "envoy.log", "double.log", "driver.log", "soak.json"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, dest / name)


# --------------------------------------------------------------------------------------------
# BENCHMARKS.md
# --------------------------------------------------------------------------------------------


def write_section(path, text):
    """Replaces the section between the markers, or appends it at the end of the file."""
    try:
        old = Path(path).read_text()
    except OSError:
        old = ""
    start, end = old.find(bench.SOAK_BEGIN), old.find(bench.SOAK_END)
    if 0 <= start < end:
        new = old[:start] + text.strip("\n") + old[end + len(bench.SOAK_END):]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text.strip("\n") + "\n"
    Path(path).write_text(new)


def ms(v):
    return "–" if v is None else f"{v:.2f}"


def num(v):
    return "–" if v is None else f"{v:,.0f}"


def section(res):
    cfg, d, r, m = res["cfg"], res["driver"], res["rss"], res["machine"]
    out = []
    w = out.append
    verdict = "**PASS**" if res["pass"] else "**FAIL**"
    w(bench.SOAK_BEGIN)
    w("## Soak (issue #8)\n")
    w(f"Written by `bench/soak.sh` on {res['started']} UTC; re-run it rather than editing this "
      "section (it replaces only this section, and `bench/run.sh` keeps it). "
      f"{verdict}: {d['wrong']} wrong decisions, {d['server_errors']} 5xx, "
      f"{d['transport_errors']} transport errors, {d['not_sent']} requests not sent, Daytona API "
      f"calls {'as expected' if d['api']['ok'] else '**not as expected**'}, daytona-authz RSS "
      f"{'flat' if r['flat'] else '**not flat**'} ({r['ref_mib']:.1f} MiB at "
      f"{r['ref_t']:.0f} s, {r['end_mib']:.1f} MiB at the end).\n")
    w("```")
    w(cfg["command"])
    w("```\n")
    w(f"- Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}, Linux "
      f"{m['kernel']}; load average before {' / '.join(m['load_before'])}, after "
      f"{' / '.join(m.get('load_after', ['?']))}. Shared with other work; everything on "
      "127.0.0.1.")
    w("- Versions: " + "; ".join(f"{k} {v}" for k, v in res["versions"].items()) + ".")
    w(f"- Set-up: Envoy (`envoy/envoy.yaml`, ports moved to loopback, 2 workers) → daytona-authz "
      f"(`--cache-ttl {cfg['cache_ttl']}s`, the default; other settings default) → the Daytona "
      "double *without* `--any-sandbox` (only the sandboxes the driver created exist; any other "
      "id is 404).")
    w(f"- Load: `soak` (load-tools/), open loop: request *n* is due at start + *n* / rate whatever "
      "became of the earlier ones; HTTP/1.1 keep-alive; latency from the due time to the last "
      f"byte of the answer. {d['sent']:,} requests in {d['elapsed_s']:.1f} s "
      f"({d['achieved_rate']:.1f} req/s; target {cfg['rate']:.0f} for {cfg['duration']:.0f} s); "
      f"the driver was at most {d['max_lag_ms']:.1f} ms late sending, at most "
      f"{d['in_flight_max']} requests were in flight.")
    c = d["config"]
    w(f"- Sandboxes: {c['warm_sandboxes']} warm ones asked on ports "
      f"{' and '.join(str(p) for p in c['warm_ports'])}; a pool of {c['cold_pool']} cold ones "
      f"cycled (first pass: never seen by daytona-authz; later passes come back after "
      f"{c['cold_reuse_after_s']:.0f} s, when the {c['cache_ttl_s']:.0f} s cache entry has "
      "expired, so every cold request is a cache miss and one API call). The pool is bounded "
      "so that daytona-authz's cache and Envoy's DNS cache of preview hosts (at most 8,192, "
      "`max_hosts`, forgotten after 5 idle minutes) reach a steady size; unknown sandboxes are a fresh random id "
      "each time (they are denied before Envoy resolves anything). Every access token is "
      "minted for its request (random `jti`): daytona-authz never sees one token twice.\n")

    w("### Decisions by category\n")
    w("| category | request | expected | sent | answers | wrong | 5xx | transport errors | "
      "p50 ms | p99 ms | max ms |")
    w("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for x in d["categories"]:
        statuses = ", ".join(f"{n:,} × {s}" for s, n in x["statuses"].items()) or "–"
        w(f"| `{x['key']}` | {x['request']} | {x['expect']} | {x['sent']:,} | {statuses} | "
          f"{x['wrong']} | {x['server_errors']} | {x['transport_errors']} | {ms(x['p50_ms'])} | "
          f"{ms(x['p99_ms'])} | {ms(x['max_ms'])} |")
    a = d["all"]
    w(f"| **all** | | | **{d['sent']:,}** | {a['answered']:,} answered | **{d['wrong']}** | "
      f"**{d['server_errors']}** | **{d['transport_errors']}** | {ms(a['p50_ms'])} | "
      f"{ms(a['p99_ms'])} | {ms(a['max_ms'])} |")
    w("")
    w("\"wrong\" is any answer other than the expected one that is not a 5xx: another status, "
      "a 200 from the wrong sandbox or port or with the wrong path, a token or our cookie "
      "reaching the app, a 302 without the right `Location` or `HttpOnly` cookie.\n")
    if d["examples"]:
        w("First problems seen:\n")
        w("```")
        for e in d["examples"][:10]:
            w(f"{e['what']} {e['category']} #{e['seq']} at {e['at_s']:.1f} s, status "
              f"{e['status']}, host {e['host']}: {e['why'][:200]}")
        w("```\n")

    api = d["api"]
    w("### Daytona API calls (the double's counters, before and after)\n")
    w("| requests | API calls | expected |")
    w("|---|---:|---|")
    warm_total = sum(api["warm_calls"].values())
    met = lambda bad, what: "met" if not bad else f"**{bad} {what}**"  # noqa: E731
    w(f"| warm: {len(api['warm_calls'])} sandbox ports, all valid requests to them | "
      f"{warm_total} ({min(api['warm_calls'].values())}–{max(api['warm_calls'].values())} per "
      f"port) | at most {api['warm_max_allowed_per_key']} per port (one per cache lifetime); "
      f"{met(api['warm_keys_over'], 'over')} |")
    w(f"| cold: {api['cold_requests']:,} requests to {api['cold_distinct']:,} sandboxes | "
      f"{api['cold_calls']:,} | one per request; "
      f"{met(api['cold_mismatches'], 'sandboxes differ')} |")
    w(f"| unknown sandbox: {api['unknown_requests']:,} requests | {api['unknown_calls']:,} | "
      f"one each (404s are not cached); "
      f"{met(api['unknown_mismatches'], 'differ')} |")
    w(f"| everything else (denied before the cache: 401, 403, 400) | {api['unexpected_calls']} | "
      f"none; {'met' if api['unexpected_calls'] == 0 else '**not met**'} |")
    w(f"| **total** | **{api['total_calls']:,}** | |")
    w("")

    w(f"### Over time (rows of {cfg['bucket']:.0f} s; RSS, cache entries and API calls as "
      "sampled at the row's end)\n")
    w("| from s | to s | requests | wrong | 5xx | p50 ms | p99 ms | max ms | authz RSS MiB | "
      "authz threads | authz CPU % of a core | cache entries | API calls so far |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    samples = [s for s in res["samples"] if s["t"] >= 0]
    prev = res["samples"][0]
    for b in d["buckets"]:
        s = next((x for x in samples if x["t"] >= b["to_s"]), samples[-1])
        cpu = (s["authz_cpu_s"] - prev["authz_cpu_s"]) / max(1e-9, s["t"] - max(0.0, prev["t"]))
        prev = s
        w(f"| {b['from_s']:.0f} | {b['to_s']:.0f} | {b['sent']:,} | {b['wrong']} | "
          f"{b['server_errors']} | {ms(b['p50_ms'])} | {ms(b['p99_ms'])} | {ms(b['max_ms'])} | "
          f"{s['authz_rss_kib'] / 1024:.1f} | {num(s.get('authz_threads'))} | {cpu * 100:.1f} | "
          f"{num(s['cache_entries'])} | "
          f"{num(s['api_calls'])} |")
    w("")

    w(f"### daytona-authz memory (VmRSS every {cfg['sample_every']:.0f} s, {r['samples']} "
      "samples under load)\n")
    slope = r["slope_mib_per_min"]
    w("| | MiB |")
    w("|---|---:|")
    w(f"| idle, before the load | {r['before_mib']:.1f} |")
    w(f"| at {r['ref_t']:.0f} s (reference) | **{r['ref_mib']:.1f}** |")
    w(f"| at the end ({r['end_t']:.0f} s) | **{r['end_mib']:.1f}** |")
    w(f"| max under load | {r['max_mib']:.1f} |")
    w(f"| range after the reference | {r['min_after_ref_mib']:.1f} – {r['max_after_ref_mib']:.1f} |")
    w(f"| end − reference | {r['growth_mib']:+.2f} |")
    w(f"| least-squares slope after the reference | "
      f"{'–' if slope is None else f'{slope:+.3f} MiB/min ({slope * 60:+.1f} MiB/h)'} |")
    step, step_from, step_to = r["largest_step"]
    w(f"| largest rise between two samples | {step:+.2f} ({step_from:.0f} → {step_to:.0f} s) |")
    at = lambda when: next((x for x in res["samples"] if x["t"] >= when), res["samples"][-1])  # noqa: E731
    threads = [at(when).get("authz_threads") for when in (-1, r["ref_t"], r["end_t"])]
    if None not in threads:
        w(f"| (threads of daytona-authz: idle / reference / end) | "
          f"{' / '.join(str(x) for x in threads)} |")
    w("")
    w(f"Flat means end − reference ≤ max({FLAT_SHARE:.0%} of the reference, {FLAT_MIB:.0f} MiB) "
      f"= {r['allowed_mib']:.2f} MiB: **{'met' if r['flat'] else 'not met'}**. The reference is "
      "taken 1 minute in (a fifth of the run if shorter), after start-up allocations (connections, "
      "buffers, the allocator's first pages). The preview cache checks its TTL on read and keeps "
      "an expired entry until that key is asked for again or `--cache-max-entries` evicts it, so "
      "its size is the number of distinct sandbox ports seen, bounded here by the cold pool "
      f"({num(res['metrics_end'].get('daytona_authz_preview_cache_entries'))} entries at the end: "
      "the pool, the warm ports and the readiness check's); 404s and denials add none. A flat "
      "RSS therefore means no per-request growth; growth per cached sandbox is what section 6 "
      "measures. The allocator's resident memory moves in steps of 1–2 MiB as it keeps and "
      "returns pages (and when a thread comes and goes: daytona-authz prunes expired "
      "revocations every 5 minutes on a blocking thread), hence the few MiB allowed; a leak "
      "shows as growth that goes on, in the slope and the table above.\n")
    load_s = res["load_seconds"] or 1
    cpu_line = ", ".join(f"{name} {s:.1f} CPU-s ({s / load_s * 100:.1f} % of a core)"
                         for name, s in res["cpu"].items())
    w(f"CPU over the load: {cpu_line}; daytona-authz "
      f"{res['cpu']['authz'] / max(1, d['sent']) * 1e6:.0f} µs per request (all categories, "
      "cold misses and the API calls' client side included). At this rate nearly every `Check` "
      "arrives alone and wakes an idle runtime, so this is mostly wake-up cost, not comparable "
      "with the closed-loop µs per `Check` above.\n")

    me = res["metrics_end"]
    w("### daytona-authz `/metrics` at the end\n")
    w("| metric | value |")
    w("|---|---:|")
    for key in sorted(me):
        if key.startswith(("daytona_authz_decisions_total{", "daytona_authz_daytona_api_calls_total{")):
            w(f"| `{key}` | {num(me[key])} |")
    for key in ("daytona_authz_preview_cache_hits_total", "daytona_authz_preview_cache_misses_total",
                "daytona_authz_preview_cache_entries", "daytona_authz_daytona_api_lookups_in_flight",
                "daytona_authz_runtime_alive_tasks"):
        if key in me:
            w(f"| `{key}` | {num(me[key])} |")
    w("")
    es = res["envoy_stats"]

    def pick(pattern):
        return next((v for k, v in es.items() if re.search(pattern, k)), None)

    authz_stat = lambda name: num(pick(rf"^http\.public\.ext_authz\.(?:[^.]+\.)?{name}$"))  # noqa: E731
    rq_5xx = num(pick(r"^http\.public\.downstream_rq_5xx$"))
    rq_all = num(pick(r"^http\.public\.downstream_rq_completed$"))
    dns_hosts = num(pick(r"dns_cache\.daytona_preview_dns\.num_hosts$"))
    dns_overflow = num(pick(r"dns_cache\.daytona_preview_dns\.host_overflow$"))
    w(f"Envoy: ext_authz ok {authz_stat('ok')}, denied {authz_stat('denied')}, "
      f"error {authz_stat('error')}, failure-mode-allowed "
      f"{authz_stat('failure_mode_allowed')}; 5xx answered on the listener {rq_5xx} of "
      f"{rq_all} requests (the readiness request included); preview hosts in its DNS cache at "
      f"the end {dns_hosts}, overflows {dns_overflow}; RSS "
      f"{samples[0]['envoy_rss_kib'] / 1024:.1f} → {samples[-1]['envoy_rss_kib'] / 1024:.1f} MiB. "
      f"daytona-authz's log: {res['authz_log']['counts']['WARN']} WARN and "
      f"{res['authz_log']['counts']['ERROR']} ERROR lines (denials are logged at INFO).\n")
    w("Command lines (ports picked free per run):\n")
    w("```")
    for name, command in res["commands"].items():
        command = re.sub(r"(?:\S*/)?\.run/soak-\d+", "RUN_DIR", command.replace(f"{REPO}/", ""))
        w(f"{name}: {command}")
    w("```")
    w(bench.SOAK_END)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
