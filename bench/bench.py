#!/usr/bin/env python3
"""Helpers of bench/run.sh: config rendering, readiness probes, process and Envoy snapshots,
result assembly and the report. Standard library only, so the benchmark needs nothing installed
beyond what `./build.sh deps` provides.

Every subcommand prints one result (or nothing) on stdout and exits non-zero with a message on
stderr when something is wrong; run.sh stops at the first failure (set -e).
"""

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import sys
import time
import urllib.parse
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def die(msg):
    print(f"bench: {msg}", file=sys.stderr)
    sys.exit(1)


# ---- ports --------------------------------------------------------------------------------------


def cmd_ports(a):
    # Ports below the kernel's ephemeral range (32768 and up), where outgoing connections take
    # theirs, so a busy client cannot take a server's port between its pick and its bind. All
    # sockets are held open until every port is chosen, so one call never returns a port twice.
    # Another program can still take one before we bind it: the readiness probes then fail
    # loudly instead of measuring the wrong server.
    first, span = 10_000, 22_000
    start = random.randrange(span)
    socks = []
    try:
        for i in range(span):
            if len(socks) == a.count:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", first + (start + i * 7919) % span))
            except OSError:
                s.close()
                continue
            socks.append(s)
        if len(socks) < a.count:
            sys.exit(f"no {a.count} free ports between {first} and {first + span}")
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    finally:
        for s in socks:
            s.close()


# ---- configs ------------------------------------------------------------------------------------


# The HTTP connection manager settings the shipped listeners use, so a baseline differs from its
# scenario only by what the wasm filter does.
HCM_HEAD = """\
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          normalize_path: true
          merge_slashes: true
"""

ADMIN = """\
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
"""

BASELINE_REDIRECT = (
    ADMIN
    + """\
static_resources:
  listeners:
  - name: baseline_redirect
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
"""
    + HCM_HEAD
    + """\
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 307 }}
                # The same Location the filter sends: the owner plus the path as received. It
                # overwrites the one Envoy adds to a 3xx direct_response (the request's own URL).
                response_headers_to_add:
                - header: {{ key: location, value: "http://{location}%REQ(:path)%" }}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
          http_filters:
{wasm}\
{buffer}\
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
)

# The shipped redirect listener holds the headers until the body is read, so the 307 goes out
# after the whole request and the connection stays open. Without it Envoy answers from the
# headers and closes the connection (components.md, "Facts that bite").
BUFFER = """\
          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 65536
"""

# A wasm filter in front of the baseline's chain (bench/floor: the least a proxy-wasm filter does
# to give the sharding filter's answer), to measure what any such filter costs in this Envoy. Its
# configuration is the host:port of the Location it sends.
WASM_FILTER = """\
          - name: floor
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: floor
                root_id: floor
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "{location}"
                vm_config:
                  vm_id: floor
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local: {{ filename: {wasm} }}
"""

BASELINE_PROXY = (
    ADMIN
    + """\
static_resources:
  listeners:
  - name: baseline_proxy
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    per_connection_buffer_limit_bytes: 1048576
    filter_chains:
    - filters:
"""
    + HCM_HEAD
    + """\
          request_timeout: 0s
          stream_idle_timeout: 60s
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route:
                  cluster: pushgateways
                  timeout: 120s
                  retry_policy: {{ num_retries: 0 }}
                  # The raw path: two spellings of one group may land on different pushgateways,
                  # which the sharding filter's grouping key prevents.
                  hash_policy:
                  - header: {{ header_name: ":path" }}
{mirror}          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}"""
)

HASHED_CLUSTER = """\
  - name: {name}
    type: STATIC
    lb_policy: RING_HASH
    connect_timeout: 2s
    per_connection_buffer_limit_bytes: 1048576
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
{endpoints}"""

# Envoy's own cheapest copy of a push (baseline-proxy-mirror): the route mirrors every request to
# a second cluster, the standbys, and answers the client without waiting for the copy's answer.
# The mirror does not apply the route's hash policy: each copy goes to a standby at random, so a
# group can be on several (see distinct-groups).
MIRROR = """\
                  request_mirror_policies:
                  - cluster: standbys
