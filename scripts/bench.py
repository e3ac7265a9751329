#!/usr/bin/env python3
"""Latency of a tools/call round trip through mcpgate versus the same MCP server run
directly (interleaved rounds, paired differences, medians and p99), memory per idle
session, sessions opened per second, throughput at several concurrencies, time to ready,
and pages of the dashboard's audit explorer over the events the run made (HTTPS, logged
in). Starts its own daemon; the load client is `mcpgate mcp bench`.

Usage: scripts/bench [--rounds N] [--calls N] [--sessions N] [--concurrency 1,8,64] [--seconds S]"""
import argparse
from contextlib import closing
import html
import http.client
import json
import os
import re
import shutil
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "mcpgate")
# /proc reports CPU time in these.
CLK_TCK = os.sysconf("SC_CLK_TCK")
RECORDER = os.path.join(ROOT, "crates", "mcpgate", "tests", "fixtures", "recorder.py")
EVERYTHING = os.path.join(ROOT, ".cache", "npm", "node_modules", "@modelcontextprotocol", "server-everything", "dist", "index.js")
# The peers (installed by scripts/bench).
MCP_PROXY = os.path.join(ROOT, ".cache", "venv-bench", "bin", "mcp-proxy")
SUPERGATEWAY = os.path.join(ROOT, ".cache", "bench-npm", "node_modules", "supergateway", "dist", "index.js")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--sessions", type=int, default=1000, help="idle sessions held open to measure memory per session")
    ap.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 64, 512], help="concurrent sessions for the throughput runs, e.g. 1,8,64,512")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    ap.add_argument("--certificates", type=float, help="certificates issued per second (scripts/bench measures it first), for the report")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mcpgate-bench-")
    # server-everything over Streamable HTTP, for the HTTP upstream path.
    http_port = free_port()
    everything_http = subprocess.Popen(["node", EVERYTHING, "streamableHttp"], env=dict(os.environ, PORT=str(http_port)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(http_port, everything_http)
        run(args, tmp, http_port)
    finally:
        everything_http.terminate()
        everything_http.wait(timeout=10)
        # The daemon's data (a few hundred MB of audit log after a run) goes with it.
        shutil.rmtree(tmp, ignore_errors=True)


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port, proc):
    import socket
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} did not listen")


