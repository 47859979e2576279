#!/usr/bin/env bash
# Benchmarks pki-signer against the openssl tooling it replaces.
#
#   scripts/bench.sh [--runs N] [--only SECTION[,SECTION...]]
#
# Sections (all by default):
#   pki        `pki-signer pki init` vs scripts/bench/openssl-pki.sh, rsa:4096 and ec:prime256v1
#   pe-sign    sign a ~200 MB UKI: vs sbsign, osslsigncode, pesign and `openssl dgst -sha256`
#   pe-verify  verify it: vs sbverify, osslsigncode verify and `openssl dgst -sha256`
#   pe-batch   1000 small EFI files in one call vs a loop of 1000 sbsign calls
#   csr        10,000 device CSRs in one call (EC and RSA-4096 issuer) vs `openssl x509 -req`
#   guestos-verity
#              `guestos sign --images --verity` over 1 GB of GuestOS images vs what a
#              GyroidOS build runs on them: `veritysetup format`, sha256sum, sha1sum
#   offline    `offline sign` of a request for 1000 EFI files with the key in a
#              SoftHSM2 token, vs the token's own rate (one login, a C_Sign loop
#              in PyKCS11); and the size of the request for the ~200 MB UKI
#   uki-build  `uki build` (signed PCR policy + Authenticode) of Debian's kernel and a
#              200 MB initrd vs `openssl dgst -sha256` over the inputs and the chain
#              systemd-measure sign + objcopy + sbsign (scripts/bench/uki-peer-chain.sh)
#
# Environment:
#   PKI_SIGNER_CACHE   where the UKI and the CSRs are kept between runs
#                      (default ~/.cache/pki-signer; ~200 MB + ~50 MB)
#   BENCH_PE_KEY_TYPE  key type of the PKI the pe sections sign with (default
#                      rsa:2048, what UEFI db keys are; pe-batch adds rsa:4096)
#   BENCH_UKI_MB, BENCH_BATCH_N, BENCH_CSR_N, BENCH_VERITY_MB
#                      sizes (200, 1000, 10000, 1024), smaller for a quick try
#                      (BENCH_UKI_MB: the pe sections' UKI and uki-build's initrd);
#                      the offline section signs BENCH_BATCH_N files too
#   PKI_SIGNER_VENV    venv for PyKCS11 (offline section; default <repo>/.venv)
#
# Benchmarks report, they do not judge: goals are printed as PASS/MISS and the
# exit status is 0 unless a command fails.
#
# Adding a section: write a function bench_NAME (using run_case/report_row
# below) and add NAME to SECTIONS.
set -euo pipefail
export LC_ALL=C # '.' as decimal separator in EPOCHREALTIME, printf and awk

SECTIONS=(pki pe-sign pe-verify pe-batch csr guestos-verity offline uki-build)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=5
only=