"""


def cmd_render_baseline_redirect(a):
    text = BASELINE_REDIRECT.format(
        admin=a.admin,
        port=a.port,
        prefix="baseline_redirect",
        location=a.location,
        buffer="" if a.no_buffer else BUFFER,
        wasm=WASM_FILTER.format(wasm=a.wasm, location=a.location) if a.wasm else "",
    )
    with open(a.out, "w") as f:
        f.write(text)


def cmd_render_baseline_proxy(a):
    endpoint = "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n"

    def cluster(name, members):
        endpoints = "".join(endpoint.format(*m.rsplit(":", 1)) for m in members.split(","))
        return HASHED_CLUSTER.format(name=name, endpoints=endpoints)

    clusters = cluster("pushgateways", a.members)
    if a.mirror:
        clusters += cluster("standbys", a.mirror)
    text = BASELINE_PROXY.format(
        admin=a.admin, port=a.port, prefix="baseline_proxy", clusters=clusters,
        mirror=MIRROR if a.mirror else "",
    )
    with open(a.out, "w") as f:
        f.write(text)


# ---- probes -------------------------------------------------------------------------------------


def request(method, host, port, path, body=None, timeout=2.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            # A zombie has exited; it only waits to be reaped by run.sh.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def cmd_wait_http(a):
    """Polls until METHOD URL answers STATUS; fails when the deadline passes or a watched
    process exits (a port taken by someone else makes Envoy exit: no point waiting)."""
    url = urllib.parse.urlparse(a.url)
    body = a.body.encode() if a.body is not None else None
    deadline = time.monotonic() + a.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for pid in a.pid or []:
            if not alive(pid):
                die(f"process {pid} exited while waiting for {a.method} {a.url} (see its log)")
        try:
            status, headers, data = request(a.method, url.hostname, url.port, url.path, body)
            if status == a.status:
                if a.header:
                    name, want = a.header.split(":", 1)
                    got = {k.lower(): v for k, v in headers.items()}.get(name.lower(), "")
                    if not got.startswith(want):
                        die(f"{a.method} {a.url}: header {name} is {got!r}, expected {want}...")
                return
            last = f"status {status}: {data[:200]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    die(f"{a.method} {a.url} did not answer {a.status} within {a.timeout} s (last: {last})")


# ---- snapshots ----------------------------------------------------------------------------------


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the command name (which may hold spaces): state is [0], utime [11], stime [12].
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def proc_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def host_cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return {"busy": sum(v[:8]) - idle, "total": sum(v[:8])}


def envoy_stats(admin):
    # Connection and request totals of every HTTP listener and cluster (the record picks its own),
    # and the filter's replication counters.
    pattern = (
        r"^(http\.[a-z_]+\.downstream_(cx|rq)_total|cluster\.[a-z_]+\.upstream_(cx|rq)_total"
        r"|wasmcustom\.dynamic_sharding\.replication(s|_failures)_total)$"
    )
    q = urllib.parse.quote(pattern)
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter={q}", timeout=5) as r:
        text = r.read().decode()
    stats = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            stats[name] = int(value)
    return stats


def cmd_snapshot(a):
    snap = {
        "time": time.monotonic(),
        "host": host_cpu(),
        "envoy_ticks": proc_cpu_ticks(a.envoy_pid),
        "envoy_rss_kb": proc_rss_kb(a.envoy_pid),
        "backend_ticks": sum(proc_cpu_ticks(p) for p in a.backend_pid or []),
        "stats": envoy_stats(a.admin),
    }
    with open(a.out, "w") as f:
        json.dump(snap, f)


def cmd_put_slots(a):
    """Gives member i the standby i through the control API (the replicated scenarios)."""
    members = a.members.split(",")
    standbys = a.standbys.split(",")
    if len(members) != len(standbys):
        die(f"put-slots: {len(members)} members but {len(standbys)} standbys")
    body = json.dumps({
        "version": int(time.time() * 1000),
        "members": members,
        "slots": {m: {"active": m, "standby": s} for m, s in zip(members, standbys)},
    })
    url = urllib.parse.urlparse(a.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("PUT", url.path, body=body, headers={"authorization": f"Bearer {a.token}"})
        r = conn.getresponse()
        text = r.read()
    finally:
        conn.close()
    if r.status != 200:
        die(f"PUT {a.url}: {r.status} {text[:300]!r}")


def group_names(member):
    """The grouping labels of every group a pushgateway holds, each as one hashable value."""
    with urllib.request.urlopen(f"http://{member}/api/v1/metrics", timeout=120) as r:
        data = json.load(r).get("data") or []
    return {tuple(sorted(g.get("labels", {}).items())) for g in data}


def cmd_distinct_groups(a):
    """How many distinct groups some pushgateways hold between them (baseline-proxy-mirror's
    standbys: the mirror picks one at random per push, so a group can be on several). Waits up to
    `timeout` for `want` (the mirror's copies are sent after the client's answer), then prints
    the count; fewer than `want` fails."""
    deadline = time.monotonic() + a.timeout
    while True:
        names = set()
        for m in a.members.split(","):
            names |= group_names(m)
        if len(names) >= a.want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if len(names) < a.want:
        die(f"the pushgateways {a.members} hold {len(names)} distinct groups, expected {a.want}")
    print(len(names))


def cmd_groups(a):
    """Group count per pushgateway: each of the 10,000 paths is one group and must exist on
    exactly one pushgateway, so the sum tells whether every push landed once."""
    print(json.dumps(group_counts(a.members)))


def run_cmd(*cmd):
    """A command's output (stdout and stderr: some tools print their version on stderr), or ""."""
    import subprocess

    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip()
    except OSError:
        return ""


def machine_facts(root, envoy, wasm):
    """What every benchmark's figures depend on: the machine, how busy it was, Envoy, the build."""
    import hashlib

    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open(wasm, "rb") as f:
        wasm_sha = hashlib.sha256(f.read()).hexdigest()
    rev = run_cmd("git", "-C", root, "rev-parse", "--short", "HEAD")
    # Others edit the tree while benchmarks run: say whether the build may include local changes.
    dirty = run_cmd("git", "-C", root, "status", "--porcelain", "--untracked-files=no")
    # Other work on the machine (builds, tests) takes CPU from what is measured: sample how busy
    # it is before anything of ours runs, so a noisy run can be recognised afterwards.
    idle_before = host_cpu()
    time.sleep(1)
    idle_after = host_cpu()
    total = max(1, idle_after["total"] - idle_before["total"])
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host_busy_pct_before": round(100.0 * (idle_after["busy"] - idle_before["busy"]) / total, 1),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": os.uname().release,
        "loadavg_before": open("/proc/loadavg").read().split()[:3],
        "envoy_version": run_cmd(envoy, "--version").split("version:")[-1].strip(),
        "wasm_sha256": wasm_sha,
        "git": rev + (" (with local changes)" if dirty else ""),
    }


def cmd_meta(a):
    """What the figures depend on: the machine, the binaries, the build and the load settings."""
    wrk_version = run_cmd(a.wrk, "-v")
    meta = machine_facts(a.root, a.envoy, a.wasm) | {
        "envoy_concurrency": a.concurrency,
        "wrk_version": wrk_version.splitlines()[0] if wrk_version else "",
        "rounds": a.rounds,
        "pushgateway_consistency_check": bool(a.pushgateway_check),
        "redirect_members": a.members,
        "groups": a.groups,
        "body_bytes": a.body_bytes,
        "rate": a.rate,
        "wrk": {
            "threads": a.threads,
            "connections": a.connections,
            "duration_s": a.duration,
            "warmup_s": a.warmup,
        },
    }
    with open(a.out, "w") as f:
        json.dump(meta, f)


