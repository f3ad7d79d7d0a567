#!/bin/sh
# After unpacking. dpkg postinst: configure [old-version] | abort-*;
# RPM %post: 1 = install, 2 or more = upgrade.
# Install: directories, enable and start. Upgrade: restart if running.
# Works without a running systemd (containers, chroots): then only the
# enablement symlinks are made and nothing is started.
set -eu

NAME=peat-sidecar
UNIT=peat-sidecar.service
HOME_DIR=/var/lib/peat-sidecar

case "${1:-}" in
    configure) if [ -z "${2:-}" ]; then action=install; else action=upgrade; fi ;;
    abort-remove | abort-deconfigure) action=install ;;
    abort-upgrade) action=upgrade ;;
    1) action=install ;;
    [2-9] | [1-9][0-9]*) action=upgrade ;;
    *) action=none ;;
esac
if [ -e "$HOME_DIR/.reinstall" ]; then
    rm -f "$HOME_DIR/.reinstall"
    action=install
fi

systemd_running() { [ -d /run/systemd/system ]; }
warn() { echo "$NAME: warning: $*" >&2; }

# The user normally exists since preinst; this covers a deleted user.
if ! getent passwd "$NAME" >/dev/null 2>&1 && command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers /usr/lib/sysusers.d/peat-sidecar.conf || warn "systemd-sysusers failed"
fi

if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/peat-sidecar.conf || warn "systemd-tmpfiles failed"
fi
if [ ! -d "$HOME_DIR" ]; then
    mkdir -p "$HOME_DIR"
    chown "$NAME:$NAME" "$HOME_DIR"
    chmod 0750 "$HOME_DIR"
fi

if [ "$action" = install ] && [ -f /etc/peat-sidecar/config.yaml ]; then
    # Unpacked before the group existed on some package managers.
    chgrp "$NAME" /etc/peat-sidecar/config.yaml
    chmod 0640 /etc/peat-sidecar/config.yaml
fi

if command -v systemctl >/dev/null 2>&1; then
    if systemd_running; then
        systemctl daemon-reload || warn "systemctl daemon-reload failed"
    fi
    case "$action" in
        install)
            # enable works offline too (it only creates symlinks).
            systemctl enable "$UNIT" >/dev/null 2>&1 || warn "could not enable $UNIT"
            if systemd_running; then
                systemctl start "$UNIT" ||
                    warn "$UNIT did not start; see: journalctl -u $UNIT"
            fi
            ;;
        upgrade)
            if systemd_running; then
                systemctl try-restart "$UNIT" ||
                    warn "$UNIT did not restart; see: journalctl -u $UNIT"
            fi
            ;;
    esac
fi
exit 0
