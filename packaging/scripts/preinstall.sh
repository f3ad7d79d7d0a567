#!/bin/sh
# Before unpacking. dpkg preinst: install [old-version] | upgrade old-version;
# RPM %pre: 1 = install, 2 or more = upgrade.
# Creates the system user first, so that files owned by group peat-sidecar
# (config.yaml) unpack with that group.
set -eu

NAME=peat-sidecar
HOME_DIR=/var/lib/peat-sidecar

create_user() {
    if getent passwd "$NAME" >/dev/null 2>&1; then
        return 0
    fi
    if command -v systemd-sysusers >/dev/null 2>&1; then
        # The same line as /usr/lib/sysusers.d/peat-sidecar.conf, which is
        # not unpacked yet at this point.
        if systemd-sysusers --replace=/usr/lib/sysusers.d/peat-sidecar.conf - <<'SYSUSERS'
u peat-sidecar - "peat-sidecar CRDT sidecar" /var/lib/peat-sidecar /usr/sbin/nologin
SYSUSERS
        then
            return 0
        fi
    fi
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/sbin/nologin
    [ -x "$nologin" ] || nologin=/bin/false
    if command -v useradd >/dev/null 2>&1; then
        getent group "$NAME" >/dev/null 2>&1 || groupadd --system "$NAME"
        useradd --system --gid "$NAME" --home-dir "$HOME_DIR" --no-create-home \
            --shell "$nologin" --comment "peat-sidecar CRDT sidecar" "$NAME"
    else
        echo "$NAME: cannot create system user: neither systemd-sysusers nor useradd found" >&2
        exit 1
    fi
}

create_user

# dpkg passes the last configured version when a removed (not purged)
# package is installed again: that is a fresh install for the service, not
# an upgrade, so tell postinst to enable and start it again.
if [ "${1:-}" = install ] && [ -n "${2:-}" ] && [ -d "$HOME_DIR" ]; then
    : >"$HOME_DIR/.reinstall"
fi
exit 0
