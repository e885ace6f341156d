#!/usr/bin/env bash
# Packs the release bundle from what `./build.sh` built (`./build.sh dist` builds first):
#
#   deploy/dist.sh [--out DIR]     default DIR: dist/
#
# DIR/dynamic-sharding-<version>-linux-<arch>.tar.gz and its .sha256 (sha256sum format). The
# version is the filter crate's in Cargo.toml. The tarball holds one folder of that name:
#
#   README.md  LICENSE  dynamic_sharding.wasm  consul-sync  envoy.yaml  dynamic-sharding.yml
#   prometheus/rules.yml  grafana/dynamic-sharding.json  systemd/*.service  docs/*.md
#   scraping/ha/  scraping/vmagent/  scraping/hashmod/   (deploy/scraping: docs/scraping.md)
#
# docs/ goes along because the alert rules' runbook annotations name docs/alerts.md, relative to
# the bundle's folder as to the repository.
#
# envoy.yaml names the wasm relative to the folder, so Envoy runs from inside it (the systemd
# unit sets WorkingDirectory). Files are sorted and stamped with the last commit's time, so the
# same sources give the same tarball.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

OUT=$ROOT/dist
while (($#)); do
    case $1 in
    --out)
        OUT=${2:?--out needs a folder}
        shift 2
        ;;
    *)
        echo "dist: unknown argument '$1'; usage: deploy/dist.sh [--out DIR]" >&2
        exit 2
        ;;
    esac
done

WASM=target/wasm32-wasip1/release/dynamic_sharding.wasm
CONSUL_SYNC=target/release/consul-sync
for f in "$WASM" "$CONSUL_SYNC"; do
    [ -f "$f" ] || { echo "dist: $f is missing: run ./build.sh dist (it builds first)" >&2; exit 1; }
done

VERSION=$(sed -n '/^\[package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' Cargo.toml)
[ -n "$VERSION" ] || { echo "dist: no version in Cargo.toml's [package]" >&2; exit 1; }
case $(uname -m) in
x86_64) ARCH=amd64 ;;
aarch64) ARCH=arm64 ;;
*) ARCH=$(uname -m) ;;
esac
NAME=dynamic-sharding-$VERSION-linux-$ARCH

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
B=$STAGE/$NAME
mkdir -p "$B/prometheus" "$B/grafana" "$B/systemd" "$B/docs" "$B/scraping/ha" "$B/scraping/vmagent" \
    "$B/scraping/hashmod"
install -m 0644 "$WASM" "$B/dynamic_sharding.wasm"
install -m 0755 "$CONSUL_SYNC" "$B/consul-sync"
install -m 0644 LICENSE "$B/LICENSE"
install -m 0644 deploy/bundle-README.md "$B/README.md"
install -m 0644 consul-sync/dynamic-sharding.yml "$B/dynamic-sharding.yml"
install -m 0644 deploy/prometheus/rules.yml "$B/prometheus/rules.yml"
install -m 0644 deploy/grafana/dynamic-sharding.json "$B/grafana/dynamic-sharding.json"
install -m 0644 deploy/systemd/*.service "$B/systemd/"
install -m 0644 docs/*.md "$B/docs/"
install -m 0644 deploy/scraping/ha/prometheus.yml "$B/scraping/ha/"
install -m 0644 deploy/scraping/vmagent/scrape.yml deploy/scraping/vmagent/vmagent.env \
    deploy/scraping/vmagent/dynamic-sharding-vmagent@.service "$B/scraping/vmagent/"
install -m 0644 deploy/scraping/hashmod/*.yml "$B/scraping/hashmod/"

# The shipped envoy.yaml, with the wasm path and its comment made right for the bundle. Each
# replacement must hit exactly once: a reshaped envoy.yaml fails here, not at a user's Envoy.
python3 - envoy/envoy.yaml "$B/envoy.yaml" <<'PY'
import sys
src, dst = sys.argv[1], sys.argv[2]
text = open(src).read()
for old, new in [
    ("filename: target/wasm32-wasip1/release/dynamic_sharding.wasm",
     "filename: dynamic_sharding.wasm"),
    ("# Run from the repository root (the wasm path is relative to it):\n"
     "#   SHARDING_CONTROL_TOKEN=... envoy -c envoy/envoy.yaml --disable-hot-restart\n",
     "# Run from the bundle's folder (the wasm path is relative to it; the systemd unit sets\n"
     "# WorkingDirectory=/opt/dynamic-sharding):\n"
     "#   SHARDING_CONTROL_TOKEN=... envoy -c envoy.yaml --disable-hot-restart\n"),
]:
    if text.count(old) != 1:
        sys.exit(f"dist: envoy/envoy.yaml: expected {old!r} once, found it {text.count(old)} times")
    text = text.replace(old, new)
open(dst, "w").write(text)
PY

mkdir -p "$OUT"
EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
tar --sort=name --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner -C "$STAGE" -cf - "$NAME" |
    gzip -9n >"$OUT/$NAME.tar.gz"
(cd "$OUT" && sha256sum "$NAME.tar.gz" >"$NAME.tar.gz.sha256")
echo "$OUT/$NAME.tar.gz"