usage() {
    echo "usage: $0 [--runs N] [--only SECTION[,SECTION...]]  (sections: ${SECTIONS[*]})" >&2
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
if [ -n "$only" ]; then
    IFS=, read -r -a wanted <<<"$only"
    for w in "${wanted[@]}"; do
        if [[ " ${SECTIONS[*]} " != *" $w "* ]]; then
            echo "$0: unknown section '$w' (known: ${SECTIONS[*]})" >&2
            exit 2
        fi
    done
fi

# selected SECTION: whether --only (if given) names SECTION.
selected() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

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

# verdict_ge X LIMIT: PASS if X >= LIMIT, else MISS.
verdict_ge() { awk -v x="$1" -v l="$2" 'BEGIN { print (x >= l ? "PASS" : "MISS") }'; }

# load_note WHEN: the machine is shared (2 cores, other builds): the load
# average goes with every section's figures.
load_note() { echo "  loadavg     $(cut -d' ' -f1-3 /proc/loadavg) ($1)"; }

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

# report_table PREFIX CASE=LABEL...: the header, then a row per case
# (samples in $scratch/PREFIX-CASE).
report_table() {
    local prefix=$1 spec
    shift
    report_header
    for spec in "$@"; do
        report_row "${spec#*=}" "$scratch/$prefix-${spec%%=*}"
    done
}

# samples PREFIX CASE=LABEL...: every sample of each case, in run order.
samples() {
    local prefix=$1 spec
    shift
    echo
    echo "  samples (s, run order)"
    for spec in "$@"; do
        raw_row "${spec#*=}" "$scratch/$prefix-${spec%%=*}"
    done
}

# interleave PREFIX FUNC CASE...: FUNC CASE RUN (untimed preparation, then
# one run_case) for RUN in 1..runs, the cases round robin so that load drift
# hits them alike. Samples go to $scratch/PREFIX-CASE.
interleave() {
    local prefix=$1 fn=$2 i c
    shift 2
    for ((i = 1; i <= runs; i++)); do
        for c in "$@"; do
            printf '  run %d/%d  %-30s\r' "$i" "$runs" "$c" >&2
            "$fn" "$c" "$i" >>"$scratch/$prefix-$c"
        done
    done
    printf '%-50s\r' '' >&2
}

# med NAME / peak NAME: median seconds / largest peak RSS (KiB) in $scratch/NAME.
med() { col "$scratch/$1" 1 | median; }
peak() { col "$scratch/$1" 2 | max; }

# goal_row LABEL VALUE GOAL VERDICT
goal_row() { printf '  %-50s %8s   %-24s %s\n' "$1" "$2" "$3" "$4"; }

# ratio_table PREFIX OURS FLOOR CASE=LABEL...: each case's median as a
# multiple of the floor's, and how many times faster OURS is than it.
ratio_table() {
    local prefix=$1 ours=$2 floor=$3 spec c label m
    shift 3
    printf '  %-34s %9s %9s %15s\n' "case" "median s" "x floor" "x $ours time"
    for spec in "$@"; do
        c=${spec%%=*} label=${spec#*=}
        m=$(med "$prefix-$c")
        printf '  %-34s %9s %9s %15s\n' "$label" "$(fmt3 "$m")" \
            "$(div "$m" "$(med "$prefix-$floor")")" "$(div "$m" "$(med "$prefix-$ours")")"
    done
}

# warm FILE: read it once, so every case finds it in the page cache.
warm() { cat "$1" >/dev/null; }

# fresh_dir DIR: DIR empty, and the disk idle (outputs of the previous case
# written back), before a timed run.
fresh_dir() { rm -rf "$1"; mkdir -p "$1"; sync; }

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
    local i kt tool d n want

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
                # pki-signer also makes ocsp_server, as gen_dev_certs.sh does.
                want=20
                [ "$tool" = pki-signer ] && want=22
                [ "$n" -eq "$want" ] || die "$tool $kt: expected $want .cert + .key files in $d/pki, found $n"
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

# ---------------------------------------------------------------- pe sections

cache=${PKI_SIGNER_CACHE:-$HOME/.cache/pki-signer}
pe_key_type=${BENCH_PE_KEY_TYPE:-rsa:2048}
uki_mb=${BENCH_UKI_MB:-200}
batch_n=${BENCH_BATCH_N:-1000}
csr_n=${BENCH_CSR_N:-10000}
csr_openssl_n=$((csr_n < 200 ? csr_n : 200))

# pe_setup: the big UKI (cached), a PKI to sign with, its signing key and
# certificates as files for the peers, an NSS database for pesign, and one
# signed UKI for pe-verify. Once per bench run.
pe_ready=
pe_setup() {
    [ -n "$pe_ready" ] && return
    pe_ready=1
    ensure_apt systemd-boot-efi binutils sbsigntool osslsigncode pesign libnss3-tools eatmydata
    echo
    echo "== pe setup"
    echo "  sbsign      $(sbsign --version 2>&1 | head -n1)"
    echo "  osslsigncode $(osslsigncode --version 2>&1 | head -n1 | awk '{ sub(/,$/, "", $2); print $2 }')"
    echo "  pesign      $(dpkg-query -W -f='${Version}' pesign 2>/dev/null || echo '?')"

    uki=$cache/bench-uki/uki-${uki_mb}MB.efi
    if [ ! -s "$uki" ]; then
        echo "  making $uki (once, cached)" >&2
        bash "$repo/scripts/bench/make-uki.sh" "$uki" "$uki_mb" || die "could not make $uki"
    fi
    echo "  UKI         $uki ($(stat -c %s "$uki") bytes)"

    pe_pki=$scratch/pe-pki
    "$bin" pki init --dir "$pe_pki" --key-type "$pe_key_type" >/dev/null ||
        die "pki init --key-type $pe_key_type failed"
    echo "  signing key ssig_subca, $pe_key_type (pki init --key-type $pe_key_type)"
    pe_key=$pe_pki/ssig_subca.key
    pe_cert=$scratch/ssig_subca.pem
    pe_root=$pe_pki/ssig_rootca.cert
    # The signer's certificate alone: the peers take one certificate.
    openssl x509 -in "$pe_pki/ssig_subca.cert" -out "$pe_cert"

    # pesign only signs with keys in an NSS database.
    nss=$scratch/nss
    mkdir -p "$nss"
    if certutil -N -d "sql:$nss" --empty-password &&
        openssl pkcs12 -export -inkey "$pe_key" -in "$pe_cert" -name pki-signer-bench \
            -passout pass: -out "$scratch/ssig_subca.p12" &&
        pk12util -i "$scratch/ssig_subca.p12" -d "sql:$nss" -W '' >/dev/null; then
        pesign_ok=1
    else
        pesign_ok=
        echo "  pesign      skipped: could not import the key into an NSS database"
    fi

    pe_signed=$scratch/uki.signed.efi
    "$bin" pe sign "$uki" -o "$pe_signed" --role ssig_subca --dir "$pe_pki" >/dev/null ||
        die "pe sign $uki failed"
}

# check_signed FILE WHO: outside the timing, once per case: what was timed
# produced an image that an independent verifier accepts.
check_signed() {
    sbverify --cert "$pe_cert" "$1" >/dev/null 2>&1 ||
        die "$2: sbverify --cert $pe_cert rejects its output $1"
}

pe_sign_case() {
    local out=$scratch/pe-sign-out/uki.efi
    fresh_dir "${out%/*}"
    case $1 in
        floor) run_case openssl dgst -sha256 "$uki" ;;
        pki-signer) run_case "$bin" pe sign "$uki" -o "$out" --role ssig_subca --dir "$pe_pki" ;;
        pki-signer-nofsync)
            run_case eatmydata "$bin" pe sign "$uki" -o "$out" --role ssig_subca --dir "$pe_pki" ;;
        pki-signer-inplace)
            # The copy to sign (what a build's deploy step holds) is made, and
            # on disk, before the clock starts.
            cp "$uki" "$out"
            sync
            run_case "$bin" pe sign "$out" --in-place --role ssig_subca --dir "$pe_pki" ;;
        durable-copy) run_case dd if="$uki" of="$out" bs=64K conv=fsync status=none ;;
        sbsign) run_case sbsign --key "$pe_key" --cert "$pe_cert" --output "$out" "$uki" ;;
        osslsigncode)
            run_case osslsigncode sign -h sha256 -certs "$pe_cert" -key "$pe_key" -in "$uki" -out "$out" ;;
        pesign) run_case pesign -n "sql:$nss" -c pki-signer-bench -s -i "$uki" -o "$out" ;;
        *) die "pe_sign_case: $1" ;;
    esac
    if [ "$2" = 1 ] && [ "$1" != floor ] && [ "$1" != durable-copy ]; then
        check_signed "$out" "$1"
    fi
}

