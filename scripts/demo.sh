#!/usr/bin/env bash
# The whole dynamic-sharding stack on this machine, in the foreground (`./build.sh demo` builds first).
#
#   Consul dev agent          127.0.0.1:8500
#   three pushgateways        127.0.0.1:9091, 9092, 9093
#   with DEMO_STANDBYS=1, a standby for each: 127.0.0.1:9191, 9192, 9193 (DEMO_STANDBY_PORTS), in
#                             pushgateway.standbys: kill -9 an active and its standby takes over
#   Envoy with the filter     :9292 redirect mode, :9290 proxy mode, 127.0.0.1:9293 control, 127.0.0.1:9901 admin
#   consul-sync               127.0.0.1:9294 (registers the pushgateways, keeps Envoy's member list true)
#   Prometheus                127.0.0.1:9090 (scrapes the passing pushgateways through Consul discovery,
#                             Envoy's admin /stats/prometheus and consul-sync's /metrics; evaluates the
#                             alert rules of deploy/prometheus/rules.yml, or DEMO_RULES_FILE)
#
# With DEMO_SCRAPERS=vmagent, instead of that Prometheus (docs/scraping.md):
#   three vmagents            127.0.0.1:8429, 8430, 8431 (DEMO_VMAGENT_PORTS): one scrape cluster,
#                             replication factor 2, deploy/scraping/vmagent/scrape.yml, so each
#                             target is scraped by two of them
#   VictoriaMetrics           127.0.0.1:8428 (DEMO_VM_PORT): the store they write to, deduplicating
#                             the two copies; Prometheus-compatible query API. No alert rules.
#
# Ctrl-C or SIGTERM stops everything it started. Ports move with DEMO_*_PORT variables (below);
# state and logs live in $DEMO_DIR (default .demo/, git-ignored), wiped at each start.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DEMO_DIR=${DEMO_DIR:-$ROOT/.demo}
CONSUL_PORT=${DEMO_CONSUL_PORT:-8500}
CONSUL_SERVER_PORT=${DEMO_CONSUL_SERVER_PORT:-8300}
CONSUL_SERF_LAN_PORT=${DEMO_CONSUL_SERF_LAN_PORT:-8301}
CONSUL_SERF_WAN_PORT=${DEMO_CONSUL_SERF_WAN_PORT:-8302}
read -r -a PG_PORTS <<<"${DEMO_PUSHGATEWAY_PORTS:-9091 9092 9093}"
# A standby for each pushgateway (docs/consul-sync.md#standbys), in the same order.
STANDBYS=${DEMO_STANDBYS:-0}
read -r -a SB_PORTS <<<"${DEMO_STANDBY_PORTS:-9191 9192 9193}"
REDIRECT_PORT=${DEMO_REDIRECT_PORT:-9292}
PROXY_PORT=${DEMO_PROXY_PORT:-9290}
CONTROL_PORT=${DEMO_CONTROL_PORT:-9293}
ADMIN_PORT=${DEMO_ADMIN_PORT:-9901}
SYNC_PORT=${DEMO_CONSUL_SYNC_PORT:-9294}
PROMETHEUS_PORT=${DEMO_PROMETHEUS_PORT:-9090}
# Who scrapes: one Prometheus, or a vmagent cluster writing into VictoriaMetrics.
SCRAPERS=${DEMO_SCRAPERS:-prometheus}
read -r -a VMAGENT_PORTS <<<"${DEMO_VMAGENT_PORTS:-8429 8430 8431}"
VM_PORT=${DEMO_VM_PORT:-8428}
# Each target is scraped by this many vmagents: losing one loses nothing.
VMAGENT_REPLICATION=2
# The data listeners listen on all interfaces as shipped; tests keep them on loopback.
DATA_ADDRESS=${DEMO_DATA_ADDRESS:-0.0.0.0}
# Health-check interval of the pushgateways in Consul, and Prometheus' scrape interval.
CHECK_INTERVAL=${DEMO_CHECK_INTERVAL:-1s}
SCRAPE_INTERVAL=${DEMO_SCRAPE_INTERVAL:-5s}
# How often consul-sync's reconciler reads the pushgateways, and how long a drain waits.
RECONCILE_INTERVAL=${DEMO_RECONCILE_INTERVAL:-10s}
DRAIN_TIMEOUT=${DEMO_DRAIN_TIMEOUT:-2m}
# The alert rules Prometheus evaluates (tests pass a copy with short `for:` durations).
RULES_FILE=${DEMO_RULES_FILE:-$ROOT/deploy/prometheus/rules.yml}
# The control token Envoy and consul-sync share; a random one per demo unless given.
TOKEN=${SHARDING_CONTROL_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}