def cmd_wrk(a):
    """Runs wrk and appends its own CPU time to its output. On 2 shared cores the load generator
    may be what limits requests/s; its CPU use (from wait4, exact for this child alone) shows it."""
    import signal
    import subprocess

    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    with open(a.out, "w") as out:
        start = time.monotonic()
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        # run.sh stops this helper by PID on exit: pass it on so wrk never outlives the run.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: child.terminate())
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - start
        cpu = {"user_s": usage.ru_utime, "sys_s": usage.ru_stime, "wall_s": wall}
        out.write("BENCH_WRK_CPU " + json.dumps(cpu) + "\n")
    sys.exit(os.waitstatus_to_exitcode(status))


# ---- results ------------------------------------------------------------------------------------


def parse_wrk(path):
    result = cpu = None
    with open(path) as f:
        for line in f:
            if line.startswith("BENCH_JSON "):
                result = json.loads(line[len("BENCH_JSON "):])
            elif line.startswith("BENCH_WRK_CPU "):
                cpu = json.loads(line[len("BENCH_WRK_CPU "):])
    if result is None:
        die(f"{path}: no BENCH_JSON line from put.lua (wrk failed?)")
    result["cpu"] = cpu
    return result


def cmd_record(a):
    """One scenario's result from wrk's output and the snapshots around the measured run."""
    w = parse_wrk(a.wrk)
    warm = parse_wrk(a.warmup)
    with open(a.before) as f:
        before = json.load(f)
    with open(a.after) as f:
        after = json.load(f)
    requests = w["requests"]
    seconds = w["duration_us"] / 1e6

    def delta(name):
        return after["stats"].get(name, 0) - before["stats"].get(name, 0)

    host_total = after["host"]["total"] - before["host"]["total"]
    per_1k = 1000.0 / CLK_TCK / (requests / 1000.0) if requests else 0.0
    r = {
        "scenario": a.scenario,
        "round": a.round,
        "url": a.url,
        "expected_status": a.status,
        "requests": requests,
        "seconds": round(seconds, 3),
        "rps": round(requests / seconds, 1) if seconds else 0.0,
        "latency_ms": {k: round(v / 1000.0, 3) for k, v in w["latency_us"].items()},
        "statuses": {str(k): v for k, v in w["statuses"].items()},
        "unexpected_status": w["unexpected_status"] + warm["unexpected_status"],
        "socket_errors": w["errors"],
        "envoy_cpu_ms_per_1k": round((after["envoy_ticks"] - before["envoy_ticks"]) * per_1k, 3),
        "envoy_rss_mb": round(after["envoy_rss_kb"] / 1024.0, 1),
        # Share of one core wrk used: near 100 % means the load generator set the pace.
        "wrk_cpu_pct": round(100.0 * (w["cpu"]["user_s"] + w["cpu"]["sys_s"]) / w["cpu"]["wall_s"], 1)
        if w["cpu"]
        else None,
        "host_busy_pct": round(100.0 * (after["host"]["busy"] - before["host"]["busy"]) / host_total, 1)
        if host_total
        else None,
        # Connections Envoy accepted during the measured run. wrk opens --connections plus one
        # (it first connects once to check the address), so anything above that means Envoy
        # closed connections and wrk had to reconnect.
        "downstream_cx": delta(f"http.{a.prefix}.downstream_cx_total"),
        "reconnects": max(0, delta(f"http.{a.prefix}.downstream_cx_total") - a.connections - 1),
        "downstream_rq": delta(f"http.{a.prefix}.downstream_rq_total"),
    }
    if a.cluster:
        r["upstream_cx"] = delta(f"cluster.{a.cluster}.upstream_cx_total")
        r["upstream_rq"] = delta(f"cluster.{a.cluster}.upstream_rq_total")
        r["pushgateway_cpu_ms_per_1k"] = round(
            (after["backend_ticks"] - before["backend_ticks"]) * per_1k, 3
        )
    if a.groups:
        r["groups_per_pushgateway"] = json.loads(a.groups)
        r["copies"] = a.copies
    if a.standby_groups is not None:
        r["standby_groups_distinct"] = a.standby_groups
    r["rate"] = a.rate
    if "wasmcustom.dynamic_sharding.replications_total" in after["stats"]:
        r["replications"] = delta("wasmcustom.dynamic_sharding.replications_total")
        r["replication_failures"] = delta("wasmcustom.dynamic_sharding.replication_failures_total")
    with open(a.out, "a") as f:
        f.write(json.dumps(r) + "\n")
    # run.sh fails the run on this, after the record is written (so the JSON shows what came).
    if a.rate and r["rps"] < 0.98 * a.rate:
        die(
            f"{a.scenario}: {r['rps']:.0f} req/s achieved, short of the {a.rate} req/s asked "
            "(BENCH_RATE): this scenario cannot sustain that rate here; lower it"
        )
    bad = r["unexpected_status"]
    errs = sum(w["errors"][k] for k in ("connect", "read", "write"))
    if bad or errs:
        die(
            f"{a.scenario}: {bad} responses were not {a.status} (statuses {r['statuses']}), "
            f"socket errors {w['errors']}"
        )


