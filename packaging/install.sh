#!/bin/sh
# Installs peat-sidecar on a systemd host without a package manager, to the
# same paths as the .deb and .rpm, from an unpacked release tarball or a tree
# built by `cargo xtask dist` (dist/tree). Run as root. Idempotent.
#
#   install.sh [--prefix DIR] [--no-start] [--from TREE]
#   install.sh --uninstall [--purge] [--prefix DIR]
#
# --prefix DIR  where bin/, lib/ and share/ go (default /usr; e.g. /usr/local).
#               Configuration always goes to /etc, data to /var/lib.
# --no-start    install and enable, but do not start (also allowed without a
#               running systemd, e.g. in an image build or chroot).
# --from TREE   the tree to install from (default: next to this script, or
#               dist/tree of the checkout this script belongs to).
# --uninstall   stop, disable and remove the program; keeps /etc/peat-sidecar,
#               /etc/default/peat-sidecar and /var/lib/peat-sidecar ...
# --purge       ... unless this is given too: then those and the system user
#               go as well.
set -eu

NAME=peat-sidecar
UNIT=peat-sidecar.service
DATA_DIR=/var/lib/peat-sidecar

prefix=/usr
start=yes
mode=install
purge=no
from=

die() { echo "install.sh: $*" >&2; exit 1; }
note() { echo "install.sh: $*"; }
usage() { sed -n '6,/^[^#]/s/^# \{0,1\}//p' "$0"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --from) [ $# -ge 2 ] || die "--from needs a directory"; from=$2; shift 2 ;;
        --from=*) from=${1#--from=}; shift ;;
        --no-start) start=no; shift ;;
        --uninstall) mode=uninstall; shift ;;
        --purge) purge=yes; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

