#!/usr/bin/env python3
"""The benchmark behind bench/run.sh (run that: it installs and builds what this needs).

Starts the Daytona test double, daytona-authz and Envoy (and the official proxy samples) on
127.0.0.1, runs every scenario of the benchmark for a fixed time after a warm-up, and writes
BENCHMARKS.md. Standard library only. Every process it starts is stopped when it ends, however it
ends; their ids are also listed in RUN_DIR/pids for run.sh's backstop.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# BENCH_BIN_DIR: binaries from another build (e.g. a scratch copy with a change to compare).
RELEASE = Path(os.environ.get("BENCH_BIN_DIR", REPO / "target" / "release")).resolve()
DOMAIN = "preview.localhost"  # daytona-authz's --preview-domain
PORT = 3000  # the sandbox port every scenario asks for
API_KEY = "bench-organization-api-key"
COOKIE = "daytona_authz"
SAMPLES_DEFAULT = REPO.parent / "shared" / "peers" / "daytona-proxy-samples"

# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class Failed(Exception):
    pass


class Procs:
    """Every child process, stopped on exit."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.children = []

    def start(self, name, argv, env=None, cwd=None, stdout=None):
        log = open(self.run_dir / f"{name}.log", "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            env=full_env,
            cwd=cwd,
        )
        proc.bench_name = name
        self.children.append(proc)
        with open(self.run_dir / "pids", "a") as f:
            f.write(f"{proc.pid}\n")
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self):
        for proc in reversed(self.children):
            try:
                self.stop(proc)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass

    def log_tail(self, name, lines=20):
        try:
            text = (self.run_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def wait_until(what, probe, proc=None, procs=None, timeout=60.0):
    """Polls `probe` until it returns something truthy (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except Exception:  # noqa: BLE001 - not up yet
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = procs.log_tail(proc.bench_name) if procs else ""
            raise Failed(f"{what}: the process exited ({proc.returncode})\n{tail}")
        if time.monotonic() > deadline:
            tail = procs.log_tail(proc.bench_name) if procs and proc else ""
            raise Failed(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.05)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, headers=None, data=None, timeout=5.0):
    """(status, body) of one request; the Host header may be overridden."""
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def closes_connections(port, headers):
    """Whether a server answers a keep-alive HTTP/1.1 request with `Connection: close` (urllib
    cannot tell: it asks for close itself)."""
    connection = HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/", headers=dict(headers))
        response = connection.getresponse()
        response.read()
        return (response.getheader("connection") or "").lower() == "close"
    finally:
        connection.close()


def run(argv, **kw):
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True, **kw)


def version(argv, pattern=None):
    try:
        out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=30)
        text = (out.stdout + out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return "not available"
    if pattern:
        m = re.search(pattern, text)
        return m.group(1) if m else text.splitlines()[0]
    return text.splitlines()[0] if text else "?"


# --------------------------------------------------------------------------------------------
# /proc: CPU time and memory of a process, CPU of the whole machine
# --------------------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def reset_peak_rss(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine_busy_seconds():
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICK


class Window:
    """CPU seconds of some processes (and of the whole machine) over a measured window."""

    def __init__(self, pids):
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.machine_before = machine_busy_seconds()
        self.wall_before = time.monotonic()

    def close(self):
        cpu = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        return cpu, machine_busy_seconds() - self.machine_before, time.monotonic() - self.wall_before


# --------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------


def header_args(headers, h2load=False):
    out = []
    for name, value in headers:
        if h2load and name.lower() == "host":
            name = ":authority"  # h2load sends the URI's authority otherwise (as Host on HTTP/1.1)
        out += ["-H", f"{name}: {value}"]
    return out


def wait_child(proc):
    """Waits for a child; returns its CPU seconds (user + system) from its rusage."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def wrk(url, headers, seconds, connections, log_dir, name, threads=1):
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
            "-s", REPO / "bench" / "wrk-report.lua", *header_args(headers), url]
    out_path = log_dir / f"{name}.wrk.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT)
        cpu = wait_child(proc)
    text = out_path.read_text()
    line = next((l for l in text.splitlines() if l.startswith('{"requests"')), None)
    if proc.returncode != 0 or line is None:
        raise Failed(f"wrk failed ({proc.returncode}):\n{text}")
    result = json.loads(line)
    result["loadgen_cpu_s"] = cpu
    result["command"] = " ".join(shell_quote(a) for a in argv)
    return result


def shell_quote(arg):
    arg = str(arg)
    if re.fullmatch(r"[A-Za-z0-9_./:=@,+-]+", arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


def redact(command, secrets):
    for secret in secrets:
        if secret:
            command = command.replace(secret, secret[:12] + "…")
    return command


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-p / 100.0 * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def fixed_rate(url, headers, rate, seconds, warmup, log_path):
    """One fixed-rate h2load run (10 HTTP/1.1 clients, each at rate / 10), its per-request log
    read back; the latencies are kept (`_latencies`) so that windows can be merged."""
    clients = 10
    argv = ["h2load", "--h1", "-c", clients, "--rps", max(1, rate // clients),
            "-D", seconds, "--warm-up-time", warmup, "--log-file", log_path,
            *header_args(headers, h2load=True), url]
    started = time.time()
    try:
        out = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=seconds + warmup + 30)
    except subprocess.TimeoutExpired as e:
        raise Failed(f"h2load did not finish: {' '.join(map(str, argv))}") from e
    if out.returncode != 0:
        raise Failed(f"h2load failed ({out.returncode}):\n{out.stdout}")
    return h2load_log(log_path, argv, seconds, started + warmup)


def merge_windows(windows):
    """Fixed-rate windows of one target as one: percentiles over all their requests, and each
    window's p99 (to show how much it moves between windows)."""
    latencies = sorted(x for w in windows for x in w.pop("_latencies"))
    seconds = sum(w["seconds"] for w in windows)
    return {
        "requests": len(latencies), "seconds": seconds,
        "rps": len(latencies) / seconds if seconds else 0,
        "errors": sum(w["errors"] for w in windows),
        **latency_figures(latencies),
        "p99_ms_windows": [w["p99_ms"] for w in windows],
        "command": windows[0]["command"],
    }


def h2load_log(log_path, argv, seconds, measured_from):
    # Requests started before the warm-up ended are left out (h2load mostly does so itself).
    latencies, errors, total = [], 0, 0
    for line in log_path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or not fields[0].isdigit() or int(fields[0]) < measured_from * 1e6:
            continue
        total += 1
        status = int(fields[1])
        if not 200 <= status < 400:
            errors += 1
        latencies.append(int(fields[2]))
    latencies.sort()
    return {
        "requests": total,
        "seconds": seconds,
        "_latencies": latencies,
        "rps": total / seconds if seconds else 0,
        "errors": errors,
        **latency_figures(latencies),
        "command": " ".join(shell_quote(a) for a in argv),
    }


def latency_figures(latencies):
    """p50, p99, p99.9 and max in ms of sorted latencies in µs (None when there are none)."""
    ms = lambda us: None if us is None else us / 1000.0  # noqa: E731
    return {
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "p999_ms": ms(percentile(latencies, 99.9)),
        "max_ms": ms(latencies[-1] if latencies else None),
    }


def h2load_burst(url, headers, requests, clients, streams, log_dir, name):
    """`requests` requests at once over HTTP/2 (h2c): clients × streams in flight."""
    argv = ["h2load", "-n", requests, "-c", clients, "-m", streams,
            *header_args(headers, h2load=True), url]
    try:
        out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        raise Failed(f"h2load did not finish: {' '.join(map(str, argv))}") from e
    (log_dir / f"{name}.h2load.out").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise Failed(f"h2load failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    finished = re.search(r"finished in ([0-9.]+)(ms|s)", out.stdout)
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out.stdout)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out.stdout)
    elapsed_ms = float(finished.group(1)) * (1 if finished.group(2) == "ms" else 1000)
    return {
        "requests": requests,
        "done": int(done.group(1)),
        "ok_2xx": int(statuses.group(1)),
        "not_2xx": sum(int(statuses.group(i)) for i in (2, 3, 4)),
        "all_answered_ms": elapsed_ms,
        "command": " ".join(shell_quote(a) for a in argv),
    }


