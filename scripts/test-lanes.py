#!/usr/bin/env python3
"""Runs the workspace's test binaries side by side: `test-lanes.py <lanes> [cargo test args...]`.

`cargo test` runs one test binary after the other, and most of an integration binary's time is
spent waiting on the real Envoys, Consuls and pushgateways it started, so on two cores several
binaries fit side by side. This builds every test binary with `cargo test --no-run`, then runs them
in `lanes` parallel lanes, the slowest first (durations of the last run are kept in
target/test-durations.json), each in its package's folder as cargo would, its output kept in a log
that is printed in full when it fails. The doc tests run last, through cargo. Exit status: 1 when
any binary failed.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = ROOT / "target" / "test-durations.json"


def test_binaries(cargo_args):
    """(name, executable, package folder) of every test binary, built here."""
    cmd = ["cargo", "test", "--no-run", "--message-format=json-render-diagnostics", *cargo_args]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        sys.exit(f"test-lanes: `{' '.join(cmd)}` failed (exit {proc.returncode})")
    found = []
    for line in proc.stdout.decode().splitlines():
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue
        target = msg["target"]
        package = Path(msg["manifest_path"]).parent
        name = f"{package.name}::{target['name']}" if "lib" not in target["kind"] else f"{package.name} (unit)"
        found.append((name, msg["executable"], package))
    return found


def main():
    if len(sys.argv) < 2 or not sys.argv[1].isdigit() or int(sys.argv[1]) < 1:
        sys.exit("usage: test-lanes.py <lanes, 1 or more> [cargo test args...]")
    lanes, cargo_args = int(sys.argv[1]), sys.argv[2:]
    binaries = test_binaries(cargo_args)
    try:
        last = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        last = {}
    # Unknown ones first: a new test binary is as likely as any to be slow.
    binaries.sort(key=lambda b: -last.get(b[0], 1e9))
    logs = ROOT / "target" / "test-logs"
    logs.mkdir(parents=True, exist_ok=True)
    queue, lock = list(binaries), threading.Lock()
    results, started = {}, time.monotonic()

    def lane():
        while True:
            with lock:
                if not queue:
                    return
                name, exe, package = queue.pop(0)
            log = logs / (name.replace("::", "-").replace(" ", "-").replace("(", "").replace(")", "") + ".log")
            t0 = time.monotonic()
            with open(log, "wb") as out:
                rc = subprocess.run([exe], cwd=package, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
            took = time.monotonic() - t0
            with lock:
                results[name] = (rc, took, log)
                verdict = "ok" if rc == 0 else f"FAILED (exit {rc})"
                print(f"{time.monotonic() - started:7.0f} s  {name:<40} {took:6.1f} s  {verdict}", flush=True)

    print(f"running {len(binaries)} test binaries in {lanes} lanes (logs in {logs})", flush=True)
    threads = [threading.Thread(target=lane) for _ in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    last.update({n: round(r[1], 1) for n, r in results.items()})
    DURATIONS.write_text(json.dumps(last, indent=1, sort_keys=True))
    failed = sorted(n for n, r in results.items() if r[0] != 0)
    for name in failed:
        print(f"\n===== {name}: {results[name][2]} =====", flush=True)
        sys.stdout.write(results[name][2].read_text(errors="replace"))
    doc = subprocess.run(["cargo", "test", "--doc", *cargo_args], cwd=ROOT, check=False).returncode
    if doc != 0:
        failed.append("doc tests")
    print(f"\n{len(binaries) - len(failed)} of {len(binaries)} test binaries passed in "
          f"{time.monotonic() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