# pe-sign: one big image, each signer from the same warm page cache to a new
# file on the same filesystem.
bench_pe_sign() {
    pe_setup
    echo
    echo "== pe sign: ${uki_mb} MB UKI, $runs runs each, input in the page cache, output dir emptied and synced before each run"
    load_note "start of section pe-sign"
    local cases=(floor pki-signer sbsign osslsigncode)
    [ -n "$pesign_ok" ] && cases+=(pesign)
    cases+=(pki-signer-inplace pki-signer-nofsync durable-copy)
    warm "$uki"
    interleave pe-sign pe_sign_case "${cases[@]}"

    local labels=(
        "floor=openssl dgst -sha256 (floor)"
        "pki-signer=pki-signer pe sign"
        "sbsign=sbsign"
        "osslsigncode=osslsigncode sign"
    )
    [ -n "$pesign_ok" ] && labels+=("pesign=pesign -s (NSS db)")
    labels+=(
        "pki-signer-inplace=pki-signer pe sign --in-place"
        "pki-signer-nofsync=pki-signer, fsync off (eatmydata)"
        "durable-copy=dd conv=fsync (copy floor)"
    )
    report_table pe-sign "${labels[@]}"
    echo
    ratio_table pe-sign pki-signer floor "${labels[@]}"

    local fl fastest fm c m ratio rss how
    fl=$(med pe-sign-floor)
    fastest='' fm=''
    for c in sbsign osslsigncode pesign; do
        [ -s "$scratch/pe-sign-$c" ] || continue
        m=$(med "pe-sign-$c")
        if [ -z "$fm" ] || awk -v a="$m" -v b="$fm" 'BEGIN { exit !(a < b) }'; then
            fastest=$c fm=$m
        fi
    done
    echo
    echo "  goals (medians; -o writes a new durable file, --in-place appends to a copy)"
    for c in pki-signer pki-signer-inplace; do
        how=-o
        [ "$c" = pki-signer-inplace ] && how=--in-place
        ratio=$(div "$(med "pe-sign-$c")" "$fl")
        goal_row "pki-signer $how / openssl dgst" "$ratio" "goal <= 1.300" "$(verdict "$ratio" 1.3)"
        ratio=$(div "$fm" "$(med "pe-sign-$c")")
        goal_row "$fastest (fastest peer) / pki-signer $how" "$ratio" "goal >= 2.000" \
            "$(verdict_ge "$ratio" 2)"
        rss=$(peak "pe-sign-$c")
        goal_row "pki-signer $how peak RSS KiB" "$rss" "goal <= 32768 (32 MiB)" "$(verdict "$rss" 32768)"
    done

    samples pe-sign "${labels[@]}"
}

pe_verify_case() {
    case $1 in
        floor) run_case openssl dgst -sha256 "$pe_signed" ;;
        pki-signer) run_case "$bin" pe verify "$pe_signed" --cert "$pe_cert" ;;
        sbverify) run_case sbverify --cert "$pe_cert" "$pe_signed" ;;
        # osslsigncode wants a chain up to a self-signed root.
        osslsigncode) run_case osslsigncode verify -CAfile "$pe_root" -in "$pe_signed" ;;
        *) die "pe_verify_case: $1" ;;
    esac
}

# pe-verify: the UKI signed by pki-signer, checked against the signing
# certificate (osslsigncode: against the root). run_case fails on a
# rejection, so every timed run was a successful verification.
bench_pe_verify() {
    pe_setup
    echo
    echo "== pe verify: the ${uki_mb} MB UKI signed by pki-signer, $runs runs each, file in the page cache"
    load_note "start of section pe-verify"
    warm "$pe_signed"
    interleave pe-verify pe_verify_case floor pki-signer sbverify osslsigncode

    local labels=(
        "floor=openssl dgst -sha256 (floor)"
        "pki-signer=pki-signer pe verify --cert"
        "sbverify=sbverify --cert"
        "osslsigncode=osslsigncode verify -CAfile root"
    )
    local ratio
    report_table pe-verify "${labels[@]}"
    echo
    ratio_table pe-verify pki-signer floor "${labels[@]}"
    echo
    echo "  goals (medians)"
    ratio=$(div "$(med pe-verify-pki-signer)" "$(med pe-verify-floor)")
    goal_row "pki-signer / openssl dgst" "$ratio" "goal <= 1.300" "$(verdict "$ratio" 1.3)"
    samples pe-verify "${labels[@]}"
}

pe_batch_case() {
    local out=$scratch/batch-out pki=$pe_pki key=$pe_key cert=$pe_cert
    case $1 in
        *-rsa4096) pki=$pe_pki4096 key=$pe_pki4096/ssig_subca.key cert=$scratch/ssig_subca-4096.pem ;;
    esac
    fresh_dir "$out"
    case $1 in
        pki-signer | pki-signer-rsa4096)
            run_case "$bin" pe sign "${batch_files[@]}" --out-dir "$out" --role ssig_subca --dir "$pki" ;;
        pki-signer-nofsync)
            run_case eatmydata "$bin" pe sign "${batch_files[@]}" --out-dir "$out" --role ssig_subca --dir "$pki" ;;
        sbsign-loop | sbsign-loop-rsa4096)
            run_case bash "$repo/scripts/bench/sign-each.sh" sbsign "$key" "$cert" "$out" "${batch_files[@]}" ;;
        pki-signer-loop)
            run_case bash "$repo/scripts/bench/sign-each.sh" pki-signer "$bin" "$pki" "$out" "${batch_files[@]}" ;;
        *) die "pe_batch_case: $1" ;;
    esac
    if [ "$2" = 1 ]; then
        local n f
        n=$(find "$out" -name '*.efi' | wc -l)
        [ "$n" -eq "$batch_n" ] || die "$1: $n of $batch_n signed files in $out"
        for f in "$out/${batch_files[0]##*/}" "$out/${batch_files[-1]##*/}"; do
            sbverify --cert "$cert" "$f" >/dev/null 2>&1 || die "$1: sbverify rejects $f"
        done
    fi
}