def check_load(args_list, log_dir, name):
    argv = [RELEASE / "check_load", *args_list]
    try:
        out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        raise Failed(f"check_load did not finish: {' '.join(map(str, argv))}") from e
    (log_dir / f"{name}.check_load.out").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise Failed(f"check_load failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["command"] = " ".join(shell_quote(a) for a in argv)
    return result


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


class Stack:
    def __init__(self, args, procs: Procs):
        self.args = args
        self.procs = procs
        self.run_dir = Path(args.run_dir)
        self.secret_file = self.run_dir / "jwt-secret"
        self.api_key_file = self.run_dir / "api-key"
        old = os.umask(0o077)
        self.secret_file.write_text(os.urandom(32).hex())
        self.api_key_file.write_text(API_KEY)
        os.umask(old)
        self.secret = self.secret_file.read_text()

    # --- the Daytona test double -------------------------------------------------------------
    def start_double(self, any_sandbox=True):
        """With `any_sandbox`, every UUID is a sandbox; without, unknown ids are 404."""
        self.double = self.procs.start(
            "double",
            [RELEASE / "daytona-double", "--api-addr", "127.0.0.1:0", "--proxy-addr",
             "127.0.0.1:0", *(["--any-sandbox"] if any_sandbox else [])],
            env={"DAYTONA_DOUBLE_API_KEY": API_KEY, "RUST_LOG": "warn"},
            stdout=open(self.run_dir / "double.out", "wb"),
        )
        line = wait_until(
            "the Daytona double",
            lambda: next((l for l in (self.run_dir / "double.out").read_text().splitlines()
                          if "api_url" in l), None),
            self.double, self.procs)
        ready = json.loads(line)
        self.api_url = ready["api_url"]
        self.api_root = self.api_url[: -len("/api")]
        self.proxy_port = ready["proxy_port"]
        self.sandbox = ready["sandboxes"][0]["id"]
        self.preview_token = ready["sandboxes"][0]["token"]
        self.preview_authority = f"{PORT}-{self.sandbox}.proxy.localhost:{self.proxy_port}"

    def api_stats(self):
        status, body = http(f"{self.api_root}/_double/stats")
        assert status == 200, status
        return json.loads(body)

    def api_calls_for(self, sandbox_id):
        return self.api_stats()["per_key"].get(f"{sandbox_id}:{PORT}", 0)

    # --- daytona-authz ---------------------------------------------------------------------------
    def start_authz(self, name, extra=()):
        grpc, http_port = free_port(), free_port()
        proc = self.procs.start(
            name,
            [RELEASE / "daytona-authz", "serve",
             "--grpc-addr", f"127.0.0.1:{grpc}", "--http-addr", f"127.0.0.1:{http_port}",
             "--daytona-api-url", self.api_url, "--daytona-api-key-file", self.api_key_file,
             "--preview-domain", DOMAIN, "--jwt-secret-file", self.secret_file,
             # The double's preview proxy listens on a free port, not the default 4000 that
             # the allow-list derives from a local API URL.
             *(() if "--upstream-domain" in extra
               else ("--upstream-domain", f"proxy.localhost:{self.proxy_port}")),
             *extra],
            env={"RUST_LOG": "info"},
        )
        wait_until(f"{name} ready (/readyz)",
                   lambda: http(f"http://127.0.0.1:{http_port}/readyz")[0] == 200,
                   proc, self.procs)
        proc.grpc_port = grpc
        proc.argv_shown = (f"daytona-authz serve --grpc-addr 127.0.0.1:{grpc} --http-addr "
                           f"127.0.0.1:{http_port} --daytona-api-url {self.api_url} "
                           f"--daytona-api-key-file API_KEY_FILE --preview-domain {DOMAIN} "
                           f"--jwt-secret-file SECRET_FILE "
                           f"--upstream-domain proxy.localhost:{self.proxy_port} "
                           f"{' '.join(extra)}").strip()
        return proc

    def start_floor(self, name, allow_sandbox=False):
        """load-tools/src/bin/check_floor.rs: a constant-answer `Check` server on daytona-authz's stack.
        With `allow_sandbox`, its answer carries this sandbox's real preview token and host, so
        behind Envoy it is a no-op ext_authz service that lets everything through."""
        out = self.run_dir / f"{name}.out"
        # `--flag=value`: a preview token may begin with `-`, which clap would take for a flag.
        real = ([f"--preview-token={self.preview_token}", f"--upstream={self.preview_authority}"]
                if allow_sandbox else [])
        proc = self.procs.start(name, [RELEASE / "check_floor", "--addr", "127.0.0.1:0",
                                       *real], stdout=open(out, "wb"))
        line = wait_until(f"{name} listening",
                          lambda: next((l for l in out.read_text().splitlines()
                                        if l.startswith("listening on ")), None),
                          proc, self.procs)
        proc.grpc_port = int(line.rsplit(":", 1)[1])
        proc.argv_shown = "check_floor --addr 127.0.0.1:0" + (
            " --preview-token PREVIEW_TOKEN --upstream " + self.preview_authority
            if allow_sandbox else "")
        return proc

    def mint(self, sandbox_id):
        out = run([RELEASE / "daytona-authz", "mint", "--jwt-secret-file", self.secret_file,
                   "--sandbox", sandbox_id, "--port", PORT, "--ttl", "1h",
                   "--base-url", "http://{port}-{id}." + DOMAIN + "/"])
        return re.search(r"^token: (\S+)$", out.stdout, re.M).group(1)

    # --- Envoy -----------------------------------------------------------------------------------
    def envoy_config(self, authz_port, limit):
        text = (REPO / "envoy" / "envoy.yaml").read_text()
        listener, admin = free_port(), free_port()

        def once(old, new, times=1):
            nonlocal text
            if text.count(old) != times:
                raise Failed(f"envoy/envoy.yaml must contain {old!r} {times} time(s)")
            text = text.replace(old, new)

        once("address: 0.0.0.0, port_value: 8080", f"address: 127.0.0.1, port_value: {listener}")
        once("port_value: 9901", f"port_value: {admin}", times=2)
        once("port_value: 9191", f"port_value: {authz_port}")
        # The metrics listener and daytona-authz's HTTP port: unused here, kept off 0.0.0.0.
        once("address: 0.0.0.0, port_value: 9902", "address: 127.0.0.1, port_value: 0")
        once("port_value: 9192", f"port_value: {free_port()}")
        if limit:
            # The physical limit: the same config without ext_authz. What daytona-authz would
            # have set on the request is set at the edge instead (fixed: one sandbox), so Envoy
            # forwards exactly the same request to the same upstream.
            once("              - remove: x-daytona-authz-upstream\n"
                 "              - remove: x-daytona-authz-upstream-scheme\n",
                 "".join(
                     "              - append:\n"
                     f"                  header: {{ key: {k}, value: \"{v}\" }}\n"
                     "                  append_action: OVERWRITE_IF_EXISTS_OR_ADD\n"
                     for k, v in [("x-daytona-authz-upstream", self.preview_authority),
                                  ("x-daytona-authz-upstream-scheme", "http"),
                                  ("x-daytona-preview-token", self.preview_token),
                                  ("x-daytona-skip-preview-warning", "true")])
                 + "              - remove: authorization\n")
            start = text.find("          - name: envoy.filters.http.ext_authz\n")
            end = text.find("          - name: envoy.filters.http.dynamic_forward_proxy\n")
            if start < 0 or end < start:
                raise Failed("cannot find the ext_authz filter in envoy/envoy.yaml")
            text = text[:start] + text[end:]
        return text, listener, admin

    def start_envoy(self, name, authz_port, limit=False):
        text, listener, admin = self.envoy_config(authz_port, limit)
        path = self.run_dir / f"{name}.yaml"
        path.write_text(text)
        run([self.args.envoy, "--mode", "validate", "-c", path, "--log-level", "warn"])
        proc = self.procs.start(
            name,
            [self.args.envoy, "-c", path, "--concurrency", 2, "--disable-hot-restart",
             "--log-level", "warn"],
            # The access log (stdout) is formatted as in production, then discarded.
            stdout=subprocess.DEVNULL,
        )
        wait_until(f"{name} ready", lambda: http(f"http://127.0.0.1:{admin}/ready")[0] == 200,
                   proc, self.procs)
        proc.port = listener
        proc.config_path = path
        return proc


# --------------------------------------------------------------------------------------------
# The official samples (baselines), built from a copy; never part of this repository
# --------------------------------------------------------------------------------------------


def build_samples(samples: Path, work: Path, log):
    built = {}
    if not samples.is_dir():
        reason = f"{samples} not found (set DAYTONA_PROXY_SAMPLES)"
        log(f"official samples: {reason}")
        return {"ts": {"error": reason}, "go": {"error": reason}}
    # TypeScript: npm ci + tsc, run as its Dockerfile does (node dist/index.js).
    ts = work / "typescript"
    try:
        shutil.copytree(samples / "typescript", ts)
        subprocess.run(["chmod", "-R", "u+w", str(ts)], check=True)
        run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=ts)
        run(["npm", "run", "build"], cwd=ts)
        built["ts"] = {"dir": ts, "argv": ["node", "dist/index.js"],
                       "version": "node " + version(["node", "--version"])}
    except (subprocess.CalledProcessError, OSError) as e:
        built["ts"] = {"error": f"build failed: {e} {getattr(e, 'stderr', '')}"[:500]}
    log("TypeScript sample: " + ("built" if "error" not in built["ts"] else built["ts"]["error"]))
    # Go: Debian's go in GOPATH mode with Debian's packages of the two modules (no module proxy).
    go = work / "go"
    src = go / "src" / "proxy"
    try:
        src.mkdir(parents=True)
        for f in ("main.go", "error.html"):
            shutil.copy(samples / "go" / f, src / f)
        env = dict(os.environ, GO111MODULE="off", GOPATH=f"{go}:/usr/share/gocode",
                   GOCACHE=str(go / "cache"), GOPROXY="off", GOFLAGS="")
        run(["go", "build", "-o", go / "daytona-proxy-go", "."], cwd=src, env=env)
        mods = version(["dpkg-query", "-W", "-f", "${Package} ${Version}; ",
                        "golang-github-joho-godotenv-dev", "golang-github-patrickmn-go-cache-dev"])
        built["go"] = {"dir": go, "argv": [str(go / "daytona-proxy-go")],
                       "version": f"{version(['go', 'version'])}, GOPATH mode, Debian: {mods}"}
    except (subprocess.CalledProcessError, OSError) as e:
        built["go"] = {"error": f"build failed: {e} {getattr(e, 'stderr', '')}"[:500]}
    log("Go sample: " + ("built" if "error" not in built["go"] else built["go"]["error"]))
    return built


