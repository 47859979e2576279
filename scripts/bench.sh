#!/usr/bin/env bash
# Benchmarks pki-signer against the openssl tooling it replaces.
#
#   scripts/bench.sh [--runs N] [--only SECTION]
#
# Sections (all by default):
#   pki   `pki-signer pki init` vs scripts/bench/openssl-pki.sh, rsa:4096 and ec:prime256v1
#
# Benchmarks report, they do not judge: goals are printed as PASS/MISS and the
# exit status is 0 unless a command fails.
#
# Adding a section: write a function bench_NAME (using run_case/report_row
# below) and add NAME to SECTIONS.
set -euo pipefail
export LC_ALL=C # '.' as decimal separator in EPOCHREALTIME, printf and awk

SECTIONS=(pki)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=5
only=

usage() {
    echo "usage: $0 [--runs N] [--only ${SECTIONS[*]// /|}]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
        --runs) [ $# -ge 2 ] || usage; runs=$2; shift 2 ;;
        --runs=*) runs=${1#--runs=}; shift ;;
        --only) [ $# -ge 2 ] || usage; only=$2; shift 2 ;;
        --only=*) only=${1#--only=}; shift ;;
        -h|--help) usage ;;
        *) echo "$0: unknown argument '$1'" >&2; usage ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "$0: --runs needs a positive integer" >&2; exit 2; }
if [ -n "$only" ] && [[ " ${SECTIONS[*]} " != *" $only "* ]]; then
    echo "$0: unknown section '$only' (known: ${SECTIONS[*]})" >&2
    exit 2
fi

# ---------------------------------------------------------------- helpers

die() { echo "$0: $*" >&2; exit 1; }

# Median of the numbers on stdin, one per line.
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) exit 1
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

min() { sort -g | head -n1; }
max() { sort -g | tail -n1; }

# fmt3 X: X with 3 decimals.
fmt3() { printf '%.3f' "$1"; }

# div A B: A/B with 3 decimals.
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }'; }

# verdict X LIMIT: PASS if X <= LIMIT, else MISS.
verdict() { awk -v x="$1" -v l="$2" 'BEGIN { print (x <= l ? "PASS" : "MISS") }'; }

# ensure_gnu_time: peak RSS comes from GNU time's %M (Debian package "time").
ensure_gnu_time() {
    [ -x /usr/bin/time ] && return
    echo "/usr/bin/time missing: installing the Debian 'time' package" >&2
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq time; } >&2; then
        die "could not install GNU time (apt-get install time)"
    fi
}

# run_case CMD...: run CMD once, print "SECONDS PEAK_RSS_KIB".
# Wall time is taken around /usr/bin/time (EPOCHREALTIME, microseconds; its
# %e has only 10 ms resolution), so it includes ~1 ms of fork/exec of the
# wrapper, the same for every command. %M is the largest resident set of any
# single process of the command (for scripts: the biggest openssl child), KiB.
# On failure, shows the command's output and exits.
run_case() {
    local t0 t1
    t0=$EPOCHREALTIME
    if ! /usr/bin/time -f %M -o "$scratch/rss" "$@" >"$scratch/stdout" 2>"$scratch/stderr"; then
        echo "$0: command failed: $*" >&2
        tail -n 20 "$scratch/stdout" "$scratch/stderr" >&2
        exit 1
    fi
    t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" -v m="$(tail -n1 "$scratch/rss")" 'BEGIN { printf "%.6f %d\n", b - a, m }'
}

# col FILE COLUMN: one column of a results file (lines "SECONDS RSS").
col() { awk -v c="$2" '{ print $c }' "$1"; }

# report_header / report_row LABEL FILE: table of medians over the runs in FILE.
report_header() {
    printf '  %-34s %9s %9s %9s %13s\n' "case" "median s" "min s" "max s" "peak RSS KiB"
}
report_row() {
    printf '  %-34s %9s %9s %9s %13s\n' "$1" \
        "$(fmt3 "$(col "$2" 1 | median)")" "$(fmt3 "$(col "$2" 1 | min)")" \
        "$(fmt3 "$(col "$2" 1 | max)")" "$(col "$2" 2 | max)"
}

# raw_row LABEL FILE: every sample, in run order.
raw_row() {
    printf '  %-34s %s\n' "$1" "$(col "$2" 1 | awk '{ printf "%s%.3f", (NR > 1 ? " " : ""), $1 }')"
}