# pe-batch: what a build with many EFI binaries does, in one call or one
# process per file. RSA-2048 signatures cost ~1 ms, RSA-4096 ~5 ms of CPU
# each: with 4096-bit keys the signatures themselves weigh, so both are run.
bench_pe_batch() {
    pe_setup
    local src=/usr/lib/systemd/boot/efi/systemd-bootx64.efi in=$scratch/batch-in i
    [ -r "$src" ] || die "$src missing (systemd-boot-efi)"
    mkdir -p "$in"
    batch_files=()
    for ((i = 1; i <= batch_n; i++)); do
        batch_files+=("$in/boot$(printf '%04d' "$i").efi")
        cp "$src" "${batch_files[-1]}"
    done
    local cases=(pki-signer sbsign-loop pki-signer-loop pki-signer-nofsync)
    local labels=(
        "pki-signer=pki-signer, 1 call"
        "sbsign-loop=sbsign loop, $batch_n calls"
        "pki-signer-loop=pki-signer loop, $batch_n calls"
        "pki-signer-nofsync=pki-signer 1 call, fsync off"
    )
    local kt=${pe_key_type//:/}
    if [ "$pe_key_type" != rsa:4096 ]; then
        pe_pki4096=$scratch/pe-pki-4096
        "$bin" pki init --dir "$pe_pki4096" --key-type rsa:4096 >/dev/null || die "pki init rsa:4096 failed"
        openssl x509 -in "$pe_pki4096/ssig_subca.cert" -out "$scratch/ssig_subca-4096.pem"
        cases+=(pki-signer-rsa4096 sbsign-loop-rsa4096)
        labels+=("pki-signer-rsa4096=pki-signer, 1 call, rsa4096"
            "sbsign-loop-rsa4096=sbsign loop, rsa4096")
    fi
    echo
    echo "== pe batch: $batch_n copies of ${src##*/} ($(stat -c %s "$src") bytes), $runs runs each, output dir emptied and synced before each run"
    echo "  key: ssig_subca $pe_key_type unless the case says rsa4096"
    load_note "start of section pe-batch"
    cat "${batch_files[@]}" >/dev/null
    interleave pe-batch pe_batch_case "${cases[@]}"

    local spec ratio
    report_table pe-batch "${labels[@]}"
    echo
    printf '  %-34s %9s %12s\n' "case" "median s" "files/s"
    for spec in "${labels[@]}"; do
        printf '  %-34s %9s %12s\n' "${spec#*=}" "$(fmt3 "$(med "pe-batch-${spec%%=*}")")" \
            "$(awk -v n="$batch_n" -v t="$(med "pe-batch-${spec%%=*}")" 'BEGIN { printf "%.0f", n / t }')"
    done
    echo
    echo "  goals (medians)"
    ratio=$(div "$(med pe-batch-sbsign-loop)" "$(med pe-batch-pki-signer)")
    goal_row "sbsign loop / pki-signer 1 call ($kt)" "$ratio" "goal >= 10.000" "$(verdict_ge "$ratio" 10)"
    if [ -s "$scratch/pe-batch-pki-signer-rsa4096" ]; then
        ratio=$(div "$(med pe-batch-sbsign-loop-rsa4096)" "$(med pe-batch-pki-signer-rsa4096)")
        goal_row "sbsign loop / pki-signer 1 call (rsa4096)" "$ratio" "goal >= 10.000" "$(verdict_ge "$ratio" 10)"
    fi
    ratio=$(div "$(med pe-batch-pki-signer-loop)" "$(med pe-batch-pki-signer)")
    goal_row "pki-signer loop / 1 call (info)" "$ratio" "" ""
    ratio=$(div "$(med pe-batch-sbsign-loop)" "$(med pe-batch-pki-signer-nofsync)")
    goal_row "sbsign loop / 1 call fsync off (info)" "$ratio" "" ""
    samples pe-batch "${labels[@]}"
    rm -rf "$in" "$scratch/batch-out"
}

# ---------------------------------------------------------------- csr

csr_case() {
    local out=$scratch/csr-out pki
    case $1 in
        *-ec) pki=$csr_pki_ec ;;
        *-rsa4096) pki=$csr_pki_rsa ;;
    esac
    fresh_dir "$out"
    case $1 in
        pki-signer-*)
            run_case "$bin" csr sign "${csr_files[@]}" --out-dir "$out" --role device_subca --dir "$pki" ;;
        openssl-*)
            run_case bash "$repo/scripts/bench/openssl-csr-sign.sh" "$pki/device_subca.cert" \
                "$pki/device_subca.key" "$out" "${csr_files[@]:0:csr_openssl_n}" ;;
        *) die "csr_case: $1" ;;
    esac
    if [ "$2" = 1 ]; then
        local want=$csr_n n name
        [[ $1 == openssl-* ]] && want=$csr_openssl_n
        n=$(find "$out" -name '*.cert' | wc -l)
        [ "$n" -eq "$want" ] || die "$1: $n of $want certificates in $out"
        name=${csr_files[0]##*/}
        openssl verify -CAfile "$pki/gen_rootca.cert" -untrusted "$pki/device_subca.cert" \
            "$out/${name%.csr}.cert" >/dev/null || die "$1: openssl verify rejects $out/${name%.csr}.cert"
    fi
}