def start_sample(stack: Stack, name, sample, procs: Procs):
    """The sample with its documented variables, in a mount namespace whose /etc/hosts names
    the one preview host it forwards to (glibc and Go resolve no `*.localhost` wildcard; Envoy's
    c-ares does)."""
    port = free_port()
    hosts = stack.run_dir / f"{name}.hosts"
    hosts.write_text(Path("/etc/hosts").read_text()
                     + f"\n127.0.0.1 {PORT}-{stack.sandbox}.proxy.localhost\n")
    argv = ["unshare", "--mount", "--", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
            hosts, *sample["argv"]]
    cwd = sample["dir"] / ("src/proxy" if name == "go" else "")
    proc = procs.start(name, argv, cwd=cwd, env={
        "DAYTONA_API_URL": stack.api_url, "DAYTONA_API_KEY": API_KEY, "PORT": str(port)})
    host = f"{PORT}-{stack.sandbox}.{DOMAIN}"
    wait_until(f"the {name} sample", lambda: http(f"http://127.0.0.1:{port}/",
                                                   {"Host": host})[0] == 200, proc, procs)
    proc.port = port
    return proc


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def pair_ratio(size, kind):
    """The median over pairs of windows (run one after the other) of this process's p99 ÷ the
    reference's: a window disturbed by something else on the machine moves one pair, not the
    figure."""
    return statistics.median(
        a / b for a, b in zip(size[f"{kind}_scale"]["p99_ms_windows"],
                              size[f"{kind}_ref"]["p99_ms_windows"]))