def median_record(runs):
    """The median of every number over rounds (each metric on its own)."""
    if len(runs) == 1:
        return dict(runs[0])
    out = dict(runs[-1])
    for key in ("rps", "envoy_cpu_ms_per_1k", "envoy_rss_mb", "host_busy_pct", "wrk_cpu_pct", "reconnects"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            out[key] = statistics.median(vals)
    out["latency_ms"] = {
        k: statistics.median(r["latency_ms"][k] for r in runs) for k in runs[0]["latency_ms"]
    }
    out["rps_min"] = min(r["rps"] for r in runs)
    out["rps_max"] = max(r["rps"] for r in runs)
    return out


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def cmd_report(a):
    with open(a.records) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    with open(a.meta) as f:
        meta = json.load(f)
    order = []
    by = {}
    for r in runs:
        if r["scenario"] not in by:
            order.append(r["scenario"])
        by.setdefault(r["scenario"], []).append(r)
    summary = {s: median_record(by[s]) for s in order}

    comparisons = []
    # redirect/floor-redirect: what the filter costs above the least any proxy-wasm filter giving
    # the same answer costs (the goal is at most 1.10 in CPU and instructions).
    pairs = (
        ("redirect", "floor-redirect"),
        ("floor-redirect", "baseline-redirect"),
        ("redirect", "baseline-redirect"),
        ("redirect", "baseline-redirect-close"),
        ("proxy", "baseline-proxy"),
        # What replication to a standby costs, per push (the goal is at most 1.6 in CPU).
        ("redirect-replicated", "redirect"),
        ("proxy-replicated", "proxy"),
        # Envoy's own mirror: the least a copy of each push costs in Envoy (it is not waited for).
        ("baseline-proxy-mirror", "baseline-proxy"),
        ("proxy-replicated", "baseline-proxy-mirror"),
    )
    for scen, base in pairs:
        if scen in summary and base in summary:
            s, b = summary[scen], summary[base]
            comparisons.append(
                {
                    "name": f"{scen}/{base}",
                    "rps": ratio(s["rps"], b["rps"]),
                    "p99": ratio(s["latency_ms"]["p99"], b["latency_ms"]["p99"]),
                    "envoy_cpu_per_request": ratio(s["envoy_cpu_ms_per_1k"], b["envoy_cpu_ms_per_1k"]),
                }
            )

    result = {"machine": meta, "scenarios": summary, "comparisons": comparisons, "runs": runs}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    m = meta
    print()
    print(
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}; {m['date']}; "
        f"busy {m['host_busy_pct_before']}% before the run, load average {' '.join(m['loadavg_before'])}"
    )
    print(
        f"envoy {m['envoy_version']}, --concurrency {m['envoy_concurrency']}; "
        f"wasm sha256 {m['wasm_sha256'][:16]}; tree {m['git']}"
    )
    print(
        f"wrk: {m['wrk']['threads']} thread(s), {m['wrk']['connections']} connections, "
        f"{m['wrk']['duration_s']} s after {m['wrk']['warmup_s']} s warm-up, "
        f"{m['rounds']} round(s){' (medians)' if m['rounds'] > 1 else ''}; "
        f"{'paced at ' + str(m['rate']) + ' req/s, ' if m.get('rate') else ''}"
        f"PUT of {m['body_bytes']} B to {m['groups']:,} groups, {m['redirect_members']} members in redirect "
        f"scenarios; pushgateway consistency check "
        f"{'on' if m['pushgateway_consistency_check'] else 'off'}"
    )
    print()
    head = ("scenario", "req/s", "p50 ms", "p99 ms", "envoy CPU ms/1k", "RSS MB", "host busy", "wrk CPU",
            "conns", "upstream conns")
    rows = []
    for s in order:
        r = summary[s]
        rows.append(
            (
                s,
                f"{r['rps']:.0f}",
                f"{r['latency_ms']['p50']:.2f}",
                f"{r['latency_ms']['p99']:.2f}",
                f"{r['envoy_cpu_ms_per_1k']:.1f}",
                f"{r['envoy_rss_mb']:.0f}",
                f"{r['host_busy_pct']:.0f}%" if r.get("host_busy_pct") is not None else "-",
                f"{r['wrk_cpu_pct']:.0f}%" if r.get("wrk_cpu_pct") is not None else "-",
                str(r["downstream_cx"]),
                str(r["upstream_cx"]) if "upstream_cx" in r else "-",
            )
        )
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    for cells in (head, *rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    if comparisons:
        print()
        for c in comparisons:
            print(
                f"{c['name']}: req/s x{c['rps']}, p99 x{c['p99']}, "
                f"envoy CPU per request x{c['envoy_cpu_per_request']}"
            )
    notes = []
    for s in order:
        r = summary[s]
        if r["reconnects"]:
            notes.append(
                f"{s}: Envoy accepted {r['downstream_cx']} connections for {m['wrk']['connections']} "
                f"wrk connections: it closed connections and wrk reconnected"
            )
        if "groups_per_pushgateway" in r:
            g = r["groups_per_pushgateway"]
            # The bench groups plus the readiness probe's; each group must be on one pushgateway
            # (on one active and its standby when replicated: two copies).
            want = (m["groups"] + 1) * r.get("copies", 1)
            verdict = {True: "every group once", False: f"expected {want}"}[sum(g) == want]
            notes.append(f"{s}: groups per pushgateway {g} (sum {sum(g)}: {verdict})")
        if "standby_groups_distinct" in r:
            d, want = r["standby_groups_distinct"], sum(r.get("groups_per_pushgateway", []))
            verdict = "every group of the actives" if d == want else f"expected {want}"
            notes.append(f"{s}: the standbys hold {d} distinct groups between them ({verdict})")
        if r.get("replication_failures"):
            notes.append(
                f"{s}: {r['replication_failures']} of {r['replications']} replications failed: "
                "the standbys did not take every push (see Envoy's log)"
            )
        if r["socket_errors"].get("timeout"):
            notes.append(f"{s}: {r['socket_errors']['timeout']} wrk timeouts")
        if "rps_min" in r:
            notes.append(f"{s}: req/s over {len(by[s])} rounds from {r['rps_min']:.0f} to {r['rps_max']:.0f}")
    if m["host_busy_pct_before"] > 10:
        notes.append(
            f"the machine was {m['host_busy_pct_before']}% busy before the run (other work): "
            "the figures are noisier than usual; run again on an idle machine"
        )
    if notes:
        print()
        for n in notes:
            print("note: " + n)
    print()
    print(f"results: {a.out}")


# ---- instruction counts (bench/callgrind.sh) ------------------------------------------------------


def cmd_load(a):
    """Exactly N keep-alive PUTs over 4 connections, each answer checked: the fixed amount of
    work callgrind counts instructions over."""
    conns = [http.client.HTTPConnection("127.0.0.1", a.port, timeout=120) for _ in range(4)]
    for i in range(a.requests):
        c = conns[i % 4]
        c.request("PUT", f"/metrics/job/bench_{(i + a.offset) % 10000}", body=b"m 1\n")
        r = c.getresponse()
        r.read()
        if r.status != a.status:
            die(f"request {i}: status {r.status}, expected {a.status}")
    for c in conns:
        c.close()


def cmd_events(a):
    """Every event of a callgrind dump (instructions, and cache misses when simulated), per
    request, from its totals line."""
    import glob
    import subprocess

    dumps = sorted(glob.glob(a.dump + "*"), key=os.path.getsize)
    names, totals = [], []
    with open(dumps[-1]) as f:
        for line in f:
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith("totals:"):
                totals = [int(x) for x in line.split()[1:]]
    if not names or len(names) != len(totals):
        die(f"no events or totals line in {dumps[-1]}")
    print(json.dumps({n: round(t / a.requests) for n, t in zip(names, totals)}))


def callgrind_functions(dump):
    """(function, object, instructions) of every function in a callgrind dump (the largest file
    of the dump's parts). The Envoy binary is stripped, so its functions are named by address;
    JIT-compiled wasm runs in anonymous mappings at high addresses, which move between runs, so
    it is one entry, "wasm (JIT)"."""
    import glob
    import re
    import subprocess

    dumps = sorted(glob.glob(dump + "*"), key=os.path.getsize)
    out = subprocess.run(["callgrind_annotate", "--threshold=100", dumps[-1]],
                         capture_output=True, text=True, check=True).stdout
    functions = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+)", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        ir = int(m.group(1).replace(",", ""))
        function = m.group(2)
        obj = line.rsplit("[", 1)[-1].rstrip("]") if "[" in line else "?"
        if obj == "???":
            try:
                address = int(function.split(":")[1].split("'")[0], 16)
            except (IndexError, ValueError):
                address = 0
            # Low addresses: code of the Envoy binary valgrind did not map to it (part of V8).
            obj = "envoy" if address < 0x10000000 else "wasm (JIT)"
            if obj == "wasm (JIT)":
                function = obj
        key = (function, os.path.basename(obj))
        functions[key] = functions.get(key, 0) + ir
    return [(f, o, ir) for (f, o), ir in functions.items()]