# csr: issuing device certificates for a fleet, in one call. The openssl
# loop runs on the first $csr_openssl_n CSRs only and is extrapolated.
bench_csr() {
    local dir=$cache/bench-csr/p256-$csr_n
    if [ ! -d "$dir" ]; then
        echo "  making $csr_n CSRs in $dir (once, cached; a few minutes)" >&2
        bash "$repo/scripts/bench/make-csrs.sh" "$dir" "$csr_n" || die "could not make the CSRs"
    fi
    csr_files=("$dir"/*.csr)
    [ "${#csr_files[@]}" -eq "$csr_n" ] || die "$dir: ${#csr_files[@]} CSRs, expected $csr_n"
    csr_pki_ec=$scratch/csr-pki-ec
    csr_pki_rsa=$scratch/csr-pki-rsa
    "$bin" pki init --dir "$csr_pki_ec" --key-type ec:prime256v1 >/dev/null || die "pki init ec failed"
    "$bin" pki init --dir "$csr_pki_rsa" --key-type rsa:4096 >/dev/null || die "pki init rsa:4096 failed"

    echo
    echo "== csr sign: $csr_n EC P-256 device CSRs ($dir), $runs runs each, output dir emptied and synced before each run"
    echo "  issuer device_subca: ec:prime256v1 (ECDSA P-256) or rsa:4096; openssl: first $csr_openssl_n CSRs, extrapolated"
    load_note "start of section csr"
    cat "${csr_files[@]}" >/dev/null
    local cases=(pki-signer-ec openssl-ec pki-signer-rsa4096 openssl-rsa4096)
    interleave csr csr_case "${cases[@]}"

    local labels=(
        "pki-signer-ec=pki-signer, $csr_n CSRs, ec"
        "openssl-ec=openssl loop, $csr_openssl_n CSRs, ec"
        "pki-signer-rsa4096=pki-signer, $csr_n CSRs, rsa4096"
        "openssl-rsa4096=openssl loop, $csr_openssl_n CSRs, rsa4096"
    )
    local spec c n m kt ours theirs
    report_table csr "${labels[@]}"
    echo
    printf '  %-34s %12s %12s %16s\n' "case" "certs/s" "ms/cert" "s per $csr_n"
    for spec in "${labels[@]}"; do
        c=${spec%%=*}
        n=$csr_n
        [[ $c == openssl-* ]] && n=$csr_openssl_n
        m=$(med "csr-$c")
        printf '  %-34s %12s %12s %16s\n' "${spec#*=}" \
            "$(awk -v n="$n" -v t="$m" 'BEGIN { printf "%.0f", n / t }')" \
            "$(awk -v n="$n" -v t="$m" 'BEGIN { printf "%.3f", 1000 * t / n }')" \
            "$(awk -v n="$n" -v t="$m" -v N="$csr_n" 'BEGIN { printf "%.1f%s", t / n * N, (n == N ? "" : " (extrap.)") }')"
    done
    echo
    echo "  per-certificate speedup over the openssl loop (info, no goal set)"
    for kt in ec rsa4096; do
        ours=$(awk -v t="$(med "csr-pki-signer-$kt")" -v n="$csr_n" 'BEGIN { print t / n }')
        theirs=$(awk -v t="$(med "csr-openssl-$kt")" -v n="$csr_openssl_n" 'BEGIN { print t / n }')
        goal_row "openssl / pki-signer per cert ($kt)" "$(div "$theirs" "$ours")" "" ""
    done
    samples csr "${labels[@]}"
}

# ---------------------------------------------------------------- guestos-verity

verity_mb=${BENCH_VERITY_MB:-1024}

# verity_case CASE RUN: one timed run on the images in $verity_dir.
verity_case() {
    local out=$scratch/verity-out i
    fresh_dir "$out"
    case $1 in
        pki-signer)
            cp "$verity_dir/conf.in" "$verity_dir/bench-1.conf"
            rm -f "$verity_dir"/bench-1/*.hash.img
            sync
            run_case "$bin" guestos sign "$verity_dir/bench-1.conf" --role ssig_cml \
                --dir "$verity_pki" --images "$verity_dir" --verity ;;
        veritysetup)
            run_case bash -c 'for i in "$2"/*.img; do veritysetup format "$i" "$1/${i##*/}.hash" >/dev/null; done' \
                _ "$out" "$verity_dir/bench-1" ;;
        gyroidos)
            run_case bash -c 'for i in "$2"/*.img; do veritysetup format "$i" "$1/${i##*/}.hash" >/dev/null
                sha256sum "$i" >/dev/null; sha1sum "$i" >/dev/null; done' _ "$out" "$verity_dir/bench-1" ;;
        *) die "verity_case: $1" ;;
    esac
    if [ "$2" = 1 ] && [ "$1" = pki-signer ]; then
        local img root name
        for img in "$verity_dir"/bench-1/*.img; do
            [[ $img == *.hash.img ]] && continue
            name=${img##*/}
            root=$(awk -v f="\"${name%.img}\"" '$0 ~ "image_file: " f { s = 1 }
                s && /image_verity_sha256/ { gsub(/"/, "", $2); print $2; exit }' \
                "$verity_dir/bench-1.conf")
            veritysetup verify "$img" "${img%.img}.hash.img" "$root" >/dev/null \
                || die "veritysetup verify rejects ${img%.img}.hash.img ($root)"
        done
    fi
}

# guestos-verity: signing a GuestOS with dm-verity against the tools a
# GyroidOS build runs for it (cml_build_guestos.sh: veritysetup format; the
# config creator: SHA-256 and SHA-1 of each image), on the same images.
bench_guestos_verity() {
    command -v veritysetup >/dev/null || ensure_apt cryptsetup-bin
    verity_dir=$cache/bench-verity/$verity_mb
    local root_mb=$((verity_mb * 3 / 4)) usr_mb
    usr_mb=$((verity_mb - root_mb))
    if [ ! -f "$verity_dir/bench-1/usr.img" ]; then
        echo "  making $verity_mb MB of images in $verity_dir (once, cached)" >&2
        mkdir -p "$verity_dir/bench-1"
        head -c $((root_mb << 20)) /dev/urandom >"$verity_dir/bench-1/root.img"
        head -c $((usr_mb << 20)) /dev/urandom >"$verity_dir/bench-1/usr.img"
    fi
    cat >"$verity_dir/conf.in" <<'CONF'
name: "bench"
hardware: "x86"
version: 1
init_path: "/sbin/cservice"
mounts {
	image_file: "root"
	mount_point: "/"
	fs_type: "squashfs"
	mount_type: SHARED_RW
}
mounts {
	image_file: "usr"
	mount_point: "/usr"
	fs_type: "squashfs"
	mount_type: SHARED
}
description {
	en: "bench"
}
CONF
    verity_pki=$scratch/verity-pki
    "$bin" pki init --dir "$verity_pki" --key-type rsa:2048 >/dev/null || die "pki init failed"

    echo
    echo "== guestos sign --images --verity: 2 images, $verity_mb MB ($root_mb + $usr_mb), $runs runs each, images in the page cache"
    echo "  pki-signer: SHA-1 + SHA-256 + dm-verity tree in one read, then signs and fsyncs the hash images and conf"
    load_note "start of section guestos-verity"
    warm "$verity_dir/bench-1/root.img"
    warm "$verity_dir/bench-1/usr.img"
    local cases=(pki-signer veritysetup gyroidos)
    interleave verity verity_case "${cases[@]}"
    local labels=(
        "pki-signer=pki-signer guestos sign --verity"
        "veritysetup=veritysetup format"
        "gyroidos=veritysetup + sha256sum + sha1sum"
    )
    local ratio
    report_table verity "${labels[@]}"
    echo
    echo "  goals (medians)"
    ratio=$(div "$(med verity-pki-signer)" "$(med verity-veritysetup)")
    goal_row "pki-signer / veritysetup format alone" "$ratio" "goal <= 1.2" "$(verdict "$ratio" 1.2)"
    ratio=$(div "$(med verity-pki-signer)" "$(med verity-gyroidos)")
    goal_row "pki-signer / veritysetup + sha256sum + sha1sum" "$ratio" "(info)" ""
    samples verity "${labels[@]}"
}

# ---------------------------------------------------------------- offline

# offline: the signing host's half of an air-gapped release. The request is
# made on the build host (not timed); what is timed is `offline sign`, which
# checks the request, logs in once and signs every item, against what the
# token itself allows one process over one login.
bench_offline() {
    pe_setup
    ensure_apt softhsm2 opensc
    local venv=${PKI_SIGNER_VENV:-$repo/.venv}
    case $venv in /*) ;; *) venv=$repo/$venv ;; esac
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || die "cannot create the venv $venv"
    "$venv/bin/python" -c 'import PyKCS11' 2>/dev/null ||
        "$venv/bin/python" -m pip install -q --disable-pip-version-check 'PyKCS11==1.5.20' ||
        die "pip install PyKCS11 failed"
    local module=/usr/lib/softhsm/libsofthsm2.so hsm=$scratch/hsm i
    [ -r "$module" ] || die "$module missing (softhsm2)"
    mkdir -p "$hsm/tokens"
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$hsm/tokens" >"$hsm/softhsm2.conf"
    export SOFTHSM2_CONF=$hsm/softhsm2.conf PKI_SIGNER_PKCS11_MODULE=$module
    export PKI_SIGNER_PKCS11_PIN=1234
    softhsm2-util --init-token --free --label release --so-pin 5678 --pin "$PKI_SIGNER_PKCS11_PIN" >/dev/null ||
        die "softhsm2-util --init-token failed"
    openssl pkcs8 -topk8 -nocrypt -in "$pe_key" -outform DER -out "$hsm/key.der" || die "pkcs8 failed"
    pkcs11-tool --module "$module" --token-label release --login --pin "$PKI_SIGNER_PKCS11_PIN" \
        --write-object "$hsm/key.der" --type privkey --label ssig_subca --id 01 --usage-sign >/dev/null 2>&1 ||
        die "pkcs11-tool --write-object failed"
    rm -f "$hsm/key.der"
    printf '{ "trust": ["%s"],\n  "ssig_subca": { "key": "pkcs11:token=release;object=ssig_subca", "cert": "%s" } }\n' \
        "$pe_root" "$pe_pki/ssig_subca.cert" >"$scratch/keys.json"

    local src=/usr/lib/systemd/boot/efi/systemd-bootx64.efi in=$scratch/offline-in
    mkdir -p "$in"
    offline_files=()
    for ((i = 1; i <= batch_n; i++)); do
        offline_files+=("$in/boot$(printf '%04d' "$i").efi")
        cp "$src" "${offline_files[-1]}"
    done
    "$bin" offline request "${offline_files[@]}" --keys "$scratch/keys.json" -o "$scratch/request.json" >/dev/null ||
        die "offline request failed"
    "$bin" offline request "$uki" --keys "$scratch/keys.json" -o "$scratch/uki-request.json" >/dev/null ||
        die "offline request $uki failed"

    echo
    echo "== offline: one request for $batch_n copies of ${src##*/}, key ssig_subca $pe_key_type in a SoftHSM2 token, $runs runs each"
    echo "  softhsm2    $(dpkg-query -W -f='${Version}' softhsm2 2>/dev/null || echo '?')"
    load_note "start of section offline"
    interleave offline offline_case pki-signer token-loop

    local rate_tool rate_token ratio req uki_req
    rate_tool=$(awk -v n="$batch_n" -v t="$(med offline-pki-signer)" 'BEGIN { printf "%.0f", n / t }')
    rate_token=$(awk -v n="$batch_n" -v t="$(med offline-token-loop)" 'BEGIN { printf "%.0f", n / t }')
    report_header
    report_row "pki-signer offline sign, 1 call" "$scratch/offline-pki-signer"
    report_row "token C_Sign loop (PyKCS11)" "$scratch/offline-token-loop"
    echo
    printf '  %-34s %12s\n' "case" "signatures/s"
    printf '  %-34s %12s\n' "pki-signer offline sign" "$rate_tool" "token C_Sign loop" "$rate_token"
    req=$(stat -c %s "$scratch/request.json")
    uki_req=$(stat -c %s "$scratch/uki-request.json")
    echo
    echo "  goals (medians)"
    ratio=$(div "$rate_tool" "$rate_token")
    goal_row "offline sign rate / token's own rate" "$ratio" "goal >= 0.800" "$(verdict_ge "$ratio" 0.8)"
    goal_row "request for the $(($(stat -c %s "$uki") / 1048576)) MiB UKI, bytes" "$uki_req" "goal <= 16384" \
        "$(verdict "$uki_req" 16384)"
    goal_row "request for $batch_n EFI files, bytes (info)" "$req" "" ""
    echo
    echo "  samples (s, run order)"
    raw_row "pki-signer offline sign, 1 call" "$scratch/offline-pki-signer"
    raw_row "token C_Sign loop (PyKCS11)" "$scratch/offline-token-loop"
    rm -rf "$in"
}

offline_case() {
    case $1 in
        pki-signer)
            rm -f "$scratch/response.json"
            run_case "$bin" offline sign "$scratch/request.json" --keys "$scratch/keys.json" \
                -o "$scratch/response.json" --yes ;;
        token-loop)
            run_case "${PKI_SIGNER_VENV:-$repo/.venv}/bin/python" "$repo/scripts/bench/p11-sign-loop.py" \
                "$PKI_SIGNER_PKCS11_MODULE" release ssig_subca "$batch_n" ;;
        *) die "offline_case: $1" ;;
    esac
    if [ "$2" = 1 ] && [ "$1" = pki-signer ]; then
        # Outside the timing: the response completes into images sbverify accepts.
        local out=$scratch/offline-out
        fresh_dir "$out"
        "$bin" offline complete "$scratch/response.json" --out-dir "$out" >/dev/null ||
            die "offline complete failed"
        sbverify --cert "$pe_cert" "$out/${offline_files[0]##*/}" >/dev/null 2>&1 ||
            die "offline: sbverify rejects the completed ${offline_files[0]##*/}"
    fi
}