bin() {
    local name=$1 var
    var="$(echo "$name" | tr '[:lower:]-' '[:upper:]_')_BIN"
    local path=${!var:-$ROOT/.deps/bin/$name}
    if [ ! -x "$path" ]; then
        echo "demo: $name not found at $path: run ./build.sh deps (or set $var)" >&2
        exit 1
    fi
    echo "$path"
}
ENVOY=$(bin envoy)
CONSUL=$(bin consul)
PUSHGATEWAY=$(bin pushgateway)
case $SCRAPERS in
prometheus) PROMETHEUS=$(bin prometheus) ;;
vmagent)
    VMAGENT=$(bin vmagent)
    VICTORIA_METRICS=$(bin victoria-metrics)
    if [ "${#VMAGENT_PORTS[@]}" -lt "$VMAGENT_REPLICATION" ]; then
        echo "demo: DEMO_VMAGENT_PORTS=\"${VMAGENT_PORTS[*]}\" names ${#VMAGENT_PORTS[@]} vmagent; at least $VMAGENT_REPLICATION are needed (the replication factor)" >&2
        exit 1
    fi
    ;;
*)
    echo "demo: DEMO_SCRAPERS=$SCRAPERS: expected prometheus (the default) or vmagent" >&2
    exit 1
    ;;
esac
case $STANDBYS in
0) SB_PORTS=() ;;
1)
    if [ "${#SB_PORTS[@]}" -ne "${#PG_PORTS[@]}" ]; then
        echo "demo: DEMO_STANDBY_PORTS=\"${SB_PORTS[*]}\" names ${#SB_PORTS[@]} ports; one per pushgateway of DEMO_PUSHGATEWAY_PORTS=\"${PG_PORTS[*]}\" is needed" >&2
        exit 1
    fi
    ;;
*)
    echo "demo: DEMO_STANDBYS=$STANDBYS: expected 0 (the default) or 1 (a standby for each pushgateway)" >&2
    exit 1
    ;;
esac
WASM=$ROOT/target/wasm32-wasip1/release/dynamic_sharding.wasm
CONSUL_SYNC=$ROOT/target/release/consul-sync
if [ ! -f "$RULES_FILE" ]; then
    echo "demo: DEMO_RULES_FILE=$RULES_FILE does not exist; unset it to use deploy/prometheus/rules.yml" >&2
    exit 1
fi
for f in "$WASM" "$CONSUL_SYNC"; do
    if [ ! -f "$f" ]; then
        echo "demo: $f is missing: run ./build.sh (or ./build.sh demo, which builds first)" >&2
        exit 1
    fi
done

# A busy port would make one component fail later with a less helpful message: refuse now.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# refuse_busy PORT WHAT HOW: exits naming the port, what it is for and how to move it.
refuse_busy() {
    if port_busy "$1"; then
        echo "demo: port $1 ($2) is in use; stop what uses it or move it with $3" >&2
        exit 1
    fi
}
for spec in "Consul HTTP:DEMO_CONSUL_PORT:$CONSUL_PORT" "Consul server:DEMO_CONSUL_SERVER_PORT:$CONSUL_SERVER_PORT" \
    "Consul serf LAN:DEMO_CONSUL_SERF_LAN_PORT:$CONSUL_SERF_LAN_PORT" "Consul serf WAN:DEMO_CONSUL_SERF_WAN_PORT:$CONSUL_SERF_WAN_PORT" \
    "Envoy redirect:DEMO_REDIRECT_PORT:$REDIRECT_PORT" "Envoy proxy:DEMO_PROXY_PORT:$PROXY_PORT" \
    "Envoy control:DEMO_CONTROL_PORT:$CONTROL_PORT" "Envoy admin:DEMO_ADMIN_PORT:$ADMIN_PORT" \
    "consul-sync:DEMO_CONSUL_SYNC_PORT:$SYNC_PORT"; do
    IFS=: read -r what var port <<<"$spec"
    refuse_busy "$port" "$what" "$var=<port>"