def cmd_instructions(a):
    """Instructions per request from a callgrind dump, split by where they ran: Envoy's own code
    (V8 included), the JIT-compiled wasm, libc."""
    parts = {}
    for _, obj, ir in callgrind_functions(a.dump):
        parts[obj] = parts.get(obj, 0) + ir
    total = sum(parts.values())
    result = {"scenario": a.scenario, "requests": a.requests,
              "instructions_per_request": round(total / a.requests),
              "by_object": {k: round(v / a.requests) for k, v in sorted(parts.items(), key=lambda x: -x[1])}}
    print(json.dumps(result))


def cmd_callgrind_diff(a):
    """Where two callgrind dumps of the same Envoy differ, function by function, per request
    (bench/callgrind.sh with BENCH_CG_KEEP keeps them): e.g. the filter against the floor."""
    def per_function(dump):
        return {(f, o): ir / a.requests for f, o, ir in callgrind_functions(dump)}

    x, y = per_function(a.dump), per_function(a.against)
    diff = sorted(((x.get(k, 0) - y.get(k, 0), k) for k in set(x) | set(y)), key=lambda d: -abs(d[0]))
    print(f"{'difference':>10}  {'this':>9}  {'against':>9}  function [object]")
    for d, k in diff[: a.top]:
        print(f"{d:>+10,.0f}  {x.get(k, 0):>9,.0f}  {y.get(k, 0):>9,.0f}  {k[0]} [{k[1]}]")
    print(f"{sum(x.values()) - sum(y.values()):>+10,.0f}  {sum(x.values()):>9,.0f}  {sum(y.values()):>9,.0f}  in all")


def cmd_instruction_ratios(a):
    """The ratios of bench/callgrind.sh's scenarios that ran, from its JSON lines."""
    with open(a.lines) as f:
        ipr = {r["scenario"]: r["instructions_per_request"] for r in map(json.loads, f) if r}
    pairs = (("redirect", "floor-redirect"), ("floor-redirect", "baseline-redirect"),
             ("redirect", "baseline-redirect"), ("proxy", "baseline-proxy"),
             ("redirect-replicated", "redirect"), ("proxy-replicated", "proxy"),
             ("baseline-proxy-mirror", "baseline-proxy"), ("proxy-replicated", "baseline-proxy-mirror"))
    for scen, base in pairs:
        if scen in ipr and base in ipr:
            print(f"{scen}/{base}: instructions per request x{ipr[scen] / ipr[base]:.3f} "
                  f"({ipr[scen]:,} against {ipr[base]:,}, +{ipr[scen] - ipr[base]:,})")


# ---- cluster throughput (bench/cluster.sh) -------------------------------------------------------


def group_counts(members):
    counts = []
    for m in members.split(","):
        with urllib.request.urlopen(f"http://{m}/api/v1/metrics", timeout=120) as r:
            counts.append(len(json.load(r).get("data") or []))
    return counts


