#!/usr/bin/env python3
"""Writes the shipped envoy/envoy.yaml with other ports, address, wasm path, members and vnodes.

The one renderer the demo, the benchmarks and the tests use, so each of them runs the
configuration users run. Each replacement must hit the expected number of times: a change in the
shipped file's shape fails here instead of silently running a config still on the default ports.

  scripts/render-envoy-config.py --ports REDIRECT,PROXY,CONTROL,ADMIN --wasm PATH
      [--members host:port,...] [--address 0.0.0.0] [--vnodes 500] [--src envoy/envoy.yaml] [--out FILE]
"""
import argparse
import json
import os
import sys

SHIPPED_WASM = "target/wasm32-wasip1/release/dynamic_sharding.wasm"
SHIPPED_MEMBERS = '["127.0.0.1:9091", "127.0.0.1:9092", "127.0.0.1:9093"]'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def render(text, ports, wasm, members, address, vnodes):
    def swap(old, new, times):
        nonlocal text
        found = text.count(old)
        if found != times:
            sys.exit(f"render-envoy-config: envoy/envoy.yaml: expected {times} of {old!r}, found {found}")
        text = text.replace(old, new)

    redirect, proxy, control, admin = ports
    swap("port_value: 9292", f"port_value: {redirect}", 1)
    swap("port_value: 9290", f"port_value: {proxy}", 1)
    swap("port_value: 9293", f"port_value: {control}", 1)
    swap("port_value: 9901", f"port_value: {admin}", 1)
    swap("address: 0.0.0.0", f"address: {address}", 2)
    swap(SHIPPED_WASM, wasm, 1)
    swap(SHIPPED_MEMBERS, json.dumps(members), 3)
    swap('"vnodes": 500', f'"vnodes": {vnodes}', 3)
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ports", required=True, help="REDIRECT,PROXY,CONTROL,ADMIN")
    p.add_argument("--wasm", required=True)
    p.add_argument("--members", default="", help="bootstrap members, comma-separated")
    p.add_argument("--address", default="0.0.0.0", help="listen address of the data listeners")
    p.add_argument("--vnodes", type=int, default=500)
    p.add_argument("--src", default=os.path.join(ROOT, "envoy", "envoy.yaml"))
    p.add_argument("--out", help="default: standard output")
    a = p.parse_args()
    ports = a.ports.split(",")
    if len(ports) != 4 or not all(x.isdigit() and 0 < int(x) < 65536 for x in ports):
        sys.exit(f"render-envoy-config: --ports {a.ports!r}: expected four ports REDIRECT,PROXY,CONTROL,ADMIN")
    members = [m for m in a.members.split(",") if m]
    with open(a.src) as f:
        out = render(f.read(), ports, a.wasm, members, a.address, a.vnodes)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out)
    else:
        sys.stdout.write(out)


if __name__ == "__main__":
    main()
