#!/bin/sh
# Acknowledged writes survive a power cut. Runs as root in a throwaway guest,
# in two boots that share a data disk; the host cuts the power in between.
#
#   power-cut.sh write  DISK BINARY         make a file system on DISK, serve
#       from it (encrypted at rest) and write documents from four concurrent
#       writers, printing `acked <id>` after each acknowledged write, until
#       the power goes
#   power-cut.sh verify DISK BINARY ACKED   mount DISK again (the file system
#       recovers its own journal), serve the same data and check that every
#       document of the `acked` lines in the file ACKED is there with the
#       content it was written with
#
# The host collects the `acked` lines of the first boot for the second.
set -eu

phase=$1
disk=$2
bin=$3
data=/mnt/peat-power-cut
api=unix:///run/peat-power-cut.sock
collection=power
# Its own empty configuration: an installed package's settings stay out.
config=/run/peat-power-cut.yaml
# Encrypted at rest, so that sealed values are what the cut interrupts.
key=$data/encryption.key

ctl() {
    "$bin" --config "$config" ctl --addr "$api" "$@"
}

start_sidecar() {
    : >"$config"
    "$bin" --config "$config" serve --data-dir "$data/store" --listen "$api" --mesh-listen disabled \
        --encryption-key-file "$key" >/run/peat-power-cut.log 2>&1 &
    tries=0
    until ctl status >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -gt 600 ]; then
            echo "the sidecar did not start:"
            cat /run/peat-power-cut.log
            exit 1
        fi
        sleep 0.1
    done
}

writer() {
    i=0
    while :; do
        i=$((i + 1))
        id="w$1-$i"
        if ctl put "$collection" "$id" "{\"writer\":$1,\"i\":$i}" >/dev/null; then
            echo "acked $id"
        else
            echo "put $id failed"
        fi
    done
}

mkdir -p "$data"
case $phase in
write)
    # ext4 where the tools are there; XFS (Rocky's root file system) otherwise.
    if command -v mkfs.ext4 >/dev/null 2>&1; then
        mkfs.ext4 -q -F "$disk"
    else
        mkfs.xfs -q -f "$disk"
    fi
    mount "$disk" "$data"
    (umask 077 && "$bin" keygen >"$key")
    sync
    start_sidecar
    echo "writing"
    for w in 1 2 3 4; do
        writer "$w" &
    done
    # Until the host cuts the power.
    wait
    ;;
verify)
    acked=$4
    mount "$disk" "$data"
    start_sidecar
    stored=$(ctl list "$collection" | wc -l)
    checked=0
    lost=0
    while read -r _ id; do
        # The id says what was written: w<writer>-<i> holds {"writer":<writer>,"i":<i>}.
        w=${id#w}
        w=${w%%-*}
        i=${id##*-}
        got=$(ctl get "$collection" "$id" 2>&1 </dev/null) || got="(missing: $got)"
        case $got in
            "{\"i\":$i,\"writer\":$w}" | "{\"writer\":$w,\"i\":$i}") ;;
            *)
                echo "LOST $id: $got"
                lost=$((lost + 1))
                ;;
        esac
        checked=$((checked + 1))
    done <"$acked"
    if [ "$checked" -eq 0 ]; then
        echo "no acknowledged writes to check in $acked"
        exit 1
    fi
    if [ "$lost" -gt 0 ]; then
        echo "$lost of $checked acknowledged writes lost in the power cut"
        exit 1
    fi
    echo "verified: all $checked acknowledged documents are back ($stored stored: writes in flight may land too)"
    ;;
*)
    echo "usage: power-cut.sh write DISK BINARY | verify DISK BINARY ACKED" >&2
    exit 2
    ;;
esac