done
for port in "${PG_PORTS[@]}"; do
    refuse_busy "$port" pushgateway 'DEMO_PUSHGATEWAY_PORTS="<p1> <p2> <p3>"'
done
for port in "${SB_PORTS[@]}"; do
    refuse_busy "$port" "standby pushgateway" 'DEMO_STANDBY_PORTS="<p1> <p2> <p3>"'
done
if [ "$SCRAPERS" = vmagent ]; then
    refuse_busy "$VM_PORT" VictoriaMetrics "DEMO_VM_PORT=<port>"
    for port in "${VMAGENT_PORTS[@]}"; do
        refuse_busy "$port" vmagent 'DEMO_VMAGENT_PORTS="<p1> <p2> <p3>"'
    done
else
    refuse_busy "$PROMETHEUS_PORT" Prometheus "DEMO_PROMETHEUS_PORT=<port>"
fi

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/logs"
PIDS=()

stop_all() {
    trap - INT TERM EXIT
    echo "demo: stopping"
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Bounded wait, then no mercy: the demo must leave no process behind.
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "demo: stopped"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

# start NAME CMD...: runs in the background with its log under $DEMO_DIR/logs, remembered by PID.
start() {
    local name=$1
    shift
    "$@" >"$DEMO_DIR/logs/$name.log" 2>&1 &
    PIDS+=("$!")
    echo "$name $!" >>"$DEMO_DIR/pids"
}

# wait_http NAME URL: bounded wait until URL answers 200; shows the log if the process died.
wait_http() {
    local name=$1 url=$2
    for _ in $(seq 300); do
        if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "demo: $name did not become ready at $url; last lines of $DEMO_DIR/logs/$name.log:" >&2
    tail -n 20 "$DEMO_DIR/logs/$name.log" >&2 || true
    exit 1
}

start consul "$CONSUL" agent -dev -client 127.0.0.1 -bind 127.0.0.1 -http-port "$CONSUL_PORT" \
    -server-port "$CONSUL_SERVER_PORT" -serf-lan-port "$CONSUL_SERF_LAN_PORT" -serf-wan-port "$CONSUL_SERF_WAN_PORT" \
    -dns-port -1 -grpc-port -1 -data-dir "$DEMO_DIR/consul"
MEMBERS=()
for port in "${PG_PORTS[@]}"; do
    start "pushgateway-$port" "$PUSHGATEWAY" --web.listen-address="127.0.0.1:$port" --persistence.file= \
        --web.enable-admin-api
    MEMBERS+=("127.0.0.1:$port")
done
for port in "${SB_PORTS[@]}"; do
    start "pushgateway-$port" "$PUSHGATEWAY" --web.listen-address="127.0.0.1:$port" --persistence.file= \
        --web.enable-admin-api
done

# Envoy: the shipped config, with this demo's ports and the absolute wasm path.
MEMBER_LIST=$(IFS=,; echo "${MEMBERS[*]}")
scripts/render-envoy-config.py --ports "$REDIRECT_PORT,$PROXY_PORT,$CONTROL_PORT,$ADMIN_PORT" \
    --address "$DATA_ADDRESS" --wasm "$WASM" --members "$MEMBER_LIST" --out "$DEMO_DIR/envoy.yaml"
SHARDING_CONTROL_TOKEN=$TOKEN start envoy "$ENVOY" -c "$DEMO_DIR/envoy.yaml" --disable-hot-restart \
    --concurrency 2 --log-level warning --component-log-level wasm:info

wait_http consul "http://127.0.0.1:$CONSUL_PORT/v1/status/leader"
for port in "${PG_PORTS[@]}" "${SB_PORTS[@]}"; do wait_http "pushgateway-$port" "http://127.0.0.1:$port/-/ready"; done
wait_http envoy "http://127.0.0.1:$ADMIN_PORT/ready"

# server -> standby, as a YAML flow mapping.
STANDBY_MAP=""
for i in "${!SB_PORTS[@]}"; do
    STANDBY_MAP+="${STANDBY_MAP:+, }${MEMBERS[$i]}: 127.0.0.1:${SB_PORTS[$i]}"
done
cat >"$DEMO_DIR/dynamic-sharding.yml" <<EOF
# consul-sync's configuration for the demo (the keys are documented in consul-sync/dynamic-sharding.yml).
consul_server:
  addr: 127.0.0.1:$CONSUL_PORT
register_service_name: pushgateway
pushgateway:
  port: ${PG_PORTS[0]}
  servers:
$(for m in "${MEMBERS[@]}"; do echo "    - $m"; done)
  # Scale in: list a pushgateway here and reload (kill -HUP the consul-sync PID in pids).
  drain: []
  standbys: {$STANDBY_MAP}
http_listen_addr: 127.0.0.1:$SYNC_PORT
check:
  interval: $CHECK_INTERVAL
  timeout: 1s
  deregister_after: 1m
envoy:
  control_urls:
    - http://127.0.0.1:$CONTROL_PORT
resync_interval: 10s
reconcile_interval: $RECONCILE_INTERVAL
drain_timeout: $DRAIN_TIMEOUT
EOF
SHARDING_CONTROL_TOKEN=$TOKEN start consul-sync "$CONSUL_SYNC" --config.file "$DEMO_DIR/dynamic-sharding.yml"

# wait_scraped NAME URL LOGS: ready means a push shows up in the store at URL, so wait (bounded)
# until its query API has every pushgateway up.
wait_scraped() {
    local up=0
    for _ in $(seq 120); do
        up=$(curl -fsS --max-time 1 "$2/api/v1/query" --data-urlencode 'query=count(up{job="pushgateway"} == 1)' \
            2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else 0)' 2>/dev/null || echo 0)
        [ "$up" -ge "${#PG_PORTS[@]}" ] && return
        sleep 0.5
    done
    echo "demo: $1 has $up of ${#PG_PORTS[@]} pushgateways up so far; see $3" >&2
}

# One Prometheus scrapes everything and evaluates the alert rules.
start_prometheus() {
    cat >"$DEMO_DIR/prometheus.yml" <<EOF
global:
  scrape_interval: $SCRAPE_INTERVAL
  evaluation_interval: $SCRAPE_INTERVAL
rule_files:
  - $RULES_FILE
scrape_configs:
  # Every pushgateway that Consul says is passing. honor_labels keeps the pushed job/instance.
  - job_name: pushgateway
    honor_labels: true
    consul_sd_configs:
      - server: 127.0.0.1:$CONSUL_PORT
        services: [pushgateway]
        # Consul discovery waits this long between catalog watches (default 30s): a new
        # pushgateway is scraped sooner.
        refresh_interval: 5s
    relabel_configs:
      - source_labels: [__meta_consul_health]
        regex: passing
        action: keep
      # Which pushgateway a series came from: a copy of a group on a second pushgateway would show
      # as a second series instead of a sawtooth. Drop this if you prefer one series per group
      # across failovers.
      - source_labels: [__address__]
        target_label: pushgateway
  - job_name: consul-sync
    static_configs:
      - targets: [127.0.0.1:$SYNC_PORT]
  - job_name: envoy
    metrics_path: /stats/prometheus
    static_configs:
      - targets: [127.0.0.1:$ADMIN_PORT]
EOF
    start prometheus "$PROMETHEUS" --config.file="$DEMO_DIR/prometheus.yml" --storage.tsdb.path="$DEMO_DIR/prometheus" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"

    wait_http prometheus "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
    wait_scraped Prometheus "http://127.0.0.1:$PROMETHEUS_PORT" "$DEMO_DIR/logs/prometheus.log"
    SEE_IT="then see it at http://127.0.0.1:$PROMETHEUS_PORT/graph?g0.expr=demo_metric"
}

# A vmagent scrape cluster (the shipped scrape configuration, the flags of the shipped unit
# deploy/scraping/vmagent/dynamic-sharding-vmagent@.service) writing into VictoriaMetrics, which
# keeps one sample per series and scrape interval of the two copies.
start_vmagents() {
    start victoria-metrics "$VICTORIA_METRICS" -httpListenAddr="127.0.0.1:$VM_PORT" \
        -storageDataPath="$DEMO_DIR/victoria-metrics" -dedup.minScrapeInterval="$SCRAPE_INTERVAL" \
        -search.latencyOffset=1s
    python3 - "$ROOT/deploy/scraping/vmagent/scrape.yml" "$DEMO_DIR/vmagent-scrape.yml" \
        "scrape_interval: 15s" "scrape_interval: $SCRAPE_INTERVAL" \
        "server: 127.0.0.1:8500" "server: 127.0.0.1:$CONSUL_PORT" \
        "'127.0.0.1:9901'" "'127.0.0.1:$ADMIN_PORT'" \
        "'127.0.0.1:9294'" "'127.0.0.1:$SYNC_PORT'" <<'PY'
import sys
src, dst, *pairs = sys.argv[1:]
text = open(src).read()
for old, new in zip(pairs[::2], pairs[1::2]):
    if text.count(old) != 1:
        sys.exit(f"demo: {src}: expected {old!r} once, found it {text.count(old)} times")
    text = text.replace(old, new)
open(dst, "w").write(text)
PY
    wait_http victoria-metrics "http://127.0.0.1:$VM_PORT/health"
    local member=0 port
    for port in "${VMAGENT_PORTS[@]}"; do
        start "vmagent-$port" "$VMAGENT" -promscrape.config="$DEMO_DIR/vmagent-scrape.yml" \
            -promscrape.cluster.membersCount="${#VMAGENT_PORTS[@]}" -promscrape.cluster.memberNum="$member" \
            -promscrape.cluster.replicationFactor="$VMAGENT_REPLICATION" -promscrape.consulSDCheckInterval=1s \
            -remoteWrite.url="http://127.0.0.1:$VM_PORT/api/v1/write" \
            -remoteWrite.tmpDataPath="$DEMO_DIR/vmagent-$port" -httpListenAddr="127.0.0.1:$port"
        member=$((member + 1))
    done
    for port in "${VMAGENT_PORTS[@]}"; do wait_http "vmagent-$port" "http://127.0.0.1:$port/health"; done
    wait_scraped VictoriaMetrics "http://127.0.0.1:$VM_PORT" "$DEMO_DIR/logs/vmagent-*.log"
    SEE_IT="then see it once in VictoriaMetrics: curl 'http://127.0.0.1:$VM_PORT/api/v1/query?query=demo_metric' (or http://127.0.0.1:$VM_PORT/vmui/); kill a vmagent (pids in $DEMO_DIR/pids) and it stays"
}

wait_http consul-sync "http://127.0.0.1:$SYNC_PORT/-/ready"
if [ "$SCRAPERS" = vmagent ]; then start_vmagents; else start_prometheus; fi

echo "dynamic-sharding demo ready: push with  echo 'demo_metric 42' | curl -L -X PUT --data-binary @- http://127.0.0.1:$REDIRECT_PORT/metrics/job/demo/instance/a  (or without -L to :$PROXY_PORT), $SEE_IT  (logs: $DEMO_DIR/logs, Ctrl-C stops)"

# Foreground until a signal. A pushgateway or a vmagent may die (try it: that is what the stack is
# for); any other component dying ends the demo, as nothing would work without it.
declare -A REPORTED=()
while true; do
    while read -r name pid; do
        if [ -z "${REPORTED[$name]:-}" ] && ! kill -0 "$pid" 2>/dev/null; then
            REPORTED[$name]=1
            case $name in
            pushgateway-*)
                if [ "$STANDBYS" = 1 ]; then
                    echo "demo: $name (pid $pid) is gone; if it was a slot's active, its standby takes over" >&2
                else
                    echo "demo: $name (pid $pid) is gone; its groups now go to the other pushgateways" >&2
                fi
                ;;
            vmagent-*)
                echo "demo: $name (pid $pid) is gone; every pushgateway is still scraped by another vmagent" >&2
                ;;
            *)
                echo "demo: $name (pid $pid) exited; last lines of $DEMO_DIR/logs/$name.log:" >&2
                tail -n 20 "$DEMO_DIR/logs/$name.log" >&2 || true
                exit 1
                ;;
            esac
        fi
    done <"$DEMO_DIR/pids"
    sleep 1 &
    wait $! || true
done