def cmd_wait_groups(a):
    """Waits until the pushgateways hold `total` groups between them (a push answered 202 is
    stored after its answer); more than that means a group is on two of them."""
    deadline = time.monotonic() + a.timeout
    while True:
        counts = group_counts(a.members)
        if sum(counts) == a.total:
            return
        if sum(counts) > a.total:
            die(f"the pushgateways hold {counts} groups, {sum(counts)} in all for {a.total} pushed: "
                "a group is on more than one")
        if time.monotonic() > deadline:
            die(f"the pushgateways hold {counts} groups after {a.timeout} s, expected {a.total} in all")
        time.sleep(1)


def cmd_rss(a):
    print(json.dumps([proc_rss_kb(p) for p in a.pids]))


def cmd_cluster_meta(a):
    pg_version = run_cmd(a.pushgateway, "--version").splitlines()
    meta = machine_facts(a.root, a.envoy, a.wasm) | {
        "pushgateway_version": pg_version[0] if pg_version else "",
        "envoy_concurrency": a.concurrency,
        "connections": a.connections,
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "idle_s": a.idle,
        "min_pushes": a.min_pushes,
        "metrics_per_push": a.metrics,
    }
    with open(a.out, "w") as f:
        json.dump(meta, f)


def cmd_cluster_record(a):
    """One measurement of bench/cluster.sh: the load generator's result, per push."""
    with open(a.result) as f:
        r = json.load(f)
    counts = json.loads(a.counts)
    if sum(counts) != a.groups:
        die(f"{a.mode}, {a.size} pushgateway(s): they hold {counts} groups after the run, "
            f"{sum(counts)} in all for {a.groups} pushed: every group must be on exactly one")
    pushes = r["pushes"]
    if not pushes:
        die(f"{a.mode}, {a.size} pushgateway(s), {a.groups} groups: no push ended in the window")
    # Envoy's and the client's timers and stats run whether pushes come or not: at a few pushes a
    # second they would be most of "their CPU per push", so their idle rate (measured before the
    # warm-up) is taken out. Not the pushgateways': idle, they only collect garbage, which pushes
    # (and the group count's listing just before) made.
    idle_s = r.get("idle_seconds") or 0
    ms_per_push, raw = {}, {}
    for part, ms in r["cpu_ms"].items():
        idle_ms = r["idle_cpu_ms"].get(part, 0) * r["seconds"] / idle_s if idle_s and part != "pushgateways" else 0
        raw[part] = round(ms / pushes, 4)
        ms_per_push[part] = round(max(0.0, ms - idle_ms) / pushes, 4)
    empty, loaded = json.loads(a.empty_rss), json.loads(a.loaded_rss)
    rec = {
        "groups": a.groups,
        "size": a.size,
        "mode": a.mode,
        "groups_per_pushgateway": counts,
        "pushes": pushes,
        "seconds": round(r["seconds"], 2),
        "pushes_per_s": round(r["pushes_per_s"], 3),
        "latency_ms": r["latency_ms"],
        "cpu_ms_per_push": ms_per_push,
        "cpu_ms_per_push_with_idle": raw,
        "cpu_ms": r["cpu_ms"],
        "idle_cpu_ms": r["idle_cpu_ms"],
        "idle_seconds": idle_s,
        "pushgateway_rss_kb": {"empty": empty, "loaded": loaded, "after_run": r["rss_kb"]},
        "fill_s": a.fill_s,
        "load_s": a.load_s,
    }
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")


def rate_text(per_s):
    """A rate with the digits that mean something, from 0.12 to 512."""
    return f"{per_s:.2f}" if per_s < 10 else f"{per_s:.1f}" if per_s < 100 else f"{per_s:.0f}"


