"""Real pushers for the integration tests, driven by JSON on stdin, results as JSON on stdout.

Each input line is {"client": ..., "base": url, ...}; clients:
  requests       {"method", "path", "body"}: Python requests (follows 307 keeping method and body)
  push           {"job", "grouping_key", "value", "metric"}: prometheus_client.push_to_gateway
  pushadd        same, with pushadd_to_gateway
  delete         {"job", "grouping_key"}: prometheus_client.delete_from_gateway
Output per line: {"ok": bool, "status": int|null, "url": final url|null, "error": str|null}.
"""
import json
import sys

import requests
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import delete_from_gateway, push_to_gateway, pushadd_to_gateway

session = requests.Session()


def gateway(base):
    return base.replace("http://", "")


def run(req):
    client = req["client"]
    base = req["base"]
    if client == "requests":
        r = session.request(req["method"], base + req["path"], data=req.get("body", "").encode(), timeout=30)
        return {"ok": r.ok, "status": r.status_code, "url": r.url, "error": None if r.ok else r.text}
    if client in ("push", "pushadd"):
        registry = CollectorRegistry()
        g = Gauge(req.get("metric", "test_value"), "set by the integration test", registry=registry)
        g.set(req["value"])
        fn = push_to_gateway if client == "push" else pushadd_to_gateway
        fn(gateway(base), job=req["job"], registry=registry, grouping_key=req.get("grouping_key") or {}, timeout=30)
        return {"ok": True, "status": None, "url": None, "error": None}
    if client == "delete":
        delete_from_gateway(gateway(base), job=req["job"], grouping_key=req.get("grouping_key") or {}, timeout=30)
        return {"ok": True, "status": None, "url": None, "error": None}
    raise ValueError("unknown client " + client)


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        out = run(json.loads(line))
    except Exception as e:  # report every failure to the test, which asserts on it
        out = {"ok": False, "status": getattr(getattr(e, "response", None), "status_code", None) or getattr(e, "code", None), "url": None, "error": repr(e)}
    print(json.dumps(out), flush=True)
