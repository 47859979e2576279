# shellcheck shell=bash
# Sourced by make-uki.sh and uki-peer-chain.sh.

# add_sections STUB OUT .NAME=FILE...: objcopy STUB to OUT with the sections
# added after the stub's last one, in the order given, each at the next
# 4 KiB boundary in memory (the systemd-stub(7) objcopy recipe).
add_sections() {
    local stub=$1 out=$2 end=0 e vsize vma off s name file
    shift 2
    while read -r vsize vma; do
        e=$((16#$vma + 16#$vsize))
        [ "$e" -gt "$end" ] && end=$e
    done < <(objdump -h -w "$stub" | awk '$1 ~ /^[0-9]+$/ { print $3, $4 }')
    off=$(((end + 4095) / 4096 * 4096))
    local args=()
    for s in "$@"; do
        name=${s%%=*} file=${s#*=}
        args+=(--add-section "$name=$file" --change-section-vma "$name=$(printf '0x%x' "$off")")
        off=$(((off + $(stat -c %s "$file") + 4095) / 4096 * 4096))
    done
    objcopy "${args[@]}" "$stub" "$out"
}