def merge_runs(runs):
    """Several `check_load warm` windows of one kind as one: requests, errors and CPU summed,
    rates and percentiles the mean of the windows' (each window's percentiles come from its
    own latencies), and the commands."""
    mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
    requests = sum(r["requests"] for r in runs)
    cpu = sum(r.get("authz_cpu_s", 0) for r in runs)
    return {"windows": len(runs), "requests": requests, "rps": mean("rps"),
            "errors": sum(r["errors"] for r in runs),
            "not_sent": sum(r.get("not_sent", 0) for r in runs),
            "p50_ms": mean("p50_ms"), "p99_ms": mean("p99_ms"), "p999_ms": mean("p999_ms"),
            "p99_ms_windows": [r["p99_ms"] for r in runs],
            "authz_cpu_s": cpu, "authz_cpu_us_per_request": cpu / requests * 1e6 if requests else None,
            "command": runs[0]["command"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--envoy", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", default=str(REPO / ".run" / "bench-results.json"),
                        help="where the raw results are kept (JSON)")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render --out from --results without measuring")
    args = parser.parse_args()
    if args.report_only:
        write_report(args.out, report(json.loads(Path(args.results).read_text())))
        return 0

    quick = args.quick
    cfg = {
        "duration": int(os.environ.get("BENCH_DURATION", 2 if quick else 10)),
        "warmup": int(os.environ.get("BENCH_WARMUP", 1 if quick else 3)),
        "connections": int(os.environ.get("BENCH_CONNECTIONS", 64)),
        "rate": int(os.environ.get("BENCH_RATE", 500)),
        "lat_rounds": 1 if quick else 3,
        "lat_duration": 2 if quick else 5,
        "lat_warmup": 1,
        "rounds": int(os.environ.get("BENCH_ROUNDS", 1 if quick else 2)),
        "check_concurrency": 64,
        "stampede": 1000,
        "cold": 1000 if quick else 10000,
        "scale": [1, 1000, 10000] if quick else [1, 10000, 100000],
        "scale_duration": 2 if quick else 3,
        "scale_rounds": 1 if quick else 5,
        "scale_open_rounds": 1 if quick else 3,
        "scale_rate": 2000,
        "scale_open_duration": 2 if quick else 3,
    }
    run_dir = Path(args.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    args.run_dir = str(run_dir)
    procs = Procs(run_dir)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    die_with_parent()
    t0 = time.monotonic()

    def log(message):
        print(f"[{time.monotonic() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    results = {"cfg": cfg,
               "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")}
    work = Path(tempfile.mkdtemp(prefix="bench-samples-", dir=run_dir))
    try:
        results["machine"] = machine_info()
        results["versions"] = versions(args.envoy)
        samples = Path(os.environ.get("DAYTONA_PROXY_SAMPLES", SAMPLES_DEFAULT))
        log("building the official samples from a copy")
        built = build_samples(samples, work, log)
        results["samples_dir"] = str(samples)
        results["versions"]["TypeScript sample"] = built["ts"].get("version", built["ts"].get("error"))
        results["versions"]["Go sample"] = built["go"].get("version", built["go"].get("error"))

        stack = Stack(args, procs)
        stack.start_double()
        authz = stack.start_authz("authz")
        envoy_authz = stack.start_envoy("envoy-authz", authz.grpc_port)
        envoy_limit = stack.start_envoy("envoy-limit", authz.grpc_port, limit=True)
        # Envoy with the same ext_authz filter in front of a service that does no work and
        # allows everything: what Envoy's side of ext_authz costs by itself.
        noop = stack.start_floor("noop-authz", allow_sandbox=True)
        envoy_noop = stack.start_envoy("envoy-noop", noop.grpc_port)
        token = stack.mint(stack.sandbox)
        secrets = [token, stack.preview_token, stack.secret]
        host = f"{PORT}-{stack.sandbox}.{DOMAIN}"
        bearer = [("Host", host), ("Authorization", f"Bearer {token}")]
        cookie = [("Host", host), ("Cookie", f"theme=dark; {COOKIE}={token}")]
        results["commands"] = {
            "double": f"daytona-double --api-addr 127.0.0.1:0 --proxy-addr 127.0.0.1:0 --any-sandbox",
            "authz": authz.argv_shown,
            "envoy": f"envoy -c envoy.yaml (ports moved to loopback; limit: ext_authz removed, "
                     f"its headers set at the edge) --concurrency 2 --disable-hot-restart",
        }
        wait_until("a 200 through Envoy with ext_authz",
                   lambda: http(f"http://127.0.0.1:{envoy_authz.port}/", dict(bearer))[0] == 200)
        wait_until("a 200 through Envoy without ext_authz",
                   lambda: http(f"http://127.0.0.1:{envoy_limit.port}/", dict(bearer))[0] == 200)
        wait_until("a 200 through Envoy with a no-op ext_authz",
                   lambda: http(f"http://127.0.0.1:{envoy_noop.port}/", dict(bearer))[0] == 200)

        pids = {"authz": authz.pid, "double": stack.double.pid}
        targets = {
            "double": ("Daytona double alone (the upstream)",
                       f"http://127.0.0.1:{stack.proxy_port}/",
                       [("Host", stack.preview_authority),
                        ("X-Daytona-Preview-Token", stack.preview_token),
                        ("X-Daytona-Skip-Preview-Warning", "true")], {}),
            "limit": ("1. Limit: Envoy, no ext_authz", f"http://127.0.0.1:{envoy_limit.port}/",
                      bearer, {"envoy": envoy_limit.pid}),
            "bearer": ("2. Envoy + daytona-authz, Bearer", f"http://127.0.0.1:{envoy_authz.port}/",
                       bearer, {"envoy": envoy_authz.pid}),
            "cookie": ("2. Envoy + daytona-authz, cookie", f"http://127.0.0.1:{envoy_authz.port}/",
                       cookie, {"envoy": envoy_authz.pid}),
            "noop": ("2. Envoy + a no-op ext_authz (`check_floor`, allows all)",
                     f"http://127.0.0.1:{envoy_noop.port}/", bearer,
                     {"envoy": envoy_noop.pid, "noop": noop.pid}),
        }

        def throughput(key, rounds=1):
            label, url, headers, extra = targets[key]
            runs = []
            for r in range(rounds):
                wrk(url, headers, cfg["warmup"], cfg["connections"], run_dir, f"{key}-warmup-{r}")
                reset_peak_rss(authz.pid)
                window = Window({**pids, **extra})
                result = wrk(url, headers, cfg["duration"], cfg["connections"], run_dir,
                             f"{key}-{r}")
                cpu, machine, wall = window.close()
                result.update(cpu_s=cpu, machine_busy_s=machine, wall_s=wall,
                              authz_peak_rss_kib=status_kib(authz.pid, "VmHWM"))
                result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
                runs.append(result)
                log(f"{label}: {result['rps']:.0f} req/s, p99 {result['p99_us'] / 1000:.2f} ms")
            return {"label": label, "runs": runs,
                    "command": redact(runs[0]["command"], secrets)}

        def latency(*keys):
            """Each target alone at the fixed rate, in turn, for `lat_rounds` rounds, so that
            they do not disturb one another and whatever else disturbs the machine over time
            disturbs them alike; each target's windows are merged."""
            windows = {key: [] for key in keys}
            for r in range(cfg["lat_rounds"]):
                for key in keys:
                    windows[key].append(fixed_rate(
                        targets[key][1], targets[key][2], cfg["rate"], cfg["lat_duration"],
                        cfg["lat_warmup"], run_dir / f"{key}-latency-{r}.h2load.tsv"))
            for key in keys:
                result = merge_windows(windows[key])
                label = targets[key][0]
                result["command"] = redact(result["command"], secrets)
                result["label"] = label
                log(f"{label} at {cfg['rate']} req/s: p50 {result['p50_ms']} ms, "
                    f"p99 {result['p99_ms']} ms (windows: "
                    f"{', '.join(str(p) for p in result['p99_ms_windows'])}), "
                    f"errors {result['errors']}")
                lat[key] = result

        tp, lat = {}, {}
        log("throughput: the double alone, then limit / Bearer / cookie / no-op interleaved")
        tp["double"] = throughput("double")
        interleaved = {k: None for k in ("limit", "bearer", "cookie", "noop")}
        for r in range(cfg["rounds"]):
            for key in interleaved:
                one = throughput(key)
                if interleaved[key] is None:
                    interleaved[key] = one
                else:
                    interleaved[key]["runs"] += one["runs"]
        tp.update(interleaved)
        latency("double")
        # The limit and every ext_authz variant in turn, round after round.
        latency("limit", "bearer", "cookie", "noop")
        procs.stop(envoy_noop)
        procs.stop(noop)

        # --- 4. the official samples -------------------------------------------------------------
        for key, label in (("ts", "4. TypeScript sample (authenticates no one)"),
                           ("go", "4. Go sample (authenticates no one)")):
            sample = built[key]
            if "error" in sample:
                tp[key] = {"label": label, "error": sample["error"]}
                continue
            try:
                proc = start_sample(stack, key, sample, procs)
            except Failed as e:
                tp[key] = {"label": label, "error": f"did not start: {str(e)[:400]}"}
                log(tp[key]["error"])
                continue
            targets[key] = (label, f"http://127.0.0.1:{proc.port}/", bearer, {key: proc.pid})
            calls_before = stack.api_stats()["preview_url_calls"]
            tp[key] = throughput(key)
            try:
                tp[key]["closes_connections"] = closes_connections(proc.port, bearer)
                if tp[key]["closes_connections"]:
                    # h2load's fixed-rate mode then reconnects without its rate (a probe sent
                    # 1,174 requests in 2 s at 5 req/s to the TypeScript sample) and never ends.
                    raise Failed("it answers every request with `Connection: close`, which "
                                 "h2load's fixed-rate mode does not handle")
                latency(key)
            except Failed as e:
                lat[key] = {"label": label, "error": str(e).splitlines()[0][:160]}
                log(f"{label}: latency not measured: {lat[key]['error']}")
            tp[key]["api_calls"] = stack.api_stats()["preview_url_calls"] - calls_before
            procs.stop(proc)
        results["throughput"], results["latency"] = tp, lat

        # --- 3. Check alone ----------------------------------------------------------------------
        log("3. Check alone (gRPC, no Envoy)")
        def warm_check(server, name, token_in="bearer"):
            """`check_load warm` against `server` (its CPU measured): the scenario's one load."""
            c = check_load(
                ["warm", "--addr", f"127.0.0.1:{server.grpc_port}", "--secret-file",
                 stack.secret_file, "--domain", DOMAIN, "--pid", server.pid,
                 "--sandbox", stack.sandbox, "--token-in", token_in,
                 "--connections", 2, "--concurrency", cfg["check_concurrency"],
                 "--warmup", cfg["warmup"], "--duration", cfg["duration"]],
                run_dir, f"check-{name}")
            log(f"Check ({name}): {c['rps']:.0f}/s, {c.get('authz_cpu_us_per_request', 0):.1f} "
                f"µs CPU each, p99 {c['p99_ms']} ms")
            return c

        check = {token_in: warm_check(authz, token_in, token_in) for token_in in ("bearer", "cookie")}
        results["check"] = check
        # The same load against the floor of this stack (a server that answers every Check with
        # a constant, load-tools/src/bin/check_floor.rs) and against daytona-authz on a multi-thread
        # runtime, so what daytona-authz's own work and its runtime cost shows in this run.
        check_more = {}
        for key, start in (
                ("floor", lambda: stack.start_floor("check-floor")),
                ("threads2", lambda: stack.start_authz(
                    "authz-2-threads", ["--worker-threads", "2", "--revocation-db",
                                        str(run_dir / "authz-2-threads.redb")]))):
            server = start()
            check_more[key] = warm_check(server, key)
            check_more[key]["server"] = server.argv_shown
            procs.stop(server)
        results["check_more"] = check_more
        common = ["--addr", f"127.0.0.1:{authz.grpc_port}", "--secret-file", stack.secret_file,
                  "--domain", DOMAIN, "--pid", authz.pid]

        # --- 5. cold stampede ------------------------------------------------------------------
        log("5. cold stampede")
        stampede = {}
        seed_envoy, seed_direct, seed_cold, seed_scale = 0x5EED0001, 0x5EED0002, 0x5EED0003, 0x5EED0004
        sid = f"{seed_envoy:08x}-0000-4000-8000-{0:012x}"
        s_token = stack.mint(sid)
        r = h2load_burst(f"http://127.0.0.1:{envoy_authz.port}/",
                         [("host", f"{PORT}-{sid}.{DOMAIN}"), ("authorization", f"Bearer {s_token}")],
                         cfg["stampede"], 10, cfg["stampede"] // 10, run_dir, "stampede-envoy")
        r["api_calls"] = stack.api_calls_for(sid)
        r["command"] = redact(r["command"], secrets + [s_token])
        stampede["envoy"] = r
        log(f"through Envoy: {r['ok_2xx']}/{r['requests']} 2xx in {r['all_answered_ms']:.0f} ms, "
            f"{r['api_calls']} API call(s)")
        r = check_load(["stampede", *common, "--seed", seed_direct, "--requests", cfg["stampede"],
                        "--connections", 4], run_dir, "stampede-direct")
        r["api_calls"] = stack.api_calls_for(r["sandbox"])
        stampede["direct"] = r
        log(f"direct Check: {r['allowed']}/{r['requests']} allowed in {r['all_answered_ms']:.0f} ms, "
            f"{r['api_calls']} API call(s)")
        calls_before = stack.api_stats()["preview_url_calls"]
        r = check_load(["cold", *common, "--seed", seed_cold, "--sandboxes", cfg["cold"],
                        "--connections", 2, "--concurrency", 64], run_dir, "cold")
        r["api_calls"] = stack.api_stats()["preview_url_calls"] - calls_before
        stampede["cold"] = r
        log(f"{cfg['cold']} distinct sandboxes: {r['rps']:.0f}/s, p99 {r['p99_ms']} ms, "
            f"{r['api_calls']} API calls, {r['errors']} errors")
        results["stampede"] = stampede

        # --- 6. memory scale (a fresh daytona-authz) ------------------------------------------------
        log("6. memory scale")
        procs.stop(envoy_limit)
        procs.stop(envoy_authz)
        procs.stop(authz)
        scale_authz = stack.start_authz("authz-scale", ["--cache-ttl", "10m"])
        # The reference: a second daytona-authz that keeps one cached sandbox, asked with as
        # many distinct tokens as the scale process has sandboxes, in alternation with it. The
        # two differ only in the size of the preview cache, and whatever disturbs the machine
        # disturbs both.
        ref_authz = stack.start_authz("authz-scale-ref", [
            "--cache-ttl", "10m", "--revocation-db", str(run_dir / "authz-scale-ref.redb")])
        common = ["--addr", f"127.0.0.1:{scale_authz.grpc_port}", "--secret-file",
                  stack.secret_file, "--domain", DOMAIN, "--pid", scale_authz.pid]
        ref_common = ["--addr", f"127.0.0.1:{ref_authz.grpc_port}", "--secret-file",
                      stack.secret_file, "--domain", DOMAIN, "--pid", ref_authz.pid,
                      "--seed", seed_scale + 1]
        check_load(["cold", *ref_common, "--sandboxes", 1, "--connections", 1, "--concurrency", 1],
                   run_dir, "scale-ref-fill")
        scale = {"idle_rss_kib": status_kib(scale_authz.pid, "VmRSS"), "sizes": [],
                 "command": scale_authz.argv_shown, "ref_command": ref_authz.argv_shown}
        filled = 0
        for size in cfg["scale"]:
            calls_before = stack.api_stats()["preview_url_calls"]
            fill = check_load(["cold", *common, "--seed", seed_scale, "--offset", filled,
                               "--sandboxes", size - filled, "--connections", 2,
                               "--concurrency", 64], run_dir, f"scale-fill-{size}")
            filled = size
            calls_mid = stack.api_stats()["preview_url_calls"]
            sides = {"scale": [*common, "--seed", seed_scale, "--sandboxes", size],
                     "ref": [*ref_common, "--sandboxes", 1, "--tokens-per-sandbox", size]}
            runs = {(kind, side): [] for kind in ("closed", "open") for side in sides}
            for kind, rounds, load in (
                    ("closed", cfg["scale_rounds"],
                     ["--concurrency", 16, "--duration", cfg["scale_duration"]]),
                    ("open", cfg["scale_open_rounds"],
                     ["--rate", cfg["scale_rate"], "--concurrency", 256,
                      "--duration", cfg["scale_open_duration"]])):
                for r in range(rounds):
                    # Pairs of windows, which side goes first alternating from pair to pair.
                    for side, argv in sorted(sides.items(), reverse=r % 2 == 1):
                        runs[kind, side].append(check_load(
                            # The first pair after a fill warms up longer: the fill leaves
                            # freed memory for the allocator to return and fresh connections.
                            ["warm", *argv, "--connections", 2,
                             "--warmup", 3 if r == 0 else 0.5, *load],
                            run_dir, f"scale-{kind}-{side}-{size}-{r}"))
            misses = stack.api_stats()["preview_url_calls"] - calls_mid
            entry = {"entries": size, "fill": fill, "fill_api_calls": calls_mid - calls_before,
                     "warm_misses": misses, "rss_kib": status_kib(scale_authz.pid, "VmRSS"),
                     **{f"{kind}_{side}": merge_runs(x) for (kind, side), x in runs.items()}}
            scale["sizes"].append(entry)
            log(f"{size} entries: RSS {entry['rss_kib'] / 1024:.1f} MiB; 16 in flight: p99 "
                f"{entry['closed_scale']['p99_ms']:.3f} ms (one cached sandbox: "
                f"{entry['closed_ref']['p99_ms']:.3f}), "
                f"{entry['closed_scale']['authz_cpu_us_per_request']:.1f} µs CPU/Check (one: "
                f"{entry['closed_ref']['authz_cpu_us_per_request']:.1f}); at "
                f"{cfg['scale_rate']}/s: p99 {entry['open_scale']['p99_ms']:.3f} ms (one: "
                f"{entry['open_ref']['p99_ms']:.3f}); {misses} misses")
        scale["peak_rss_kib"] = status_kib(scale_authz.pid, "VmHWM")
        results["scale"] = scale
        results["elapsed_s"] = time.monotonic() - t0
        results["machine"]["load_after"] = open("/proc/loadavg").read().split()[:3]
        results = json.loads(json.dumps(results, default=str))
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(results, indent=1))
        write_report(args.out, report(results))
        log(f"wrote {args.out} ({results['elapsed_s']:.0f} s)")
    except Failed as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def die_with_parent():
    """SIGTERM when run.sh goes away, however it goes (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        raise SystemExit(143)


def machine_info():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": version(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "load_before": open("/proc/loadavg").read().split()[:3],
    }


def versions(envoy):
    commit = version(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD"]).returncode != 0
    return {
        "daytona-authz": f"{commit}{' + uncommitted changes' if dirty else ''} (release build)",
        "rustc": version(["rustc", "--version"]),
        "Envoy": version([envoy, "--version"], r"version: (\S+)"),
        "wrk": version(["wrk", "-v"], r"(wrk \S+)"),
        "h2load": version(["h2load", "--version"]),
        "node": version(["node", "--version"]),
        "go": version(["go", "version"]),
    }


# --------------------------------------------------------------------------------------------
# BENCHMARKS.md
# --------------------------------------------------------------------------------------------


# bench/soak.sh keeps its own section in the same file, between these markers; a re-run of this
# benchmark carries it over unchanged, at the end.
SOAK_BEGIN, SOAK_END = "<!-- soak:begin -->", "<!-- soak:end -->"


def write_report(path, text):
    try:
        old = Path(path).read_text()
    except OSError:
        old = ""
    start, end = old.find(SOAK_BEGIN), old.find(SOAK_END)
    if 0 <= start < end:
        text = text.rstrip("\n") + "\n\n" + old[start:end + len(SOAK_END)] + "\n"
    Path(path).write_text(text)


def agg(entry):
    """Throughput over all rounds, latency percentiles as the median of rounds, CPU summed."""
    runs = entry["runs"]
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["duration_us"] for r in runs) / 1e6
    cpu = {}
    for r in runs:
        for name, s in r["cpu_s"].items():
            cpu[name] = cpu.get(name, 0) + s
    return {
        "rps": requests / seconds,
        "per_round": [r["rps"] for r in runs],
        "p50": statistics.median(r["p50_us"] for r in runs) / 1000,
        "p99": statistics.median(r["p99_us"] for r in runs) / 1000,
        "p999": statistics.median(r["p999_us"] for r in runs) / 1000,
        "errors": sum(r["connect_errors"] + r["read_errors"] + r["write_errors"]
                      + r["status_errors"] + r["timeouts"] for r in runs),
        "requests": requests,
        "cpu": cpu,
        "loadgen_cpu": sum(r["loadgen_cpu_s"] for r in runs),
        "machine_busy": sum(r["machine_busy_s"] for r in runs),
        "wall": sum(r["wall_s"] for r in runs),
        "authz_peak_rss_mib": max(r["authz_peak_rss_kib"] or 0 for r in runs) / 1024,
    }


def us_per_req(seconds, requests):
    return seconds / requests * 1e6 if requests else float("nan")


def fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def verdict(ok):
    return "**met**" if ok else "**missed**"


def noop_note(a, lat, what):
    """The same figure for Envoy with a no-op ext_authz service (older results have none)."""
    if "noop" not in a or "noop" not in lat:
        return ""
    if what == "throughput":
        return (f"; with a no-op ext_authz service instead (the most any ext_authz service can "
                f"reach here): {a['noop']['rps'] / a['limit']['rps']:.2f}")
    return (f"; a no-op ext_authz service adds "
            f"{lat['noop']['p99_ms'] - lat['limit']['p99_ms']:+.2f} ms")


def floor_note(res):
    floor = res.get("check_more", {}).get("floor", {}).get("authz_cpu_us_per_request")
    return "" if floor is None else f"; the floor of this stack: {floor:.1f} µs"


def report(res):
    cfg, tp, lat = res["cfg"], res["throughput"], res["latency"]
    a = {k: agg(v) for k, v in tp.items() if "runs" in v}
    out = []
    w = out.append
    w("# Benchmarks\n")
    w(f"Written by `bench/run.sh` on {res['started']} UTC in "
      f"{res['elapsed_s'] / 60:.1f} minutes; re-run it rather than editing this file. Every figure "
      "below comes from that one run on one machine, so the ratios compare like with like; the "
      "absolute numbers are this machine's.\n")

    w("## Machine and versions\n")
    m = res["machine"]
    w(f"- {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}, Linux {m['kernel']}; "
      f"load average before the run {' / '.join(m['load_before'])}, after it "
      f"{' / '.join(m.get('load_after', ['?']))} (other work on this machine shows in the "
      "\"whole machine\" column below). Everything runs on this one "
      "machine over 127.0.0.1: the load generator, Envoy, daytona-authz and the Daytona test double "
      "share the same 2 cores, as they would share a small node.")
    for name, v in res["versions"].items():
        w(f"- {name}: {v}")
    w(f"- Windows: {cfg['warmup']} s warm-up (discarded), then {cfg['duration']} s measured per "
      f"run; throughput with wrk (closed loop, 1 thread, {cfg['connections']} HTTP/1.1 keep-alive "
      f"connections); latency at a fixed {cfg['rate']} req/s with h2load (10 HTTP/1.1 clients), "
      f"each target alone, in turn, for {cfg.get('lat_rounds', 1)} round(s) of "
      f"{cfg.get('lat_duration', cfg['duration'])} s after {cfg.get('lat_warmup', cfg['warmup'])} s "
      "of warm-up, so that they do not disturb one another and whatever else disturbs the "
      "machine disturbs them alike; "
      f"scenarios 1 and 2 alternate for {cfg['rounds']} round(s) and are summed.")
    w("- Upstream everywhere: `daytona-double --any-sandbox`, its preview proxy answering the "
      "echo app's JSON (the request as the sandbox saw it), its API answering preview-url calls.\n")

    # Targets
    bearer, cookie, limit = a.get("bearer"), a.get("cookie"), a.get("limit")
    ratio = bearer["rps"] / limit["rps"]
    ratio_cookie = cookie["rps"] / limit["rps"]
    added_p99 = lat["bearer"]["p99_ms"] - lat["limit"]["p99_ms"]
    added_p99_cookie = lat["cookie"]["p99_ms"] - lat["limit"]["p99_ms"]
    check = res["check"]["bearer"]
    cpu_check = check.get("authz_cpu_us_per_request")
    st = res["stampede"]
    sizes = res["scale"]["sizes"]
    rss_top = sizes[-1]["rss_kib"] / 1024
    top = sizes[-1]
    p99_0, p99_top = top["closed_ref"]["p99_ms"], top["closed_scale"]["p99_ms"]
    p99_ratio = pair_ratio(top, "closed")
    p99_ratio_1 = pair_ratio(sizes[0], "closed")

    # CPU per request, by process: what each scenario costs the machine.
    def cpu_row(key):
        x = a[key]
        n = x["requests"]
        return {name: us_per_req(s, n) for name, s in x["cpu"].items()} | {
            "loadgen": us_per_req(x["loadgen_cpu"], n),
            "machine": us_per_req(x["machine_busy"], n)}

    c_limit, c_bearer = cpu_row("limit"), cpu_row("bearer")
    ours = lambda c: sum(v for k, v in c.items() if k != "machine")  # noqa: E731
    predicted = ours(c_limit) / ours(c_bearer)

    w("## Targets\n")
    w("| target | measured (this run) | verdict |")
    w("|---|---|---|")
    w(f"| Scenario 2 throughput ≥ 0.75 × scenario 1 | Bearer {fmt(bearer['rps'], 0)} / "
      f"{fmt(limit['rps'], 0)} req/s = **{ratio:.2f}**; cookie {ratio_cookie:.2f}"
      f"{noop_note(a, lat, 'throughput')} | "
      f"{verdict(ratio >= 0.75 and ratio_cookie >= 0.75)} |")
    w(f"| p99 added by authz ≤ 1 ms (at {cfg['rate']} req/s) | Bearer {lat['bearer']['p99_ms']:.2f} − "
      f"{lat['limit']['p99_ms']:.2f} = **{added_p99:+.2f} ms**; cookie {added_p99_cookie:+.2f} ms"
      f"{noop_note(a, lat, 'p99')} | "
      f"{verdict(added_p99 <= 1 and added_p99_cookie <= 1)} |")
    w(f"| Warm `Check` ≤ 20 µs of daytona-authz CPU | {check.get('authz_cpu_s', 0):.2f} CPU-s ÷ "
      f"{check['requests']:,} Checks = **{fmt(cpu_check, 1)} µs** (cookie: "
      f"{fmt(res['check']['cookie'].get('authz_cpu_us_per_request'), 1)} µs){floor_note(res)} | "
      f"{verdict(cpu_check is not None and cpu_check <= 20)} |")
    for key, factor, name in (("ts", 10, "TypeScript"), ("go", 2, "Go")):
        if key in a:
            r = bearer["rps"] / a[key]["rps"]
            bound = (f"; {factor} × is {fmt(factor * a[key]['rps'], 0)} req/s, a no-op ext_authz "
                     f"service: {fmt(a['noop']['rps'], 0)}" if "noop" in a else "")
            w(f"| Scenario 2 ≥ {factor} × the {name} sample | {fmt(bearer['rps'], 0)} / "
              f"{fmt(a[key]['rps'], 0)} req/s = **{r:.2f} ×**{bound} | {verdict(r >= factor)} |")
        else:
            w(f"| Scenario 2 ≥ {factor} × the {name} sample | not measured: {tp[key]['error']} | "
              "**not measured** |")
    w(f"| Stampede: exactly 1 API call | {cfg['stampede']:,} concurrent first requests: "
      f"**{st['envoy']['api_calls']}** call through Envoy, **{st['direct']['api_calls']}** "
      f"through `Check` directly | {verdict(st['envoy']['api_calls'] == 1 and st['direct']['api_calls'] == 1)} |")
    w(f"| {sizes[-1]['entries']:,} entries ≤ 64 MiB RSS | **{rss_top:.1f} MiB** "
      f"(idle {res['scale']['idle_rss_kib'] / 1024:.1f} MiB) | {verdict(rss_top <= 64)} |")
    cpu_0 = top["closed_ref"]["authz_cpu_us_per_request"]
    cpu_top = top["closed_scale"]["authz_cpu_us_per_request"]
    open_0, open_top = top["open_ref"]["p99_ms"], top["open_scale"]["p99_ms"]
    w(f"| p99 at {top['entries']:,} within 1.2 × p99 at 0 | **{p99_ratio:.2f} ×**: the median, "
      f"over {len(top['closed_scale']['p99_ms_windows'])} pairs of windows, of p99 at "
      f"{top['entries']:,} ÷ p99 of one cached sandbox asked with as many distinct tokens "
      f"(16 in flight; averages {p99_top:.3f} and {p99_0:.3f} ms); the same comparison with "
      f"one entry on both sides: {p99_ratio_1:.2f} ×; CPU per `Check` {fmt(cpu_0, 1)} → "
      f"{fmt(cpu_top, 1)} µs ({(cpu_top or 0) / (cpu_0 or 1):.2f} ×); at {cfg['scale_rate']:,} "
      f"Checks/s (open loop) {pair_ratio(top, 'open'):.2f} × | {verdict(p99_ratio <= 1.2)}"
      f"{' (p99 only: the CPU cost grew more than 1.2 ×)' if cpu_0 and cpu_top and cpu_top > 1.2 * cpu_0 else ''} |")
    w("")

    # Throughput table
    w("## Throughput (closed loop)\n")
    w("| scenario | req/s | per round | p50 ms | p99 ms | p99.9 ms | errors | authz CPU-s | "
      "authz µs/req | authz peak RSS MiB |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for key in ("double", "limit", "bearer", "cookie", "noop", "ts", "go"):
        if key not in tp:
            continue
        if key not in a:
            w(f"| {tp[key]['label']} | not measured: {tp[key]['error']} | | | | | | | | |")
            continue
        x = a[key]
        authz_cpu = x["cpu"].get("authz", 0)
        uses_authz = key in ("bearer", "cookie")
        w(f"| {tp[key]['label']} | **{fmt(x['rps'], 0)}** | "
          f"{' / '.join(fmt(v, 0) for v in x['per_round'])} | {x['p50']:.2f} | {x['p99']:.2f} | "
          f"{x['p999']:.2f} | {x['errors']} | {authz_cpu:.2f}{'' if uses_authz else ' (idle)'} | "
          f"{fmt(us_per_req(authz_cpu, x['requests']), 1) if uses_authz else '–'} | "
          f"{x['authz_peak_rss_mib']:.1f} |")
    w("")
    w("The two samples authenticate no one: anybody who knows a sandbox's host gets in. Their "
      "figures are the price of *no* access control; daytona-authz's include verifying a token "
      "on every request. The TypeScript sample also calls the Daytona API on every request (it "
      f"has no cache: {tp.get('ts', {}).get('api_calls', '–')} API calls in its runs), as its own "
      "comment warns; the Go sample caches for 2 minutes."
      + ("".join(f" The {name} sample answers every request with `Connection: close`, so wrk "
                 "opens a connection for each (as any client of it must)."
                 for key, name in (("ts", "TypeScript"), ("go", "Go"))
                 if tp.get(key, {}).get("closes_connections")))
      + "\n")

    w("### Where the CPU goes (µs of CPU per request, measured window)\n")
    names = ["loadgen", "envoy", "authz", "noop", "double", "ts", "go"]
    w("| scenario | " + " | ".join(names) + " | sum of these | whole machine |")
    w("|---|" + "---:|" * (len(names) + 2))
    for key in ("double", "limit", "bearer", "cookie", "noop", "ts", "go"):
        if key not in a:
            continue
        c = cpu_row(key)
        if key in ("limit", "double", "noop", "ts", "go"):
            c.pop("authz", None)  # idle in these scenarios
        w(f"| {tp[key]['label']} | " + " | ".join(fmt(c.get(n), 1) if n in c else "–" for n in names)
          + f" | {fmt(ours(c), 1)} | {fmt(c['machine'], 1)} |")
    w("")
    w("\"whole machine\" is all busy CPU on the machine in the window divided by the requests; "
      "more than the sum means something else (another build, the OS) ran meanwhile.\n")

    w(f"## Latency at a fixed rate ({cfg['rate']} req/s)\n")
    w("Each target alone at this rate; the limit, Bearer, cookie and the no-op service in turn, "
      "round after round, each one's windows merged (\"p99 per window\" shows how much a p99 "
      "moves from one window to the next here). At this rate every process is mostly idle, so "
      "these are service times plus this VM's wake-up latency, not queueing.\n")
    w("| scenario | p50 ms | p99 ms | p99.9 ms | max ms | requests | errors | p99 per window ms |")
    w("|---|---:|---:|---:|---:|---:|---:|---|")
    for key in ("double", "limit", "bearer", "cookie", "noop", "ts", "go"):
        if key in lat and "error" in lat[key]:
            w(f"| {lat[key]['label']} | not measured: {lat[key]['error']} | | | | | | |")
        elif key in lat:
            x = lat[key]
            w(f"| {x['label']} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['p999_ms']:.2f} | "
              f"{x['max_ms']:.2f} | {x['requests']:,} | {x['errors']} | "
              f"{' / '.join(f'{v:.2f}' for v in x.get('p99_ms_windows', []))} |")
    w("")

    w("## 3. `Check` alone (gRPC, no Envoy)\n")
    w(f"`check_load warm`: {cfg['check_concurrency']} Checks in flight over 2 HTTP/2 connections, "
      "warm cache, one sandbox.\n")
    w("| token in | Checks/s | p50 ms | p99 ms | p99.9 ms | errors | authz CPU-s | authz µs/Check | "
      "authz peak RSS MiB |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    more = res.get("check_more", {})
    rows = [(key, c) for key, c in res["check"].items()]
    rows += [(label, more[key]) for key, label in (
        ("threads2", "bearer, `--worker-threads 2`"),
        ("floor", "the floor: `check_floor` (bearer; the server's own CPU)")) if key in more]
    for key, c in rows:
        w(f"| {key} | **{fmt(c['rps'], 0)}** | {c['p50_ms']:.3f} | {c['p99_ms']:.3f} | "
          f"{c['p999_ms']:.3f} | {c['errors']} | {c.get('authz_cpu_s', 0):.2f} | "
          f"**{fmt(c.get('authz_cpu_us_per_request'), 1)}** | "
          f"{(c.get('authz_peak_rss_kib') or 0) / 1024:.1f} |")
    w("")
    if "floor" in more:
        floor_us = more["floor"].get("authz_cpu_us_per_request") or 0
        w("The floor is `load-tools/src/bin/check_floor.rs`: a server on the same stack as daytona-authz "
          "(tonic, hyper, h2, prost, tokio, the same runtime and connection handling) that answers "
          "every `Check` with one constant OK of the same shape, under the same load. It is what "
          "any `Check` costs on this machine before any work is done: daytona-authz's own work "
          f"(host, token, cache, response, metrics) is the difference, {fmt(cpu_check - floor_us, 1)} "
          "µs per `Check` here. `--worker-threads 2` runs the same daytona-authz on a multi-thread "
          "runtime: what a Check costs when it may hop between threads.\n")

    w("## 5. Cold stampede\n")
    e, d, cold = st["envoy"], st["direct"], st["cold"]
    w("| what | answered | API calls | time until all answered | p50 / p99 ms | authz CPU-s |")
    w("|---|---:|---:|---:|---:|---:|")
    w(f"| {e['requests']:,} concurrent first requests, one new sandbox, through Envoy (h2load, "
      f"HTTP/2) | {e['ok_2xx']:,} × 2xx, {e['not_2xx']} other | **{e['api_calls']}** | "
      f"{e['all_answered_ms']:.0f} ms | – | – |")
    w(f"| {d['requests']:,} concurrent first `Check`s, one new sandbox, direct | "
      f"{d['allowed']:,} allowed, {d['errors']} errors | **{d['api_calls']}** | "
      f"{d['all_answered_ms']:.0f} ms | {d['p50_ms']:.1f} / {d['p99_ms']:.1f} | "
      f"{d.get('authz_cpu_s', 0):.2f} |")
    w(f"| {cold['sandboxes']:,} distinct new sandboxes once each, 64 at a time, direct | "
      f"{cold['allowed']:,} allowed, {cold['errors']} errors | {cold['api_calls']:,} | "
      f"{cold['seconds'] * 1000:.0f} ms ({fmt(cold['rps'], 0)}/s) | {cold['p50_ms']:.1f} / "
      f"{cold['p99_ms']:.1f} | {cold.get('authz_cpu_s', 0):.2f} "
      f"({fmt(cold.get('authz_cpu_us_per_request'), 0)} µs each) |")
    w("")

    w("## 6. Memory scale (a fresh daytona-authz, `--cache-ttl 10m`)\n")
    w("Each size: fill the cache with new sandboxes, each with its own access token (so as many "
      "distinct tokens are seen), then warm Checks spread at random over all cached sandboxes, "
      "each with its sandbox's token. Every request so carries one of N tokens, more than "
      "daytona-authz remembers as verified (4,096), so nearly every request verifies its token "
      "afresh. Beside it, in alternation, a second daytona-authz with **one** cached sandbox is "
      "asked with as many distinct tokens (\"one sandbox\" columns): the same requests but for "
      "the size of the cache. Warm runs: 16 Checks in flight on 2 connections (closed loop; p99 "
      f"is mostly queueing behind the one runtime thread), {cfg['scale_rounds']} pair(s) of "
      f"{cfg['scale_duration']} s windows, one side then the other, figures averaged over "
      f"windows; then an open loop at {cfg['scale_rate']:,} Checks/s "
      f"({cfg.get('scale_open_rounds', cfg['scale_rounds'])} pair(s) of "
      f"{cfg['scale_open_duration']} s per side), latency from when each Check was due, where "
      "every Check mostly wakes an idle process.\n")
    w("| cached entries | RSS MiB | warm Checks/s | p50 ms | p99 ms | p99.9 ms | authz µs/Check "
      "| one sandbox: p99 ms | one sandbox: µs/Check | open loop p99 ms (one sandbox) "
      "| misses in the warm runs | fill: Checks/s, API calls |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    w(f"| 0 (idle, before any Check) | {res['scale']['idle_rss_kib'] / 1024:.1f} "
      "| | | | | | | | | | |")
    for s in sizes:
        x, ref = s["closed_scale"], s["closed_ref"]
        w(f"| {s['entries']:,} | **{s['rss_kib'] / 1024:.1f}** | {fmt(x['rps'], 0)} | "
          f"{x['p50_ms']:.3f} | **{x['p99_ms']:.3f}** | {x['p999_ms']:.3f} | "
          f"{fmt(x['authz_cpu_us_per_request'], 1)} | {ref['p99_ms']:.3f} | "
          f"{fmt(ref['authz_cpu_us_per_request'], 1)} | {s['open_scale']['p99_ms']:.3f} "
          f"({s['open_ref']['p99_ms']:.3f}) | {s['warm_misses']} | "
          f"{fmt(s['fill']['rps'], 0)}/s, {s['fill_api_calls']:,} |")
    w(f"\nPeak RSS of that process over the whole scenario: "
      f"{res['scale']['peak_rss_kib'] / 1024:.1f} MiB. p99 of each window, closed loop, "
      "this process / one sandbox: " + "; ".join(
          f"{s['entries']:,}: " + ", ".join(f"{v:.3f}" for v in s["closed_scale"]["p99_ms_windows"])
          + " / " + ", ".join(f"{v:.3f}" for v in s["closed_ref"]["p99_ms_windows"])
          for s in sizes) + "; the median of their ratios pair by pair: " + "; ".join(
          f"{s['entries']:,}: {pair_ratio(s, 'closed'):.2f} ×" for s in sizes) + ".\n")

    w("## What the figures say\n")
    w(findings(res, a, c_limit, c_bearer, predicted, ratio, added_p99))

    w("## Command lines\n")
    w("Secrets are shortened to their first 12 characters; ports are picked free per run.\n")
    w("```")
    for name, command in res["commands"].items():
        w(f"{name}: {command}")
    for key in ("double", "limit", "bearer", "cookie", "noop", "ts", "go"):
        if key in tp and "command" in tp[key]:
            w(f"{key} throughput: {tp[key]['command']}")
        if key in lat and "command" in lat[key]:
            w(f"{key} latency: {lat[key]['command']}")
    for key, c in res["check"].items():
        w(f"check {key}: {c['command']}")
    for key, c in res.get("check_more", {}).items():
        w(f"check {key} server: {c['server']}")
        w(f"check {key}: {c['command']}")
    w(f"stampede via Envoy: {st['envoy']['command']}")
    w(f"stampede direct: {st['direct']['command']}")
    w(f"cold: {st['cold']['command']}")
    w(f"scale authz: {res['scale']['command']}")
    w(f"scale reference authz: {res['scale']['ref_command']}")
    for s in sizes:
        w(f"scale {s['entries']} fill: {s['fill']['command']}")
        for key in ("closed_scale", "closed_ref", "open_scale", "open_ref"):
            w(f"scale {s['entries']} warm ({key.replace('_', ', ')}): {s[key]['command']}")
    w("TypeScript sample: npm ci --ignore-scripts && npm run build; "
      "DAYTONA_API_URL=… DAYTONA_API_KEY=… PORT=… node dist/index.js")
    w("Go sample: GO111MODULE=off GOPATH=$tmp:/usr/share/gocode go build; "
      "DAYTONA_API_URL=… DAYTONA_API_KEY=… PORT=… ./daytona-proxy-go")
    w("(both under `unshare --mount` with an /etc/hosts naming the one preview host they "
      "forward to; they listen on all interfaces, as written, and get traffic only on 127.0.0.1)")
    w("```\n")
    notes = REPO / "bench" / "NOTES.md"
    if notes.exists():
        w(notes.read_text())
    return "\n".join(out) + "\n"


def findings(res, a, c_limit, c_bearer, predicted, ratio, added_p99):
    lines = []
    authz_us = c_bearer.get("authz", 0)
    envoy_extra = c_bearer.get("envoy", 0) - c_limit.get("envoy", 0)
    limit_us = sum(v for k, v in c_limit.items() if k not in ("machine", "authz"))
    lines.append(
        f"- **Throughput vs the limit.** Per request, the limit costs "
        f"{limit_us:.0f} µs of CPU "
        f"across the load generator, Envoy and the double. With ext_authz, daytona-authz adds "
        f"{authz_us:.0f} µs and Envoy {envoy_extra:+.0f} µs (its ext_authz filter and gRPC "
        f"client). On a machine where every process shares the same 2 cores, throughput is "
        f"inversely proportional to CPU per request, which predicts a ratio of {predicted:.2f}; "
        f"measured: {ratio:.2f}. A daytona-authz that cost nothing at all would still leave "
        f"Envoy's own ext_authz cost: at most {limit_us / (limit_us + envoy_extra):.2f}"
        + (f"; measured with a service that does no work and allows everything behind the same "
           f"Envoy (`check_floor`): {a['noop']['rps'] / a['limit']['rps']:.2f}, and daytona-authz "
           f"reaches {a['bearer']['rps'] / a['noop']['rps']:.2f} × that."
           if "noop" in a else "."))
    check = res["check"]["bearer"]
    more = res.get("check_more", {})
    floor = more.get("floor", {}).get("authz_cpu_us_per_request")
    threads2 = more.get("threads2", {}).get("authz_cpu_us_per_request")
    own = check.get("authz_cpu_us_per_request", 0)
    lines.append(
        f"- **`Check` on its own** costs {own:.1f} µs of "
        f"daytona-authz CPU with 64 in flight on 2 connections; behind Envoy, where Envoy holds "
        f"one HTTP/2 connection per worker and requests arrive as fast as wrk sends them, it "
        f"costs {authz_us:.1f} µs."
        + (f" A server on the same stack that does no work at all costs {floor:.1f} µs under "
           f"the same load, so daytona-authz's own work is {own - floor:.1f} µs per `Check`."
           if floor else "")
        + (f" On a multi-thread runtime (`--worker-threads 2`) the same daytona-authz costs "
           f"{threads2:.1f} µs: the hops between threads, not more work."
           if threads2 else ""))
    added_p50 = res["latency"]["bearer"]["p50_ms"] - res["latency"]["limit"]["p50_ms"]
    why = ("one more hop, Envoy → daytona-authz → Envoy, whose time at this rate is mostly two "
           "wake-ups of an idle process on this VM (finding 6 below); the `Check` itself is "
           "microseconds of CPU" if added_p50 < 1.2 else
           "more than two wake-ups of an idle process on this VM (finding 6 below) and the "
           "microseconds of a `Check`: requests waited, on this shared machine")
    noop = res["latency"].get("noop")
    lines.append(
        f"- **Latency.** At {res['cfg']['rate']} req/s the ext_authz hop adds {added_p99:+.2f} ms "
        f"at p99 and {added_p50:+.2f} ms at p50: {why}."
        + (f" The same hop to a service that does no work adds "
           f"{noop['p99_ms'] - res['latency']['limit']['p99_ms']:+.2f} ms at p99 and "
           f"{noop['p50_ms'] - res['latency']['limit']['p50_ms']:+.2f} ms at p50, measured in "
           f"turn with them." if noop and "p99_ms" in noop else ""))
    c0 = res["check"]["bearer"]
    if c0["p99_ms"] and c0["p99_ms"] > 20:
        lines.append(
            f"- **`Check` alone** answers {c0['rps']:,.0f} Checks/s with 64 in flight while "
            f"daytona-authz uses only {c0.get('authz_cpu_s', 0) / c0['seconds']:.2f} of a core: "
            f"throughput bound by waiting (p99 {c0['p99_ms']:.0f} ms), not by CPU; the same "
            "finding 1.")
    limit_rps = a["limit"]["rps"]
    noop_rps = a["noop"]["rps"] if "noop" in a else None
    for key, name, factor in (("ts", "TypeScript", 10), ("go", "Go", 2)):
        if key in a:
            c = {k: us_per_req(v, a[key]["requests"]) for k, v in a[key]["cpu"].items()}
            needed = factor * a[key]["rps"]
            if noop_rps and needed > noop_rps:
                reach = (f", and more than Envoy forwards through a no-op ext_authz service "
                         f"({noop_rps / limit_rps:.2f} × the limit, {noop_rps:,.0f} req/s): out of "
                         f"reach for any ext_authz service behind this Envoy on this machine.")
            elif needed / limit_rps > 0.9:
                reach = ", out of reach for any authorization through Envoy on this machine."
            else:
                reach = "."
            lines.append(
                f"- **The {name} sample** spends {c.get(key, 0):.0f} µs of its own CPU per request "
                f"and the double {c.get('double', 0):.0f} µs "
                f"({'an API call plus the proxied request' if key == 'ts' else 'the proxied request'}). "
                f"{factor} × its throughput is {needed:,.0f} req/s: {needed / limit_rps:.2f} × what "
                f"Envoy forwards with no ext_authz at all in this run" + reach)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