# ---------------------------------------------------------------- uki-build

# uki_setup: the inputs (Debian's kernel, a cached random initrd), a PKI
# with the PCR key, the signer's certificate for sbsign, and swtpm for
# systemd-measure sign (systemd 252 runs a trial policy session on a TPM).
uki_setup() {
    ensure_apt systemd systemd-boot-efi binutils sbsigntool swtpm \
        libtss2-esys-3.0.2-0 libtss2-rc0 libtss2-mu0 libtss2-tcti-swtpm0
    # shellcheck source=scripts/testbins.sh
    source "$repo/scripts/testbins.sh"
    testbins_kernel || die "could not fetch Debian's kernel"
    uki_kernel=$PKI_SIGNER_TEST_VMLINUZ
    uki_stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
    uki_initrd=$cache/bench-uki/initrd-${uki_mb}MB.img
    if [ ! -s "$uki_initrd" ]; then
        echo "  making $uki_initrd (once, cached)" >&2
        mkdir -p "${uki_initrd%/*}"
        # Incompressible like a real initrd, the same on every machine.
        openssl enc -aes-128-ctr -nosalt -K 000000000000000000000000000000ff \
            -iv 00000000000000000000000000000000 </dev/zero 2>/dev/null |
            head -c $((uki_mb * 1000 * 1000)) >"$uki_initrd.part" || true
        [ "$(stat -c %s "$uki_initrd.part")" -eq $((uki_mb * 1000 * 1000)) ] ||
            die "could not make $uki_initrd"
        mv "$uki_initrd.part" "$uki_initrd"
    fi
    uki_dir=$scratch/uki
    mkdir -p "$uki_dir"
    printf 'ID=bench\nNAME="pki-signer benchmark"\n' >"$uki_dir/os-release"
    printf 'console=ttyS0 quiet' >"$uki_dir/cmdline"
    uki_pki=$uki_dir/pki
    "$bin" pki init --uefi --dir "$uki_pki" --key-type "$pe_key_type" >/dev/null ||
        die "pki init --uefi failed"
    uki_cert=$uki_dir/ssig_subca.pem
    openssl x509 -in "$uki_pki/ssig_subca.cert" -out "$uki_cert"

    local i
    mkdir -p "$uki_dir/tpm"
    for i in 1 2 3 4 5; do
        # The swtpm TCTI finds the control channel at port + 1.
        uki_tpm_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        swtpm socket --tpm2 --tpmstate "dir=$uki_dir/tpm" \
            --server "type=tcp,port=$uki_tpm_port,bindaddr=127.0.0.1" \
            --ctrl "type=tcp,port=$((uki_tpm_port + 1)),bindaddr=127.0.0.1" \
            --flags not-need-init,startup-clear >"$uki_dir/swtpm.log" 2>&1 &
        bench_pids+=($!)
        sleep 0.5
        kill -0 "${bench_pids[-1]}" 2>/dev/null && return
    done
    die "swtpm did not start: $(tail -n 3 "$uki_dir/swtpm.log")"
}