case "$prefix" in
    /*) prefix=${prefix%/}; [ -n "$prefix" ] || die "--prefix / is not supported; use /usr" ;;
    *) die "--prefix must be an absolute path" ;;
esac
[ "$purge" = no ] || [ "$mode" = uninstall ] || die "--purge only goes with --uninstall"
[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo $0 ...)"

systemd_running() { [ -d /run/systemd/system ]; }
if [ "$mode" = install ] && [ "$start" = yes ] && ! systemd_running; then
    die "systemd is not running on this host; use --no-start to install without starting"
fi

# Paths under the prefix, as in the packages.
BIN=$prefix/bin/$NAME
UNIT_FILE=$prefix/lib/systemd/system/$UNIT
SYSUSERS=$prefix/lib/sysusers.d/$NAME.conf
TMPFILES=$prefix/lib/tmpfiles.d/$NAME.conf
MAN=$prefix/share/man/man1/$NAME.1.gz
BASH_COMP=$prefix/share/bash-completion/completions/$NAME
ZSH_COMP=$prefix/share/zsh/vendor-completions/_$NAME
FISH_COMP=$prefix/share/fish/vendor_completions.d/$NAME.fish
DOC_DIR=$prefix/share/doc/$NAME

managed_by_package() {
    if command -v dpkg-query >/dev/null 2>&1 &&
        dpkg-query -W -f='${Status}' "$NAME" 2>/dev/null | grep -q 'ok installed'; then
        return 0
    fi
    command -v rpm >/dev/null 2>&1 && rpm -q "$NAME" >/dev/null 2>&1
}

create_user() {
    getent passwd "$NAME" >/dev/null 2>&1 && return 0
    if command -v systemd-sysusers >/dev/null 2>&1 && systemd-sysusers "$SYSUSERS"; then
        return 0
    fi
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/sbin/nologin
    [ -x "$nologin" ] || nologin=/bin/false
    if command -v useradd >/dev/null 2>&1; then
        getent group "$NAME" >/dev/null 2>&1 || groupadd --system "$NAME"
        useradd --system --gid "$NAME" --home-dir "$DATA_DIR" --no-create-home \
            --shell "$nologin" --comment "peat-sidecar CRDT sidecar" "$NAME"
    elif command -v adduser >/dev/null 2>&1; then
        getent group "$NAME" >/dev/null 2>&1 || addgroup -S "$NAME"
        adduser -S -D -H -h "$DATA_DIR" -s "$nologin" -G "$NAME" -g "peat-sidecar CRDT sidecar" "$NAME"
    else
        die "cannot create the system user: no systemd-sysusers, useradd or adduser"
    fi
}

# Installs a configuration file unless the admin already has one.
install_config() { # SRC DST MODE GROUP
    if [ -e "$2" ]; then
        if ! cmp -s "$1" "$2"; then
            install -m "$3" -o root -g "$4" "$1" "$2.new"
            note "kept your $2; the shipped version is $2.new"
        fi
    else
        install -m "$3" -o root -g "$4" "$1" "$2"
    fi
}

do_install() {
    if [ -z "$from" ]; then
        here=$(cd "$(dirname "$0")" && pwd)
        if [ -x "$here/usr/bin/$NAME" ]; then
            from=$here
        elif [ -x "$here/../dist/tree/usr/bin/$NAME" ]; then
            from=$(cd "$here/../dist/tree" && pwd)
        else
            die "no built tree next to this script: unpack a release tarball or run 'cargo xtask dist' first (or pass --from)"
        fi
    fi
    [ -x "$from/usr/bin/$NAME" ] || die "$from is not a peat-sidecar tree (no usr/bin/$NAME)"
    if managed_by_package; then
        die "$NAME is installed from a package here; remove the package first"
    fi

    install -d -m 0755 "$prefix/bin" "$prefix/lib/systemd/system" "$prefix/lib/sysusers.d" \
        "$prefix/lib/tmpfiles.d" "$prefix/share/man/man1" "$(dirname "$BASH_COMP")" \
        "$(dirname "$ZSH_COMP")" "$(dirname "$FISH_COMP")" "$DOC_DIR"
    install -m 0755 "$from/usr/bin/$NAME" "$BIN"
    install -m 0644 "$from/usr/lib/sysusers.d/$NAME.conf" "$SYSUSERS"
    install -m 0644 "$from/usr/lib/tmpfiles.d/$NAME.conf" "$TMPFILES"
    # The unit names the binary by its absolute path.
    sed "s|/usr/bin/$NAME|$BIN|g" "$from/usr/lib/systemd/system/$UNIT" >"$UNIT_FILE.tmp"
    chmod 0644 "$UNIT_FILE.tmp"
    mv -f "$UNIT_FILE.tmp" "$UNIT_FILE"
    install -m 0644 "$from/usr/share/man/man1/$NAME.1.gz" "$MAN"
    install -m 0644 "$from/usr/share/bash-completion/completions/$NAME" "$BASH_COMP"
    install -m 0644 "$from/usr/share/zsh/vendor-completions/_$NAME" "$ZSH_COMP"
    install -m 0644 "$from/usr/share/fish/vendor_completions.d/$NAME.fish" "$FISH_COMP"
    install -m 0644 "$from/usr/share/doc/$NAME/copyright" "$DOC_DIR/copyright"

    create_user
    install -d -m 0755 /etc/peat-sidecar /etc/default
    install_config "$from/etc/default/$NAME" "/etc/default/$NAME" 0644 root
    install_config "$from/etc/peat-sidecar/config.yaml" /etc/peat-sidecar/config.yaml 0640 "$NAME"
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create "$TMPFILES"
    fi
    install -d -m 0750 -o "$NAME" -g "$NAME" "$DATA_DIR"

    if command -v systemctl >/dev/null 2>&1; then
        if systemd_running; then
            systemctl daemon-reload
        fi
        systemctl enable "$UNIT" >/dev/null 2>&1 || note "warning: could not enable $UNIT"
        if [ "$start" = yes ]; then
            # restart: re-running the script after an update applies it.
            systemctl restart "$UNIT" || die "$UNIT did not start; see: journalctl -u $UNIT"
            note "installed and started $UNIT"
            return 0
        fi
    fi
    note "installed $NAME to $prefix (not started)"
}

do_uninstall() {
    if managed_by_package; then
        die "$NAME is installed from a package here; remove it with the package manager"
    fi
    if command -v systemctl >/dev/null 2>&1; then
        if systemd_running; then
            systemctl stop "$UNIT" 2>/dev/null || true
        fi
        systemctl disable "$UNIT" >/dev/null 2>&1 || true
    fi
    rm -f "$BIN" "$UNIT_FILE" "$SYSUSERS" "$TMPFILES" "$MAN" "$BASH_COMP" "$ZSH_COMP" "$FISH_COMP"
    rm -rf "$DOC_DIR"
    if systemd_running && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload || true
    fi
    if [ "$purge" = yes ]; then
        rm -rf /etc/peat-sidecar "$DATA_DIR"
        rm -f "/etc/default/$NAME" "/etc/default/$NAME.new"
        if getent passwd "$NAME" >/dev/null 2>&1; then
            if command -v userdel >/dev/null 2>&1; then userdel "$NAME"; else deluser "$NAME"; fi
        fi
        if getent group "$NAME" >/dev/null 2>&1; then
            if command -v groupdel >/dev/null 2>&1; then groupdel "$NAME"; else delgroup "$NAME"; fi
        fi
        note "removed $NAME, its configuration, data and system user"
    else
        note "removed $NAME; kept /etc/peat-sidecar, /etc/default/$NAME and $DATA_DIR (use --purge to delete them)"
    fi
}

if [ "$mode" = install ]; then do_install; else do_uninstall; fi