def cmd_cluster_report(a):
    with open(a.records) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    with open(a.meta) as f:
        m = json.load(f)
    alone = {r["groups"]: r for r in recs if r["mode"] == "alone"}
    print()
    print(f"machine: {m['nproc']} CPUs, {m['cpu_model']}; {m['date']}; busy {m['host_busy_pct_before']}% "
          f"before the run, load average {' '.join(m['loadavg_before'])}")
    print(f"envoy {m['envoy_version']}, --concurrency {m['envoy_concurrency']}; {m['pushgateway_version']}; "
          f"wasm sha256 {m['wasm_sha256'][:16]}; tree {m['git']}")
    print(f"load: bench/pushload, {m['connections']} pushes in flight (closed loop), PUT of {m['metrics_per_push']} "
          f"gauges per push, {m['duration_s']} s (at least {m['min_pushes']} pushes) after {m['warmup_s']} s "
          "warm-up; pushgateway consistency check on")
    print(f"Envoy's and the client's CPU per push leave out their idle CPU (measured over {m.get('idle_s', 0)} s "
          "before each warm-up)")
    print()
    head = ("groups", "setup", "pushes/s", "x alone", "p50 ms", "p99 ms", "pushgateway CPU ms/push",
            "Envoy CPU ms/push", "client CPU ms/push", "groups per pushgateway", "pushgateway RSS MB")
    # RSS is read at the end of the measured window, under load: the check's gather of every group
    # on each push grows the Go heap well above what the groups alone take.
    rows = []
    sizing = {}
    points = []  # (groups held, RSS MB under load), one per setup
    for r in recs:
        cpu = r["cpu_ms_per_push"]
        base = alone.get(r["groups"])
        speedup = f"{r['pushes_per_s'] / base['pushes_per_s']:.1f}" if base and base["pushes_per_s"] else "-"
        setup = "alone" if r["mode"] == "alone" else f"{r['mode']}, {r['size']}"
        rss = r["pushgateway_rss_kb"]
        per_pg = r["groups"] / r["size"]
        under_load = [kb / 1024 for k, kb in rss["after_run"].items() if k.startswith("pushgateways:") and kb]
        rows.append((
            f"{r['groups']:,}", setup, rate_text(r["pushes_per_s"]), speedup,
            f"{r['latency_ms']['p50']:.1f}", f"{r['latency_ms']['p99']:.1f}",
            f"{cpu.get('pushgateways', 0):.2f}", f"{cpu['envoy']:.3f}" if "envoy" in cpu else "-",
            f"{cpu.get('client', 0):.3f}", f"{per_pg:,.0f}",
            f"{max(under_load):.0f}",
        ))
        # Sizing: what one pushgateway costs per push and holds, by the groups it holds.
        mean_rss = statistics.mean(under_load)
        sizing.setdefault(round(per_pg), []).append((cpu.get("pushgateways", 0), mean_rss))
        points.append((per_pg, mean_rss))
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    for cells in (head, *rows):
        print("  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    print()
    print("sizing, per pushgateway (consistency check on):")
    print("groups held  CPU ms/push  pushes/s per core  RSS MB under load")
    summary = {"by_groups_held": []}
    for per_pg in sorted(sizing):
        cpu = statistics.median(c for c, _ in sizing[per_pg])
        mem = statistics.median(x for _, x in sizing[per_pg])
        rate = 1000.0 / cpu if cpu else 0.0
        summary["by_groups_held"].append({"groups_per_pushgateway": per_pg, "cpu_ms_per_push": cpu,
                                          "pushes_per_s_per_core": rate, "rss_mb": mem})
        print(f"{per_pg:>11,}  {cpu:>11.2f}  {rate_text(rate):>17}  {mem:>17.0f}")
    if len({c for c, _ in points}) > 1:
        # Memory per 1k groups: the least-squares slope of RSS over groups held (the intercept is
        # the Go runtime's own, paid once per pushgateway).
        n = len(points)
        mx = sum(c for c, _ in points) / n
        my = sum(y for _, y in points) / n
        slope = sum((c - mx) * (y - my) for c, y in points) / sum((c - mx) ** 2 for c, _ in points)
        summary["rss_mb_per_1k_groups"] = slope * 1000
        summary["rss_mb_intercept"] = my - slope * mx
        print(f"memory: {slope * 1000:.1f} MB of RSS under load per 1,000 groups held, on about "
              f"{my - slope * mx:.0f} MB for the pushgateway itself (least squares over {n} setups)")
    notes = []
    if m["host_busy_pct_before"] > 10:
        notes.append(f"the machine was {m['host_busy_pct_before']}% busy before the run (other work): "
                     "the figures are noisier than usual; run again on an idle machine")
    for r in recs:
        if r["seconds"] > m["duration_s"] + 1:
            notes.append(f"{r['groups']:,} groups, {r['mode']} {r['size']}: window {r['seconds']:.0f} s "
                         f"to reach {r['pushes']} pushes")
    if notes:
        print()
        for n in notes:
            print("note: " + n)
    result = {"machine": m, "records": recs, "sizing": summary}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print()
    print(f"results: {a.out}")


# ---- member-list updates on the workers --------------------------------------------------------


def cmd_apply(a):
    """Pushes member lists of each size through the control API and reads, from Envoy's log, how
    long each worker took to apply them (read the shared data, decode, rebuild the ring): the
    filter logs it with every change. Each size is pushed `rounds` times, alternating between two
    different lists of that size so that every push really changes the ring. The listeners of one
    thread share its ring: the first to apply an update builds it, the others reuse it, so the
    figure per thread and update is the longest of its lines."""
    results = {}
    version = 1
    lines_seen = 0
    for spec in a.sizes:
        took = []
        # "N": alternate between two lists of N members that share none; "N+1": one member joins
        # and leaves a list of N (what a scale-out or a drain does to the ring).
        size, _, joins = spec.partition("+")
        size = int(size)
        for r in range(a.rounds):
            if joins:
                members = [f"127.0.0.1:{20000 + i}" for i in range(size + (r % 2) * int(joins))]
            else:
                base = 20000 + (r % 2) * 5000
                members = [f"127.0.0.1:{base + i}" for i in range(size)]
            body = json.dumps({"version": version, "members": members}).encode()
            conn = http.client.HTTPConnection("127.0.0.1", a.control, timeout=30)
            conn.request("PUT", "/-/sharding/members", body=body,
                         headers={"authorization": f"Bearer {a.token}", "content-type": "application/json"})
            resp = conn.getresponse()
            text = resp.read()
            conn.close()
            if resp.status != 200:
                die(f"member update of {size} members answered {resp.status}: {text[:200]!r}")
            # Every worker applies it at its next request or tick (1 s): wait for one line per
            # worker and listener of this version.
            want = f"member list version {version} ("
            deadline = time.monotonic() + 30
            while True:
                with open(a.log) as f:
                    lines = [l for l in f.read().splitlines() if want in l and "applied in" in l]
                if len(lines) >= a.expect_lines:
                    break
                if time.monotonic() > deadline:
                    die(f"only {len(lines)} of {a.expect_lines} workers logged version {version} within 30 s")
                time.sleep(0.2)
            per_thread = {}
            for l in lines:
                # Envoy's log lines start with [time][thread id][level][component].
                thread = l.split("][", 2)[1]
                ms = float(l.rsplit("applied in ", 1)[1].split(" ms")[0])
                per_thread[thread] = max(per_thread.get(thread, 0.0), ms)
            took += per_thread.values()
            version += 1
        took.sort()
        results[spec] = {
            "samples": len(took),
            "median_ms": statistics.median(took),
            "max_ms": took[-1],
        }
    print(json.dumps(results))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("ports")
    s.add_argument("count", type=int)
    s.set_defaults(f=cmd_ports)


    s = sub.add_parser("render-baseline-redirect")
    s.add_argument("--out", required=True)
    s.add_argument("--port", required=True)
    s.add_argument("--admin", required=True)
    s.add_argument("--location", required=True, help="host:port the 307 points at")
    s.add_argument("--no-buffer", action="store_true")
    s.add_argument("--wasm", help="a wasm filter to put in front (the floor scenario)")
    s.set_defaults(f=cmd_render_baseline_redirect)

    s = sub.add_parser("render-baseline-proxy")
    s.add_argument("--out", required=True)
    s.add_argument("--port", required=True)
    s.add_argument("--admin", required=True)
    s.add_argument("--members", required=True)
    s.add_argument("--mirror", help="host:port,... of standbys every request is mirrored to")
    s.set_defaults(f=cmd_render_baseline_proxy)

    s = sub.add_parser("wait-http")
    s.add_argument("method")
    s.add_argument("url")
    s.add_argument("status", type=int)
    s.add_argument("--body")
    s.add_argument("--header", help="name:prefix the answer must carry")
    s.add_argument("--timeout", type=float, default=30)
    s.add_argument("--pid", type=int, action="append")
    s.set_defaults(f=cmd_wait_http)

    s = sub.add_parser("snapshot")
    s.add_argument("--out", required=True)
    s.add_argument("--envoy-pid", type=int, required=True)
    s.add_argument("--backend-pid", type=int, action="append")
    s.add_argument("--admin", required=True)
    s.set_defaults(f=cmd_snapshot)

    s = sub.add_parser("wrk")
    s.add_argument("--out", required=True)
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(f=cmd_wrk)

    s = sub.add_parser("distinct-groups")
    s.add_argument("--members", required=True)
    s.add_argument("--want", type=int, required=True)
    s.add_argument("--timeout", type=float, default=10)
    s.set_defaults(f=cmd_distinct_groups)

    s = sub.add_parser("groups")
    s.add_argument("--members", required=True)
    s.set_defaults(f=cmd_groups)

    s = sub.add_parser("put-slots")
    s.add_argument("--url", required=True, help="the control API's members URL")
    s.add_argument("--token", required=True)
    s.add_argument("--members", required=True, help="host:port,...")
    s.add_argument("--standbys", required=True, help="host:port,..., one per member")
    s.set_defaults(f=cmd_put_slots)

    s = sub.add_parser("record")
    for name in ("scenario", "url", "prefix", "wrk", "warmup", "before", "after", "out"):
        s.add_argument(f"--{name}", required=True)
    s.add_argument("--round", type=int, default=1)
    s.add_argument("--status", type=int, required=True)
    s.add_argument("--connections", type=int, required=True)
    s.add_argument("--cluster")
    s.add_argument("--groups")
    s.add_argument("--copies", type=int, default=1, help="copies of each group among the pushgateways")
    s.add_argument("--standby-groups", type=int, help="distinct groups on the mirror's standbys")
    s.add_argument("--rate", type=int, default=0, help="requests/s asked (BENCH_RATE; 0: not paced)")
    s.set_defaults(f=cmd_record)

    s = sub.add_parser("meta")
    for name in ("out", "root", "envoy", "wrk", "wasm"):
        s.add_argument(f"--{name}", required=True)
    numbers = ("concurrency", "threads", "connections", "duration", "warmup", "rounds", "pushgateway-check",
               "members", "groups", "body-bytes", "rate")
    for name in numbers:
        s.add_argument(f"--{name}", type=int, required=True)
    s.set_defaults(f=cmd_meta)

    s = sub.add_parser("load")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--requests", type=int, required=True)
    s.add_argument("--status", type=int, required=True)
    s.add_argument("--offset", type=int, default=0)
    s.set_defaults(f=cmd_load)

    s = sub.add_parser("instructions")
    s.add_argument("--dump", required=True)
    s.add_argument("--scenario", required=True)
    s.add_argument("--requests", type=int, required=True)
    s.set_defaults(f=cmd_instructions)

    s = sub.add_parser("events")
    s.add_argument("--dump", required=True)
    s.add_argument("--requests", type=int, required=True)
    s.set_defaults(f=cmd_events)

    s = sub.add_parser("wait-groups")
    s.add_argument("--members", required=True)
    s.add_argument("--total", type=int, required=True)
    s.add_argument("--timeout", type=float, default=300)
    s.set_defaults(f=cmd_wait_groups)

    s = sub.add_parser("rss")
    s.add_argument("pids", type=int, nargs="+")
    s.set_defaults(f=cmd_rss)

    s = sub.add_parser("cluster-meta")
    for name in ("out", "root", "envoy", "wasm", "pushgateway"):
        s.add_argument(f"--{name}", required=True)
    for name in ("concurrency", "connections", "duration", "warmup", "idle", "min-pushes", "metrics"):
        s.add_argument(f"--{name}", type=int, required=True)
    s.set_defaults(f=cmd_cluster_meta)

    s = sub.add_parser("cluster-record")
    for name in ("out", "result", "mode", "counts", "empty-rss", "loaded-rss"):
        s.add_argument(f"--{name}", required=True)
    for name in ("size", "groups", "fill-s", "load-s"):
        s.add_argument(f"--{name}", type=int, required=True)
    s.set_defaults(f=cmd_cluster_record)

    s = sub.add_parser("cluster-report")
    for name in ("records", "meta", "out"):
        s.add_argument(f"--{name}", required=True)
    s.set_defaults(f=cmd_cluster_report)

    s = sub.add_parser("callgrind-diff")
    s.add_argument("dump")
    s.add_argument("against")
    s.add_argument("--requests", type=int, default=2000)
    s.add_argument("--top", type=int, default=25)
    s.set_defaults(f=cmd_callgrind_diff)

    s = sub.add_parser("instruction-ratios")
    s.add_argument("--lines", required=True)
    s.set_defaults(f=cmd_instruction_ratios)

    s = sub.add_parser("apply")
    s.add_argument("--control", type=int, required=True)
    s.add_argument("--token", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--sizes", nargs="+", required=True, help="N (a new list of N) or N+K (K join and leave N)")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--expect-lines", type=int, required=True, help="workers x data listeners")
    s.set_defaults(f=cmd_apply)

    s = sub.add_parser("report")
    s.add_argument("--records", required=True)
    s.add_argument("--meta", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(f=cmd_report)

    a = p.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
