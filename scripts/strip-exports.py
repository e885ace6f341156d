#!/usr/bin/env python3
"""Removes the proxy-wasm callbacks the filter does not implement from its exports, in place.

The proxy-wasm SDK exports every callback of the ABI. Envoy calls an exported callback for every
stream event (response headers, body and trailers, done, access log), and each call is a round
trip into the V8 VM that the SDK's default answers with "continue"; an absent export is skipped
by Envoy. Measured with callgrind on a redirect: 4,900 of Envoy's instructions per request
(bench/README.md, "Where the cost is"). Only the export entries go; the code stays (it is never reached).

    scripts/strip-exports.py FILE.wasm

Idempotent. Standard library only: the wasm binary format's export section is a plain list.
"""

import os
import re
import sys

# Callbacks the filter's contexts leave at the SDK's defaults, and the network-filter, gRPC,
# queue and foreign-function callbacks it never registers for, each with the SDK trait method that
# would implement it: the build refuses to strip a callback src/filter/ implements.
UNUSED = {
    "proxy_on_response_headers": "on_http_response_headers",
    "proxy_on_response_body": "on_http_response_body",
    "proxy_on_response_trailers": "on_http_response_trailers",
    "proxy_on_log": "on_log",
    "proxy_on_done": "on_done",
    "proxy_on_new_connection": "on_new_connection",
    "proxy_on_downstream_data": "on_downstream_data",
    "proxy_on_downstream_connection_close": "on_downstream_close",
    "proxy_on_upstream_data": "on_upstream_data",
    "proxy_on_upstream_connection_close": "on_upstream_close",
    "proxy_on_grpc_receive_initial_metadata": "on_grpc_stream_initial_metadata",
    "proxy_on_grpc_receive_trailing_metadata": "on_grpc_stream_trailing_metadata",
    "proxy_on_grpc_receive": "on_grpc_stream_message|on_grpc_call_response",
    "proxy_on_grpc_close": "on_grpc_stream_close|on_grpc_call_response",
    "proxy_on_queue_ready": "on_queue_ready",
    "proxy_on_foreign_function": "on_foreign_function",
}
FILTER_SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "filter")
EXPORT_SECTION = 7


def leb(data, i):
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def uleb(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def strip(data):
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm module")
    out, i, removed = bytearray(data[:8]), 8, []
    while i < len(data):
        start = i
        section = data[i]
        size, body_at = leb(data, i + 1)
        i = body_at + size
        if section != EXPORT_SECTION:
            out += data[start:i]
            continue
        body = data[body_at:i]
        count, j = leb(body, 0)
        kept = []
        for _ in range(count):
            entry = j
            length, j = leb(body, j)
            name = body[j : j + length].decode()
            _, j = leb(body, j + length + 1)  # kind byte, then index
            if name in UNUSED:
                removed.append(name)
            else:
                kept.append(body[entry:j])
        new = uleb(len(kept)) + b"".join(kept)
        out += bytes([EXPORT_SECTION]) + uleb(len(new)) + new
    return bytes(out), removed


def implemented():
    """The stripped callbacks whose trait method src/filter/ defines (it would never be called)."""
    found = []
    for name in sorted(os.listdir(FILTER_SOURCES)):
        if name.endswith(".rs"):
            with open(os.path.join(FILTER_SOURCES, name)) as f:
                text = f.read()
            found += [e for e, m in UNUSED.items() if re.search(rf"\bfn ({m})\b", text)]
    return found


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: scripts/strip-exports.py FILE.wasm")
    clash = implemented()
    if clash:
        sys.exit(f"scripts/strip-exports.py: src/filter/ implements {', '.join(clash)}: "
                 "remove it from UNUSED in this script, or Envoy will never call it")
    path = sys.argv[1]
    with open(path, "rb") as f:
        data = f.read()
    stripped, removed = strip(data)
    if removed:
        with open(path + ".tmp", "wb") as f:
            f.write(stripped)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