uki_case() {
    local out=$scratch/uki-out/uki.efi
    fresh_dir "${out%/*}"
    local ours=("$bin" uki build --linux "$uki_kernel" --initrd "$uki_initrd"
        --cmdline-file "$uki_dir/cmdline" --os-release "$uki_dir/os-release" -o "$out"
        --role ssig_subca --dir "$uki_pki" --pcr-role tpm2-pcr)
    case $1 in
        floor) run_case openssl dgst -sha256 "$uki_kernel" "$uki_initrd" ;;
        pki-signer) run_case "${ours[@]}" ;;
        pki-signer-nofsync) run_case eatmydata "${ours[@]}" ;;
        peer-chain)
            run_case bash "$repo/scripts/bench/uki-peer-chain.sh" "$out" "$uki_stub" "$uki_kernel" \
                "$uki_initrd" "$uki_dir/os-release" "$uki_dir/cmdline" "$uki_pki/tpm2-pcr-private.pem" \
                "$uki_pki/tpm2-pcr-public.pem" "$uki_tpm_port" "$uki_pki/ssig_subca.key" "$uki_cert" ;;
        durable-copy) run_case dd if="$uki_ref" of="$out" bs=64K conv=fsync status=none ;;
        *) die "uki_case: $1" ;;
    esac
    # Outside the timing, once per case: sbverify accepts the image, and
    # pki-signer's .pcrsig is the one systemd-measure signed in the chain.
    if [ "$2" = 1 ] && [[ $1 == pki-signer* || $1 == peer-chain ]]; then
        sbverify --cert "$uki_cert" "$out" >/dev/null 2>&1 || die "$1: sbverify rejects $out"
        "$bin" uki show "$out" >/dev/null || die "$1: uki show finds a bad .pcrsig in $out"
        objcopy --dump-section ".pcrsig=$uki_dir/$1.pcrsig" "$out" "$scratch/uki-out/dump.efi" ||
            die "$1: no .pcrsig in $out"
        if [ "$1" = peer-chain ]; then
            cmp -s "$uki_dir/peer-chain.pcrsig" "$uki_dir/pki-signer.pcrsig" ||
                die "the chain's .pcrsig differs from pki-signer's"
        else
            [ -n "$uki_ref" ] || { uki_ref=$uki_dir/ref.efi && cp "$out" "$uki_ref"; }
        fi
    fi
}