def run(args, tmp, http_port):
    record = os.path.join(tmp, "record.jsonl")
    config = os.path.join(tmp, "mcpgate.yaml")
    with open(config, "w") as f:
        f.write(f"""version: v1
cluster_name: bench.local
data_dir: {tmp}/data
auth: {{second_factor: off}}
proxy: {{listen: 127.0.0.1:0}}
agent:
  apps:
    - name: fast
      labels: {{env: bench}}
      uri: mcp+stdio://
      mcp: {{command: python3, args: ["{RECORDER}"], env: {{RECORD_FILE: /dev/null}}}}
    - name: everything
      labels: {{env: bench}}
      uri: mcp+stdio://
      mcp: {{command: node, args: ["{EVERYTHING}", "stdio"]}}
    - name: rust
      labels: {{env: bench}}
      uri: mcp+stdio://
      mcp: {{command: "{BIN}", args: [mcp, demo-server]}}
    - name: everything-http
      labels: {{env: bench}}
      uri: mcp+http://127.0.0.1:{http_port}/mcp
""")
    started = time.perf_counter()
    daemon = subprocess.Popen([BIN, "start", "--config", config], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        measure(args, tmp, daemon, started, http_port)
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def measure(args, tmp, daemon, started, http_port):
    banner = {}
    for line in daemon.stdout:
        if ":" in line and line.startswith("  "):
            k, v = line.strip().split(":", 1)
            banner[k] = v.strip()
        if line.startswith("  mcpgate signup"):
            break
    # The banner comes once the proxy listens and the in-process agent's tunnel is up.
    ready_ms = (time.perf_counter() - started) * 1000
    addr, pin = banner["proxy"], banner["CA pin"]
    dd = ["--data-dir", f"{tmp}/data"]
    roles = os.path.join(tmp, "roles.yaml")
    with open(roles, "w") as f:
        f.write("kind: role\nversion: v8\nmetadata: {name: bench}\nspec:\n  allow:\n    app_labels: {env: bench}\n    mcp: {tools: [echo, get_time]}\n")
    subprocess.run([BIN, "admin", "create", "-f", roles, *dd], check=True, capture_output=True)
    token = json.loads(subprocess.run([BIN, "admin", "users", "add", "bench", "--roles", "bench", "--format", "json", *dd], check=True, capture_output=True, text=True).stdout)["token"]
    env = dict(os.environ, MCPGATE_HOME=os.path.join(tmp, "home"), RECORD_FILE="/dev/null")
    pw = "benchmark password 1\n"
    subprocess.run([BIN, "signup", "--proxy", addr, "--ca-pin", pin, "--invite", token, "--password-stdin"], input=pw, env=env, check=True, capture_output=True, text=True)
    subprocess.run([BIN, "login", "--proxy", addr, "--ca-pin", pin, "--user", "bench", "--password-stdin"], input=pw, env=env, check=True, capture_output=True, text=True)

    def bench(*argv):
        """One run of the project's Rust load client; its JSON report."""
        out = subprocess.run([BIN, "mcp", "bench", *argv], env=env, check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    # Memory first, on a daemon that has served one session: its resident set with N more
    # idle, initialized sessions open
    # (the upstream processes are their own and not counted).
    def rss_kib():
        with open(f"/proc/{daemon.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
    bench("rust", "--calls", "10")  # the first session's one-time costs
    before = rss_kib()
    holder = subprocess.Popen([BIN, "mcp", "bench", "rust", "--sessions", str(args.sessions), "--warmup", "1", "--hold"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    held = json.loads(holder.stdout.readline())
    per_session = (rss_kib() - before) / args.sessions
    holder.stdin.close()
    holder.wait(timeout=60)

    def upstreams():
        n = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    n += f.read().rsplit(")", 1)[1].split()[1] == str(daemon.pid)
            except OSError:
                pass
        return n

    # The held sessions' upstreams are stopped before anything is timed.
    deadline = time.time() + 60
    while upstreams() > 0 and time.time() < deadline:
        time.sleep(0.1)
    def cpu_seconds(pid=daemon.pid):
        """User and system CPU of process `pid` so far, in seconds."""
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    targets = [
        ("Rust stdio (`mcpgate mcp demo-server`, get_time)", f"{BIN} mcp demo-server", "rust", "get_time", {}),
        ("the same through the `mcp connect` bridge", f"{BIN} mcp demo-server", f"--direct={BIN} mcp connect rust", "get_time", {}),
        ("fast (python stdio fixture)", f"python3 {RECORDER}", "fast", "echo", {"message": "hi"}),
        ("server-everything (node)", f"node {EVERYTHING} stdio", "everything", "echo", {"message": "hi"}),
    ]
    results = {"latency": [], "http": [], "throughput": []}
    report = ["| upstream | direct p50 µs | via mcpgate p50 / p90 / p99 µs | added p50 µs (paired) | added p90 µs | added p99 µs | calls/s via mcpgate, one session |", "|---|---|---|---|---|---|---|"]
    for label, direct_cmd, app, tool, call_args in targets:
        common = ["--tool", tool, "--args", json.dumps(call_args), "--calls", str(args.calls)]
        diffs, d_runs, g_runs = [], [], []
        for _ in range(args.rounds):
            d = bench("--direct", direct_cmd, *common)
            g = bench(app, *common)
            diffs.append(g["p50_us"] - d["p50_us"])
            d_runs.append(d)
            g_runs.append(g)
        med = lambda runs, k: statistics.median(r[k] for r in runs)
        row = {
            "upstream": label, "app": app,
            "direct_p50_us": med(d_runs, "p50_us"), "direct_p90_us": med(d_runs, "p90_us"), "direct_p99_us": med(d_runs, "p99_us"),
            "gateway_p50_us": med(g_runs, "p50_us"), "gateway_p90_us": med(g_runs, "p90_us"), "gateway_p99_us": med(g_runs, "p99_us"),
            "added_p50_us": statistics.median(diffs), "added_p90_us": med(g_runs, "p90_us") - med(d_runs, "p90_us"),
            "added_p99_us": med(g_runs, "p99_us") - med(d_runs, "p99_us"),
            "calls_per_second_one_session": med(g_runs, "calls_per_second"),
        }
        if app.startswith("--direct="):
            # The `mcp connect` bridge is the client's child here: its CPU over the timed calls.
            ticks = sum(g["child_cpu_ticks"] or 0 for g in g_runs)
            row["bridge_cpu_us_per_call"] = ticks * 1e6 / CLK_TCK / max(sum(g["calls"] for g in g_runs), 1)
            results["bridge_cpu_us_per_call"] = row["bridge_cpu_us_per_call"]
        results["latency"].append(row)
        report.append(f"| {label} | {row['direct_p50_us']:.0f} | {row['gateway_p50_us']:.0f} / {row['gateway_p90_us']:.0f} / {row['gateway_p99_us']:.0f} | {row['added_p50_us']:.0f} | {row['added_p90_us']:.0f} | {row['added_p99_us']:.0f} | {row['calls_per_second_one_session']:.0f} |")
    # The HTTP path: an HTTP client → `mcpgate mcp proxy` → the gateway → the Rust upstream,
    # beside the peers a user would otherwise put in front of the same stdio server (no
    # auth, no policy, no audit): PyPI mcp-proxy and npm supergateway.
    http_report = []
    servers = []
    try:
        gate_http = subprocess.Popen([BIN, "mcp", "proxy", "rust", "--listen", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        servers.append(gate_http)
        paths = [("mcpgate (`mcp proxy` → gateway, audit on)", gate_http.stdout.readline().strip())]
        rust_cmd = f"{BIN} mcp demo-server"
        if os.path.exists(MCP_PROXY):
            port = free_port()
            p = subprocess.Popen([MCP_PROXY, "--host", "127.0.0.1", "--port", str(port), "--", BIN, "mcp", "demo-server"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers.append(p)
            wait_listening(port, p)
            paths.append((f"PyPI mcp-proxy {peer_version('mcp-proxy')}", f"http://127.0.0.1:{port}/mcp"))
        if os.path.exists(SUPERGATEWAY):
            port = free_port()
            p = subprocess.Popen(["node", SUPERGATEWAY, "--stdio", rust_cmd, "--outputTransport", "streamableHttp", "--stateful", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers.append(p)
            wait_listening(port, p)
            paths.append((f"npm supergateway {peer_version('supergateway')} (--stateful)", f"http://127.0.0.1:{port}/mcp"))
        common = ["--tool", "get_time", "--calls", str(args.calls)]
        proxy_cpu, proxy_calls = 0.0, 0
        added = {label: [] for label, _ in paths}
        p50s = {label: [] for label, _ in paths}
        p99s = {label: [] for label, _ in paths}
        for _ in range(args.rounds):
            d = bench("--direct", rust_cmd, *common)
            for label, url in paths:
                before = cpu_seconds(gate_http.pid)
                r = bench("--url", url, *common)
                if url == paths[0][1]:
                    proxy_cpu += cpu_seconds(gate_http.pid) - before
                    proxy_calls += r["calls"]
                added[label].append(r["p50_us"] - d["p50_us"])
                p50s[label].append(r["p50_us"])
                p99s[label].append(r["p99_us"] - d["p99_us"])
        # An HTTP upstream app: the same client over TLS through the gateway to
        # server-everything's Streamable HTTP endpoint, against that endpoint directly.
        echo = ["--tool", "echo", "--args", json.dumps({"message": "hi"}), "--calls", str(args.calls)]
        up_direct, up_gated = [], []
        for _ in range(args.rounds):
            up_direct.append(bench("--url", f"http://127.0.0.1:{http_port}/mcp", *echo))
            up_gated.append(bench("everything-http", *echo))
        http_upstream = (
            statistics.median(r["p50_us"] for r in up_direct),
            statistics.median(r["p50_us"] for r in up_gated),
            statistics.median(g["p50_us"] - d["p50_us"] for d, g in zip(up_direct, up_gated)),
            statistics.median(g["p99_us"] - d["p99_us"] for d, g in zip(up_direct, up_gated)),
        )
        results["http_upstream"] = dict(zip(["direct_p50_us", "gateway_p50_us", "added_p50_us", "added_p99_us"], http_upstream))
        gate_added = statistics.median(added[paths[0][0]])
        # The `mcp proxy` process's own CPU (its sessions' starts included).
        results["mcp_proxy_cpu_us_per_call"] = proxy_cpu * 1e6 / max(proxy_calls, 1)
        for label, _ in paths:
            a = statistics.median(added[label])
            ratio = "" if label == paths[0][0] else f"{gate_added / a:.2f}" if a > 0 else "n/a"
            results["http"].append({
                "path": label, "p50_us": statistics.median(p50s[label]), "added_p50_us": a,
                "added_p99_us": statistics.median(p99s[label]),
                "mcpgate_added_over_this": gate_added / a if label != paths[0][0] and a > 0 else None,
            })
            http_report.append(f"| {label} | {statistics.median(p50s[label]):.0f} | {a:.0f} | {statistics.median(p99s[label]):.0f} | {ratio} |")
    finally:
        for p in servers:
            p.terminate()
            p.wait(timeout=10)
    # Throughput (after the memory figure, which the allocator's warm state would flatter):
    # N sessions over their own TLS connections from one Rust client, each calling as fast
    # as its answers come. The client and the upstreams share the 2 cores with the daemon,
    # so this is what one machine does end to end.
    def index_behind():
        """Stored events the free-text index does not hold yet (it leaves some for later
        while the CPUs are contended), read from the daemon's files; None if unreadable."""
        db = f"{tmp}/data/state.db"
        try:
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
                head = c.execute("SELECT COALESCE(MAX(rowid), 0) FROM audit").fetchone()[0]
            with closing(sqlite3.connect(f"file:{db}-text2?mode=ro", uri=True, timeout=5)) as c:
                lo, hi = c.execute("SELECT indexed_from, indexed_to FROM audit_text_state").fetchone()
            return max(head - hi + lo - 1, 0)
        except (sqlite3.Error, TypeError):
            return None

    for n in args.concurrency:
        cpu = cpu_seconds()
        r = bench("rust", "--sessions", str(n), "--warmup", "5", "--seconds", str(args.seconds))
        # The daemon's CPU over the whole run (sessions opening included) per measured call.
        cpu_us = (cpu_seconds() - cpu) * 1e6 / max(r["calls"], 1)
        results["throughput"].append({"sessions": n, "calls_per_second": r["calls_per_second"], "p50_us": r["p50_us"], "p99_us": r["p99_us"], "daemon_cpu_us_per_call": cpu_us, "text_index_behind_after": index_behind()})
    # The dashboard's audit explorer, end to end, over the events this run made: HTTPS to
    # the daemon, logged in as an auditor, one page per filter.
    behind = index_behind()
    results["dashboard"] = dict(dashboard_pages(addr, pin, tmp, env, dd, index_behind), text_index_behind_before=behind)
    results.update({
        "memory_kib_per_idle_session": per_session, "idle_sessions": args.sessions,
        "sessions_opened_per_second": held["opened_per_second"], "ready_ms": ready_ms,
        "certificates_per_second": args.certificates,
    })
    machine, versions = describe()
    text = "\n".join([
        f"# mcpgate latency and memory, {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} cores",
        "",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in machine.items()) + ".",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        f"{args.rounds} interleaved rounds x {args.calls} sequential `tools/call` per path, from the project's Rust load client (`mcpgate mcp bench`, raw JSON lines); audit on (SQLite, synchronous=normal, the default).",
        "Direct: the client runs the server as its child over stdio. Via mcpgate: the client speaks TLS to the proxy as a logged-in user, as `mcp connect` does.",
        "",
        *report,
        "",
        *([f"The `mcp connect` bridge process itself: {results['bridge_cpu_us_per_call']:.0f} µs of CPU per call (over the timed calls of every round; the daemon's is in the throughput table).", ""] if "bridge_cpu_us_per_call" in results else []),
        "HTTP path: a Streamable HTTP client (the same Rust load client) in front of the Rust upstream (`get_time`), each row paired with that round's direct stdio run. Ratio: what mcpgate adds over what the peer adds (target: at most 0.25).",
        "",
        "| path | p50 µs | added p50 µs (paired) | added p99 µs | mcpgate's added / this one's |",
        "|---|---|---|---|---|",
        *http_report,
        "",
        f"The `mcp proxy` process itself: {results['mcp_proxy_cpu_us_per_call']:.0f} µs of CPU per call (its sessions' starts included).",
        "",
        "HTTP upstream: server-everything over Streamable HTTP (`echo`), called directly over HTTP, and as an app through the gateway (client over TLS, the agent's HTTP transport to it).",
        "",
        "| direct HTTP p50 µs | via mcpgate p50 µs | added p50 µs (paired) | added p99 µs |",
        "|---|---|---|---|",
        "| {:.0f} | {:.0f} | {:.0f} | {:.0f} |".format(*http_upstream),
        "",
        f"Memory: {per_session:.0f} KiB of daemon RSS per open session ({args.sessions} idle sessions after one call each; upstream processes not counted). Sessions opened: {held['opened_per_second']:.0f}/s (TLS, hello, upstream started, initialize).",
        "",
        f"Ready: {ready_ms:.0f} ms from `mcpgate start` on an empty data dir (CAs made, SQLite created) to its banner (proxy listening, agent tunnel up).",
        "",
        "| concurrent sessions (Rust upstream) | calls/s through mcpgate, audit on | p50 µs | p99 µs | daemon CPU µs per call | events the text index left for later, at the end |",
        "|---|---|---|---|---|---|",
        *[f"| {t['sessions']} | {t['calls_per_second']:.0f} | {t['p50_us']:.0f} | {t['p99_us']:.0f} | {t['daemon_cpu_us_per_call']:.0f} | {'?' if t['text_index_behind_after'] is None else format(t['text_index_behind_after'], ',')} |" for t in results["throughput"]],
        "",
        *dashboard_report(results["dashboard"]),
        *([f"Certificates issued per second (one core, user CA, ECDSA P-256): {args.certificates:.0f}", ""] if args.certificates else []),
    ])
    print(text)
    out = os.path.join(ROOT, "target", "bench-report.md")
    with open(out, "w") as f:
        f.write(text)
    with open(os.path.join(ROOT, "target", "bench-report.json"), "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine, "versions": versions,
                   "rounds": args.rounds, "calls_per_round": args.calls, **results}, f, indent=2, ensure_ascii=False)
    print(f"report written to {out} and target/bench-report.json", file=sys.stderr)


def dashboard_pages(addr, pin, tmp, env, dd, index_behind, runs=20):
    """Times pages of the dashboard's audit explorer as a browser loads them: one HTTPS
    connection (kept alive) to the daemon, logged in through the login form as an auditor;
    for each filter, one load to warm up, then the p50 and max of `runs` loads, each read to
    its end. The events are the ones this run made through the gateway."""
    token = json.loads(subprocess.run([BIN, "admin", "users", "add", "viewer", "--roles", "auditor", "--format", "json", *dd], check=True, capture_output=True, text=True).stdout)["token"]
    pw = "dashboard password 1"
    subprocess.run([BIN, "signup", "--proxy", addr, "--ca-pin", pin, "--invite", token, "--password-stdin"],
                   input=pw + "\n", env=dict(env, MCPGATE_HOME=os.path.join(tmp, "viewer")), check=True, capture_output=True, text=True)
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=f"{tmp}/data/host-ca.pem"))

    def load(method, path, cookie="", body=None):
        headers = {"Cookie": cookie}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r, r.read()

    def cookie_of(r, name):
        for c in r.msg.get_all("Set-Cookie") or []:
            if c.startswith(name + "="):
                return c.split(";", 1)[0]
        raise RuntimeError(f"no {name} cookie in the answer to the login")

    r, body = load("GET", "/login")
    csrf = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
    form = urllib.parse.urlencode({"username": "viewer", "password": pw, "csrf": csrf, "next": "/audit"})
    r, _ = load("POST", "/login", cookie_of(r, "__Host-mcpgate_login"), form)
    if r.status != 303:
        raise RuntimeError(f"the dashboard login answered {r.status}")
    session = cookie_of(r, "__Host-mcpgate_session")
    db = f"{tmp}/data/state.db"
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        events = c.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
        # A session from the middle of the log, and its id as free text.
        (sid,) = c.execute("SELECT session FROM audit WHERE session IS NOT NULL AND rowid >= (SELECT MAX(rowid) / 2 FROM audit) LIMIT 1").fetchone()

    def timed(path):
        times = []
        for i in range(runs + 1):
            t = time.perf_counter()
            r, _ = load("GET", path, session)
            if r.status != 200:
                raise RuntimeError(f"GET {path}: {r.status}")
            if i:
                times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times), max(times)

    q = lambda **kv: "/audit?" + urllib.parse.urlencode(kv)
    cases = [
        ("no filter", "/audit"),
        ("user", q(user="bench")),
        ("tool glob `get_*`", q(tool="get_*")),
        ("decision deny", q(decision="deny")),
        ("session", q(session=sid)),
        ("free text: a session id", q(q=sid)),
        ("free text found nowhere", q(q="zqxjv found nowhere")),
    ]
    rows = []
    for label, path in cases:
        p50, most = timed(path)
        rows.append({"page": label, "p50_ms": p50, "max_ms": most})
    # 200 pages down, by the explorer's own "older" links.
    path = "/audit"
    for _ in range(200):
        r, body = load("GET", path, session)
        m = re.search(rb'href="(/audit\?[^"]*after=[^"]*)"', body)
        if not m:
            break
        path = html.unescape(m.group(1).decode())
    p50, most = timed(path)
    rows.append({"page": "no filter, 200 pages down", "p50_ms": p50, "max_ms": most})
    # Free text again once the index holds every event (it gives way while the CPUs are
    # contended, and free text scans what it lacks meanwhile).
    deadline = time.time() + 300
    while index_behind() != 0 and time.time() < deadline:
        time.sleep(0.5)
    if index_behind() == 0:
        for label, path in cases[-2:]:
            p50, most = timed(path)
            rows.append({"page": label + ", the index caught up", "p50_ms": p50, "max_ms": most})
    conn.close()
    return {"events": events, "pages": rows}


def dashboard_report(d):
    return [
        f"Dashboard: one page of the audit explorer (51 events, HTML), end to end: HTTPS with keep-alive, logged in as an auditor, over the {d['events']:,} events this run stored; p50 and max of 20 loads after one (each load also audits the view). Free text scans the events the index does not hold yet: {'?' if d['text_index_behind_before'] is None else format(d['text_index_behind_before'], ',')} as this part began, left by the throughput runs (it catches up meanwhile); the last rows are timed once it holds them all.",
        "",
        "| page | p50 ms | max ms |",
        "|---|---|---|",
        *[f"| {r['page']} | {r['p50_ms']:.1f} | {r['max_ms']:.1f} |" for r in d["pages"]],
        "",
    ]


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def command_version(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return "not found"


def peer_version(peer):
    """The installed version of a peer (scripts/bench pins it)."""
    if peer == "mcp-proxy":
        python = os.path.join(os.path.dirname(MCP_PROXY), "python")
        return command_version(python, "-c", "import importlib.metadata as m; print(m.version('mcp-proxy'))") or "?"
    package = os.path.join(os.path.dirname(os.path.dirname(SUPERGATEWAY)), "package.json")
    return json.loads(read(package, "{}")).get("version", "?")


def describe():
    """The machine and the versions the figures come from. A hop between processes costs
    what waking the other core costs, so the idle settings are part of the machine: on a
    virtual machine whose guest halt polling is off, every wake-up of an idle vCPU is an
    exit to the hypervisor (ARCHITECTURE.md, Where the time goes)."""
    cpuinfo = read("/proc/cpuinfo", "")
    model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), "unknown")
    mem = next((int(l.split()[1]) for l in read("/proc/meminfo", "").splitlines() if l.startswith("MemTotal")), 0)
    u = os.uname()
    machine = {
        "cores": os.cpu_count(), "cpu": model, "memory": f"{mem / 1024 / 1024:.0f} GiB",
        "kernel": f"{u.sysname} {u.release} {u.machine}",
        "virtual machine": "yes" if " hypervisor" in cpuinfo else "no",
        "cpuidle governor": read("/sys/devices/system/cpu/cpuidle/current_governor", read("/sys/devices/system/cpu/cpuidle/current_governor_ro", "none")),
    }
    poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    if poll is not None:
        machine["guest halt polling"] = "off (guest_halt_poll_ns=0)" if poll == "0" else f"up to {int(poll) / 1000:.0f} µs"
    commit = command_version("git", "-C", ROOT, "describe", "--always", "--dirty")
    versions = {
        "mcpgate": f"{command_version(BIN, '--version').split()[-1]} ({commit})",
        "rustc": command_version("rustc", "--version").split(" ", 1)[-1],
        "node": command_version("node", "--version"),
        "python": sys.version.split()[0],
        "server-everything": json.loads(read(os.path.join(os.path.dirname(os.path.dirname(EVERYTHING)), "package.json"), "{}")).get("version", "?"),
        "mcp-proxy": peer_version("mcp-proxy"), "supergateway": peer_version("supergateway"),
    }
    return machine, versions


if __name__ == "__main__":
    main()
