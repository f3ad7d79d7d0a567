#!/bin/sh
# After removing files. dpkg postrm: remove | purge | upgrade | disappear |
# abort-install | abort-upgrade | failed-upgrade; RPM %postun: 0 = removal,
# 1 or more = upgrade.
# Removal keeps data and configuration; only dpkg's purge deletes the
# configuration, the data and the system user.
set -eu

NAME=peat-sidecar

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi

if [ "${1:-}" = purge ]; then
    rm -rf /etc/peat-sidecar /var/lib/peat-sidecar
    rm -f /etc/default/peat-sidecar
    if getent passwd "$NAME" >/dev/null 2>&1; then
        userdel "$NAME" || echo "$NAME: warning: could not delete user $NAME" >&2
    fi
    if getent group "$NAME" >/dev/null 2>&1; then
        groupdel "$NAME" || echo "$NAME: warning: could not delete group $NAME" >&2
    fi
fi
exit 0