machine_facts() {
    local cpu fs
    cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null)
    fs=$(df -PT "$scratch" 2>/dev/null | awk 'NR == 2 { print $2 }')
    echo "== machine"
    echo "  date        $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "  cpu         ${cpu:-unknown} (nproc $(nproc))"
    echo "  kernel      $(uname -sr)"
    echo "  openssl     $(openssl version)"
    echo "  pki-signer  $("$bin" --version 2>/dev/null | awk '{ print $2 }')" \
        "($(git -C "$repo" describe --always --dirty 2>/dev/null || echo 'no git'))"
    echo "  scratch     $scratch (${fs:-?}; pki-signer fsyncs every file it writes)"
    echo "  loadavg     $(cut -d' ' -f1-3 /proc/loadavg) (at start; other builds skew timings)"
}

# ---------------------------------------------------------------- sections

# pki: `pki-signer pki init` against the hand-written openssl script, runs
# interleaved so that load drift hits all cases alike.
bench_pki() {
    local script=$repo/scripts/bench/openssl-pki.sh
    local kts=(rsa:4096 ec:prime256v1)
    local i kt tool d n

    echo
    echo "== pki init: 10 certificates + keys, $runs runs each, fresh temp dir per run"
    for ((i = 1; i <= runs; i++)); do
        for kt in "${kts[@]}"; do
            for tool in pki-signer openssl; do
                printf '  run %d/%d  %-10s %-14s\r' "$i" "$runs" "$tool" "$kt" >&2
                d=$(mktemp -d "$scratch/pki.XXXXXX")
                if [ "$tool" = pki-signer ]; then
                    run_case "$bin" pki init --dir "$d/pki" --key-type "$kt"
                else
                    run_case bash "$script" "$d/pki" "$kt"
                fi >>"$scratch/pki-$tool-$kt"
                n=$(find "$d/pki" -maxdepth 1 \( -name '*.cert' -o -name '*.key' \) | wc -l)
                [ "$n" -eq 20 ] || die "$tool $kt: expected 10 .cert + 10 .key in $d/pki, found $n files"
                rm -rf "$d"
            done
        done
    done
    printf '%-50s\r' '' >&2

    report_header
    for kt in "${kts[@]}"; do
        report_row "pki-signer $kt" "$scratch/pki-pki-signer-$kt"
        report_row "openssl-pki.sh $kt" "$scratch/pki-openssl-$kt"
    done

    local ps os ratio
    echo
    echo "  goals (medians)"
    ps=$(col "$scratch/pki-pki-signer-rsa:4096" 1 | median)
    os=$(col "$scratch/pki-openssl-rsa:4096" 1 | median)
    ratio=$(div "$ps" "$os")
    printf '  %-34s ratio %6s   %-42s %s\n' "pki-signer/openssl rsa:4096" "$ratio" \
        "goal ratio <= 0.250 (1/4 of openssl)" "$(verdict "$ratio" 0.25)"
    ps=$(col "$scratch/pki-pki-signer-ec:prime256v1" 1 | median)
    os=$(col "$scratch/pki-openssl-ec:prime256v1" 1 | median)
    ratio=$(div "$ps" "$os")
    printf '  %-34s ratio %6s   %-42s %s\n' "pki-signer/openssl ec:prime256v1" "$ratio" \
        "goal pki-signer <= 0.050 s (is $(fmt3 "$ps") s)" "$(verdict "$ps" 0.05)"

    echo
    echo "  samples (s, run order)"
    for kt in "${kts[@]}"; do
        raw_row "pki-signer $kt" "$scratch/pki-pki-signer-$kt"
        raw_row "openssl-pki.sh $kt" "$scratch/pki-openssl-$kt"
    done
}

# ---------------------------------------------------------------- main

ensure_gnu_time
command -v openssl >/dev/null || die "openssl not found"

echo "building: cargo build --release" >&2
(cd "$repo" && cargo build --release --quiet) || die "cargo build --release failed"
bin=${CARGO_TARGET_DIR:-$repo/target}/release/pki-signer
[ -x "$bin" ] || die "$bin missing after the build"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/pki-signer-bench.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

machine_facts
for s in "${SECTIONS[@]}"; do
    if [ -z "$only" ] || [ "$only" = "$s" ]; then
        "bench_$s"
    fi
done
echo "  loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)"