# uki-build: a signed UKI with a signed PCR policy, from the same inputs,
# by pki-signer in one call and by the chain of tools it replaces.
bench_uki_build() {
    uki_setup
    uki_ref=
    echo
    echo "== uki build: Debian's kernel ($(stat -c %s "$uki_kernel") bytes) + a ${uki_mb} MB initrd," \
        "signed PCR policy (sha256, 4 phases) and Authenticode, $runs runs each"
    echo "  inputs in the page cache, output dir emptied and synced before each run;" \
        "key ssig_subca $pe_key_type, PCR key tpm2-pcr (pki init --uefi)"
    echo "  peer chain: systemd-measure sign ($(dpkg-query -W -f='${Version}' systemd 2>/dev/null))" \
        "+ objcopy ($(objcopy --version | head -n1 | awk '{ print $NF }')) + sbsign (scripts/bench/uki-peer-chain.sh)"
    load_note "start of section uki-build"
    warm "$uki_kernel"
    warm "$uki_initrd"
    # pki-signer first: its first output is the reference the chain is compared with.
    local cases=(pki-signer floor peer-chain pki-signer-nofsync durable-copy)
    interleave uki uki_case "${cases[@]}"

    local labels=(
        "floor=openssl dgst -sha256 (floor)"
        "pki-signer=pki-signer uki build"
        "peer-chain=systemd-measure+objcopy+sbsign"
        "pki-signer-nofsync=pki-signer, fsync off (eatmydata)"
        "durable-copy=dd conv=fsync (copy floor)"
    )
    local ratio rss
    report_table uki "${labels[@]}"
    echo
    ratio_table uki pki-signer floor "${labels[@]}"
    echo
    echo "  goals (medians)"
    ratio=$(div "$(med uki-pki-signer)" "$(med uki-floor)")
    goal_row "pki-signer / openssl dgst" "$ratio" "goal <= 1.300" "$(verdict "$ratio" 1.3)"
    ratio=$(div "$(med uki-peer-chain)" "$(med uki-pki-signer)")
    goal_row "peer chain / pki-signer" "$ratio" "goal >= 2.000" "$(verdict_ge "$ratio" 2)"
    rss=$(peak uki-pki-signer)
    goal_row "pki-signer peak RSS KiB" "$rss" "goal <= 32768 (32 MiB)" "$(verdict "$rss" 32768)"
    ratio=$(div "$(med uki-pki-signer-nofsync)" "$(med uki-floor)")
    goal_row "pki-signer fsync off / openssl dgst (info)" "$ratio" "" ""
    ratio=$(div "$(med uki-pki-signer)" "$(med uki-durable-copy)")
    goal_row "pki-signer / durable copy (info)" "$ratio" "" ""
    samples uki "${labels[@]}"
}

# ---------------------------------------------------------------- main

# shellcheck source=scripts/deps.sh
source "$repo/scripts/deps.sh"
ensure_gnu_time
command -v openssl >/dev/null || die "openssl not found"

echo "building: cargo build --release" >&2
(cd "$repo" && cargo build --release --quiet) || die "cargo build --release failed"
bin=${CARGO_TARGET_DIR:-$repo/target}/release/pki-signer
[ -x "$bin" ] || die "$bin missing after the build"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/pki-signer-bench.XXXXXX")
# Processes a section started (swtpm) are stopped by their PID at exit.
bench_pids=()
cleanup() {
    local p
    for p in "${bench_pids[@]}"; do
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    rm -rf "$scratch"
}
trap cleanup EXIT

machine_facts
for s in "${SECTIONS[@]}"; do
    if selected "$s"; then
        "bench_${s//-/_}"
        load_note "end of section $s"
    fi
done
