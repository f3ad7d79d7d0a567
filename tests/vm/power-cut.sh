#!/bin/sh
# Acknowledged writes survive a power cut. Runs as root in a throwaway guest,
# in two boots that share a data disk; the host cuts the power in between.
#
#   power-cut.sh write  DISK BINARY         make a file system on DISK, serve
#       from it (encrypted at rest) and write documents from four concurrent
#       writers of small documents and one of large ones, printing
#       `acked <id> [<sha256>]` after each acknowledged write and
#       `checkpoint started|done ...` as the store checkpoints, until the
#       power goes
#   power-cut.sh verify DISK BINARY ACKED   mount DISK again (the file system
#       recovers its own journal), serve the same data and check that every
#       document of the `acked` lines in the file ACKED is there with the
#       content it was written with
#
# The host collects the `acked` lines of the first boot for the second. It
# cuts the power at a checkpoint, which the large documents bring about by
# filling the store's journal: as one starts (sled's flush is cut short, the
# full journal must replay onto what sled kept) or right after one finished
# (the journal has started over: the writes before it are only in sled).
set -eu

phase=$1
disk=$2
bin=$3
data=/mnt/peat-power-cut
api=unix:///run/peat-power-cut.sock
collection=power
# Its own configuration: an installed package's settings stay out.
config=/run/peat-power-cut.yaml
log=/run/peat-power-cut.log
# Encrypted at rest, so that sealed values are what the cut interrupts.
key=$data/encryption.key

ctl() {
    "$bin" --config "$config" ctl --addr "$api" "$@"
}

start_sidecar() {
    # The store's checkpoints are logged at debug level.
    echo "log_level: info,peat_sidecar::store=debug" >"$config"
    "$bin" --config "$config" serve --data-dir "$data/store" --listen "$api" --mesh-listen disabled \
        --encryption-key-file "$key" >"$log" 2>&1 &
    tries=0
    until ctl status >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -gt 600 ]; then
            echo "the sidecar did not start:"
            cat "$log"
            exit 1
        fi
        sleep 0.1
    done
}

# put ID DOC [SUM]: writes DOC (from stdin, as large ones must be) and says
# whether the write was acknowledged, with SUM if given.
put() {
    if printf '%s' "$2" | ctl put "$collection" "$1" - >/dev/null; then
        echo "acked $1${3:+ $3}"
    else
        echo "put $1 failed"
    fi
}

writer() {
    i=0
    while :; do
        i=$((i + 1))
        put "w$1-$i" "{\"writer\":$1,\"i\":$i}"
    done
}

# Random content does not compress: each write journals about 1.5 MiB (the
# change and the document's record each hold the content), so the 16 MiB
# journal fills, and the store checkpoints, every ~11 of them. The
# acknowledgement carries the document's checksum.
large_writer() {
    i=0
    while :; do
        i=$((i + 1))
        doc="{\"blob\":\"$(head -c 589824 /dev/urandom | base64 -w0)\"}"
        sum=$(printf '%s' "$doc" | sha256sum)
        put "large-$i" "$doc" "${sum%% *}"
    done
}

# The checkpoints from now on (not the one at the first start, which
# persists the node id).
report_checkpoints() {
    tail -n 0 -F "$log" 2>/dev/null | while IFS= read -r line; do
        case $line in
            *"checkpoint started: "* | *"checkpoint done: "*) echo "checkpoint ${line#*checkpoint }" ;;
        esac
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
    report_checkpoints &
    for w in 1 2 3 4; do
        writer "$w" &
    done
    large_writer &
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
    large=0
    while read -r _ id sum; do
        got=$(ctl get "$collection" "$id" 2>&1 </dev/null) || got="(missing: $got)"
        case $id in
            large-*)
                large=$((large + 1))
                if [ "$(printf '%s' "$got" | sha256sum | cut -d' ' -f1)" = "$sum" ]; then
                    got=ok
                else
                    echo "LOST $id: its content is not the $sum acknowledged: $(printf '%s' "$got" | head -c 200)"
                    got=lost
                fi
                ;;
            *)
                # The id says what was written: w<writer>-<i> holds {"writer":<writer>,"i":<i>}.
                w=${id#w}
                w=${w%%-*}
                i=${id##*-}
                case $got in
                    "{\"i\":$i,\"writer\":$w}" | "{\"writer\":$w,\"i\":$i}") got=ok ;;
                    *)
                        echo "LOST $id: $got"
                        got=lost
                        ;;
                esac
                ;;
        esac
        if [ "$got" = lost ]; then
            lost=$((lost + 1))
        fi
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
    echo "verified: all $checked acknowledged documents are back, $large of them large ($stored stored: writes in flight may land too)"
    ;;
*)
    echo "usage: power-cut.sh write DISK BINARY | verify DISK BINARY ACKED" >&2
    exit 2
    ;;
esac
