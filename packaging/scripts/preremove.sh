#!/bin/sh
# Before removing files. dpkg prerm: remove | upgrade new-version |
# deconfigure | failed-upgrade; RPM %preun: 0 = removal, 1 or more = upgrade.
# Only a real removal stops and disables the service: an upgrade leaves it
# running for postinst to restart.
set -eu

UNIT=peat-sidecar.service

case "${1:-}" in
    remove | deconfigure | 0) ;;
    *) exit 0 ;;
esac

if command -v systemctl >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
        systemctl stop "$UNIT" || echo "peat-sidecar: warning: could not stop $UNIT" >&2
    fi
    if [ "${1:-}" != deconfigure ]; then
        systemctl disable "$UNIT" >/dev/null 2>&1 || true
    fi
fi
exit 0
