#!/bin/sh
# Checks a peat-sidecar package on a booted systemd host, as root, through
# its whole life: install, serve (TCP, then Unix socket), hardening, upgrade,
# remove, purge and reinstall. Prints every step; stops at the first failed
# check with the service's journal and exits non-zero.
#
#   guest-check.sh deb        PACKAGE.deb   NEWER.deb
#   guest-check.sh rpm        PACKAGE.rpm   NEWER.rpm
#   guest-check.sh install.sh RELEASE.tar.gz [RELEASE.tar.gz]
#
# NEWER is the same program packaged with a higher version (the upgrade
# target). For install.sh the upgrade installs the given release over the
# running one. Runs on Debian, Ubuntu and Rocky Linux guests; meant for
# throwaway machines: it installs, edits /etc and removes users.
#
# Environment: PEAT_VM_MAX_EXPOSURE  highest acceptable `systemd-analyze
#              security` exposure (default 2.0, the bar the unit is built to)
set -eu

NAME=peat-sidecar
UNIT=peat-sidecar.service
CONFIG=/etc/peat-sidecar/config.yaml
ENV_FILE=/etc/default/peat-sidecar
DATA=/var/lib/peat-sidecar
RUNDIR=/run/peat-sidecar
SOCKET=$RUNDIR/peat-sidecar.sock
TCP_ADDR=127.0.0.1:50051
MAX_EXPOSURE=${PEAT_VM_MAX_EXPOSURE:-2.0}
# Under full emulation a start can take a while; a real host is far quicker.
ACTIVE_TIMEOUT=120
MARK="vm-check edit $$"

usage() {
    sed -n '7,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
[ $# -ge 2 ] || usage
KIND=$1
ARTIFACT=$2
NEWER=${3:-$2}
case "$KIND" in deb | rpm | install.sh) ;; *) usage ;; esac

started=$(cut -d. -f1 /proc/uptime)
reported=no

elapsed() { echo $(($(cut -d. -f1 /proc/uptime) - started)); }
say() { echo "[$(elapsed)s] $*"; }
step() { echo; say "== $*"; }
ok() { say "ok: $*"; }

diagnose() {
    echo "---- systemctl status $UNIT"
    systemctl status --no-pager --lines=0 "$UNIT" 2>&1 || true
    echo "---- journalctl -u $UNIT"
    journalctl -u "$UNIT" --no-pager -b -n 200 2>&1 || true
    echo "----"
}

fail() {
    reported=yes
    say "FAIL: $*" >&2
    diagnose >&2
    exit 1
}

on_exit() {
    rc=$?
    if [ "$rc" -ne 0 ] && [ "$reported" = no ]; then
        say "FAIL: a command failed unexpectedly (exit $rc)" >&2
        diagnose >&2
    fi
}
trap on_exit EXIT

# check DESCRIPTION COMMAND...: runs COMMAND, shows its output indented,
# fails with DESCRIPTION.
check() {
    what=$1
    shift
    if out=$("$@" 2>&1); then
        [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/    /'
        ok "$what"
    else
        [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/    /' >&2
        fail "$what"
    fi
}

# stat_is PATH "MODE OWNER GROUP"
stat_is() {
    [ -e "$1" ] || fail "$1 does not exist"
    got=$(stat -c '%a %U %G' "$1")
    [ "$got" = "$2" ] || fail "$1 is '$got', expected '$2'"
    ok "$1 is $2"
}

absent() {
    for p in "$@"; do
        if [ -e "$p" ] || [ -L "$p" ]; then
            fail "$p is still there"
        fi
    done
    ok "gone: $*"
}

user_exists() { getent passwd "$NAME" >/dev/null 2>&1; }
group_exists() { getent group "$NAME" >/dev/null 2>&1; }

wait_active() {
    i=0
    while [ "$i" -lt "$ACTIVE_TIMEOUT" ]; do
        state=$(systemctl is-active "$UNIT" 2>/dev/null || true)
        case "$state" in
            active) ok "$UNIT is active after ${i}s"; return 0 ;;
            failed) fail "$UNIT failed to start" ;;
        esac
        sleep 1
        i=$((i + 1))
    done
    fail "$UNIT not active within ${ACTIVE_TIMEOUT}s (state: $state)"
}

main_pid() { systemctl show -p MainPID --value "$UNIT"; }
invocation() { systemctl show -p InvocationID --value "$UNIT"; }

# ---- the API, through both clients ---------------------------------------

# api_setup tcp|unix: points ctl and curl at the current listen address.
api_setup() {
    TRANSPORT=$1
    case "$1" in
        tcp)
            CTL_ADDR=tcp://$TCP_ADDR
            BASE=http://$TCP_ADDR ;;
        unix)
            CTL_ADDR=unix://$SOCKET
            BASE=http://localhost ;;
    esac
}

ctl() { peat-sidecar ctl --addr "$CTL_ADDR" "$@"; }

# connect METHOD JSON: one Connect-protocol JSON call; prints the body.
connect() {
    if [ "$TRANSPORT" = unix ]; then
        curl -fsS --max-time 20 --unix-socket "$SOCKET" -X POST -H 'Content-Type: application/json' \
            --data "$2" "$BASE/$1"
    else
        curl -fsS --max-time 20 -X POST -H 'Content-Type: application/json' --data "$2" "$BASE/$1"
    fi
}

contains() { # HAYSTACK NEEDLE
    case "$1" in *"$2"*) return 0 ;; *) return 1 ;; esac
}

# Waits for the API to answer health checks (the socket can lag READY=1 by
# nothing, but a restart under emulation is slow to settle).
wait_serving() {
    i=0
    while [ "$i" -lt 30 ]; do
        if body=$(connect grpc.health.v1.Health/Check '{}' 2>/dev/null) && contains "$body" SERVING; then
            ok "gRPC health over $TRANSPORT: $body"
            return 0
        fi
        sleep 1
        i=$((i + 1))
    done
    fail "health check over $TRANSPORT never reported SERVING (last: ${body:-no answer})"
}

# exercise_api TAG: Put/Get/List through `peat-sidecar ctl` and curl.
exercise_api() {
    tag=$1
    wait_serving
    check "ctl status over $TRANSPORT" ctl status
    check "ctl put $tag-ctl" ctl put vmcheck "$tag-ctl" "{\"via\":\"ctl\",\"tag\":\"$tag\"}"
    out=$(ctl get vmcheck "$tag-ctl") || fail "ctl get $tag-ctl"
    contains "$out" "\"$tag\"" || fail "ctl get $tag-ctl returned: $out"
    ok "ctl get $tag-ctl: $out"
    out=$(ctl list vmcheck) || fail "ctl list vmcheck"
    contains "$out" "$tag-ctl" || fail "ctl list vmcheck lacks $tag-ctl: $out"
    ok "ctl list vmcheck has $tag-ctl"
    if ctl get vmcheck no-such-doc >/dev/null 2>&1; then
        fail "ctl get of a missing document succeeded"
    fi
    ok "ctl get of a missing document fails"

    body=$(connect peat.sidecar.v1.PeatSidecar/PutDocument \
        "{\"collection\":\"vmcheck\",\"docId\":\"$tag-curl\",\"jsonData\":\"{\\\"via\\\":\\\"curl\\\",\\\"tag\\\":\\\"$tag\\\"}\"}") ||
        fail "curl PutDocument $tag-curl"
    ok "curl PutDocument $tag-curl: $body"
    body=$(connect peat.sidecar.v1.PeatSidecar/GetDocument "{\"collection\":\"vmcheck\",\"docId\":\"$tag-curl\"}") ||
        fail "curl GetDocument $tag-curl"
    contains "$body" "$tag" || fail "curl GetDocument $tag-curl returned: $body"
    ok "curl GetDocument $tag-curl: $body"
    # Each client reads what the other wrote.
    body=$(connect peat.sidecar.v1.PeatSidecar/GetDocument "{\"collection\":\"vmcheck\",\"docId\":\"$tag-ctl\"}") ||
        fail "curl GetDocument $tag-ctl"
    contains "$body" "$tag" || fail "curl GetDocument $tag-ctl returned: $body"
    ok "curl reads the document ctl wrote"
    out=$(ctl get vmcheck "$tag-curl") || fail "ctl get $tag-curl"
    contains "$out" curl || fail "ctl get $tag-curl returned: $out"
    ok "ctl reads the document curl wrote"
    body=$(connect peat.sidecar.v1.PeatSidecar/ListDocuments '{"collection":"vmcheck"}') ||
        fail "curl ListDocuments"
    if ! contains "$body" "$tag-curl" || ! contains "$body" "$tag-ctl"; then
        fail "curl ListDocuments returned: $body"
    fi
    ok "curl ListDocuments: $body"
}

# Both documents written in an earlier phase are still readable.
documents_kept() {
    tag=$1
    for doc in "$tag-ctl" "$tag-curl"; do
        out=$(ctl get vmcheck "$doc") || fail "document $doc is gone"
        contains "$out" "$tag" || fail "document $doc changed: $out"
    done
    ok "documents from the $tag phase are kept"
}

# set_listen ADDR: the config edit the upgrade must keep.
set_listen() {
    grep -q '^listen:' "$CONFIG" || fail "$CONFIG has no listen: line"
    sed -i "s|^listen:.*|listen: $1|" "$CONFIG"
    grep -q "^# $MARK" "$CONFIG" || printf '# %s\n' "$MARK" >>"$CONFIG"
    ok "$CONFIG: listen: $1"
}

# ---- install, upgrade and removal per kind --------------------------------

RELEASE_DIR=/var/tmp/peat-vm-release

# rpm on a dpkg-based guest has an empty database that knows nothing of the
# system's files, so a requirement other than rpm's own (rpmlib) features
# would look unmet. There such requirements are checked against the system
# by hand and rpm is told not to re-check them; Debian's rpm also wants to
# be told that it may install at all.
rpm_opts() {
    if rpm -q --quiet --whatprovides /bin/sh 2>/dev/null; then
        return 0
    fi
    if rpm --help 2>/dev/null | grep -q -- --force-debian; then
        echo "--force-debian"
    fi
    foreign=$(rpm -qp --requires "$1" | while read -r req _; do
        case "$req" in
            rpmlib\(*) ;;
            /*) [ -e "$req" ] || { echo "unmet requirement: $req" >&2; exit 1; }
                echo "$req" ;;
            *) dpkg-query -W "$req" >/dev/null 2>&1 ||
                { echo "unmet requirement: $req" >&2; exit 1; }
                echo "$req" ;;
        esac
    done) || fail "$1 requires what this system does not have"
    if [ -n "$foreign" ]; then
        echo "requirements met by the system: $foreign" | tr '\n' ' ' >&2
        echo "--nodeps"
    fi
}

# The install.sh of the last unpacked release tarball.
release_script() { find "$RELEASE_DIR" -maxdepth 2 -name install.sh | head -n 1; }

unpack_release() { # TARBALL
    rm -rf "$RELEASE_DIR"
    mkdir -p "$RELEASE_DIR"
    tar -xzf "$1" -C "$RELEASE_DIR"
    script=$(release_script)
    if [ -z "$script" ] || [ ! -x "$script" ]; then
        fail "$1 holds no executable install.sh"
    fi
}

# Installs (rpm -i) or upgrades (rpm -U) to ARTIFACT; dpkg and install.sh
# do both the same way.
# rpm_opts prints options without spaces: $opts is split on purpose.
# shellcheck disable=SC2086
pkg_apply() { # -i|-U ARTIFACT
    case "$KIND" in
        deb) dpkg -i "$2" ;;
        rpm) opts=$(rpm_opts "$2") && echo "+ rpm $1" $opts "$2" && rpm "$1" $opts "$2" ;;
        install.sh) unpack_release "$2" && "$(release_script)" ;;
    esac
}

pkg_version() { # ARTIFACT -> version of the file
    case "$KIND" in
        deb) dpkg-deb -f "$1" Version ;;
        rpm) rpm -qp --qf '%{VERSION}-%{RELEASE}\n' "$1" ;;
        install.sh) echo none ;;
    esac
}

installed_version() {
    case "$KIND" in
        deb) dpkg-query -W -f '${Version}\n' "$NAME" ;;
        rpm) rpm -q --qf '%{VERSION}-%{RELEASE}\n' "$NAME" ;;
        install.sh) echo none ;;
    esac
}

pkg_remove() {
    case "$KIND" in
        deb) dpkg -r "$NAME" ;;
        rpm) rpm -e "$NAME" ;;
        install.sh) "$(release_script)" --uninstall ;;
    esac
}

pkg_purge() {
    case "$KIND" in
        deb) dpkg -P "$NAME" ;;
        install.sh) "$(release_script)" --uninstall --purge ;;
        rpm) return 1 ;;
    esac
}

# ---- the checks ------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || fail "must run as root"
[ -d /run/systemd/system ] || fail "systemd is not running"
[ -f "$ARTIFACT" ] || fail "no such file: $ARTIFACT"
[ -f "$NEWER" ] || fail "no such file: $NEWER"
# In a subshell: os-release sets NAME, among others.
# shellcheck source=/dev/null
os=$(. /etc/os-release && echo "$PRETTY_NAME")
say "guest-check $KIND on $os, kernel $(uname -r), systemd $(systemctl --version | sed -n '1s/systemd \([0-9]*\).*/\1/p')"
say "artifact: $(basename "$ARTIFACT"), upgrade: $(basename "$NEWER")"
if user_exists || [ -e /usr/bin/$NAME ]; then
    fail "this host already has $NAME; use a fresh machine"
fi

step "1. install"
check "install $(basename "$ARTIFACT")" pkg_apply -i "$ARTIFACT"
user_exists || fail "user $NAME missing"
ok "user: $(getent passwd "$NAME")"
group_exists || fail "group $NAME missing"
uid=$(id -u "$NAME")
[ "$uid" -lt 1000 ] || fail "$NAME has uid $uid, not a system uid"
shell=$(getent passwd "$NAME" | cut -d: -f7)
case "$shell" in */nologin | /bin/false) ok "login shell $shell" ;; *) fail "login shell is $shell" ;; esac
stat_is /usr/bin/$NAME "755 root root"
stat_is "$CONFIG" "640 root $NAME"
stat_is /etc/peat-sidecar "755 root root"
stat_is "$ENV_FILE" "644 root root"
stat_is "$DATA" "750 $NAME $NAME"
unit_file=$(systemctl show -p FragmentPath --value "$UNIT")
[ -n "$unit_file" ] || fail "systemd does not know $UNIT"
stat_is "$unit_file" "644 root root"
check "peat-sidecar --version" peat-sidecar --version
[ "$(systemctl is-enabled "$UNIT" 2>&1)" = enabled ] || fail "$UNIT is not enabled"
ok "$UNIT is enabled"
wait_active
[ "$(systemctl show -p Type --value "$UNIT")" = notify ] || fail "$UNIT is not Type=notify"
ok "Type=notify, so active means the daemon reported READY=1"
# systemd stamps each WATCHDOG=1; the daemon pings every second while its disk answers.
[ "$(systemctl show -p WatchdogUSec --value "$UNIT")" = 30s ] || fail "$UNIT has no 30 s watchdog"
pinged=$(systemctl show -p WatchdogTimestampMonotonic --value "$UNIT")
sleep 3
[ "$(systemctl show -p WatchdogTimestampMonotonic --value "$UNIT")" != "$pinged" ] ||
    fail "no watchdog ping within 3 s"
ok "watchdog armed (30 s) and pinged"
stat_is "$RUNDIR" "750 $NAME $NAME"
check "config check accepts the shipped config" peat-sidecar --config "$CONFIG" config check

step "2a. serve on TCP $TCP_ADDR"
set_listen "tcp://$TCP_ADDR"
check "restart" systemctl restart "$UNIT"
wait_active
api_setup tcp
wait_serving
ss -Hltnp "sport = :${TCP_ADDR##*:}" | grep -q "$NAME" ||
    fail "nothing of $NAME listens on $TCP_ADDR: $(ss -Hltnp)"
ok "listening: $(ss -Hltn "sport = :${TCP_ADDR##*:}" | awk '{print $4}')"
exercise_api tcp

step "2b. serve on the Unix socket $SOCKET"
set_listen "unix://$SOCKET"
check "restart" systemctl restart "$UNIT"
wait_active
[ -S "$SOCKET" ] || fail "$SOCKET is not a socket"
stat_is "$SOCKET" "660 $NAME $NAME"
if ss -Hltn "sport = :${TCP_ADDR##*:}" | grep -q .; then
    fail "$TCP_ADDR is still bound after switching to the socket"
fi
ok "$TCP_ADDR is no longer bound"
api_setup unix
exercise_api unix
documents_kept tcp

step "3. systemd-analyze security"
# `systemd-analyze security` exists since systemd 240; older hosts (Rocky 8
# ships 239) cannot score the unit, which is said rather than skipped silently.
systemd_version=$(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')
if [ "${systemd_version:-0}" -lt 240 ]; then
    say "systemd $systemd_version has no 'systemd-analyze security'; exposure not scored on this host"
else
    security=$(systemd-analyze security --no-pager "$UNIT" 2>&1) || true
    printf '%s\n' "$security"
    exposure=$(printf '%s\n' "$security" | sed -n 's/.*Overall exposure level for [^:]*: *\([0-9.]*\).*/\1/p')
    [ -n "$exposure" ] || fail "systemd-analyze printed no exposure level"
    awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' ||
        fail "exposure $exposure is above $MAX_EXPOSURE"
    ok "exposure $exposure <= $MAX_EXPOSURE"
fi

step "4. upgrade to $(basename "$NEWER")"
printf '# %s\n' "$MARK" >>"$ENV_FILE"
old_version=$(installed_version)
new_version=$(pkg_version "$NEWER")
case "$KIND" in
    deb) dpkg --compare-versions "$new_version" gt "$old_version" ||
        fail "$new_version is not newer than $old_version" ;;
    rpm)
        highest=$(printf '%s\n%s\n' "$old_version" "$new_version" | sort -V | tail -n 1)
        if [ "$new_version" = "$old_version" ] || [ "$highest" != "$new_version" ]; then
            fail "$new_version is not newer than $old_version"
        fi ;;
esac
before=$(invocation)
if [ "$KIND" = install.sh ]; then
    # install.sh records no version: its upgrade is a run over a running install.
    check "install.sh over the running install" pkg_apply -U "$NEWER"
else
    check "upgrade $old_version -> $new_version" pkg_apply -U "$NEWER"
    [ "$(installed_version)" = "$new_version" ] || fail "installed version is $(installed_version), expected $new_version"
    ok "installed version $(installed_version)"
fi
grep -q "^# $MARK" "$CONFIG" || fail "the upgrade lost the edit of $CONFIG"
grep -q "^listen: unix://$SOCKET" "$CONFIG" || fail "the upgrade changed listen: in $CONFIG"
grep -q "^# $MARK" "$ENV_FILE" || fail "the upgrade lost the edit of $ENV_FILE"
ok "config edits kept ($CONFIG, $ENV_FILE)"
stat_is "$CONFIG" "640 root $NAME"
wait_active
[ "$(invocation)" != "$before" ] || fail "$UNIT was not restarted by the upgrade"
ok "$UNIT was restarted"
exercise_api upgraded
documents_kept tcp
documents_kept unix

step "5a. remove"
check "remove" pkg_remove
if systemctl is-active --quiet "$UNIT"; then fail "$UNIT still active"; fi
ok "$UNIT is stopped"
enabled=$(systemctl is-enabled "$UNIT" 2>/dev/null || true)
case "$enabled" in enabled | enabled-runtime) fail "$UNIT still enabled" ;; esac
ok "$UNIT is not enabled (${enabled:-unknown unit})"
absent /usr/bin/$NAME
if [ "$KIND" = deb ]; then
    status=$(dpkg-query -W -f '${Status}' "$NAME" 2>/dev/null || true)
    [ "$status" = "deinstall ok config-files" ] || fail "dpkg status after remove: $status"
    ok "dpkg status: $status"
fi
links=$(find /etc/systemd/system -name "$UNIT")
[ -z "$links" ] || fail "enablement links of $UNIT are left: $links"
ok "no enablement links left"
if [ "$KIND" = rpm ] && [ ! -e "$CONFIG" ]; then
    # rpm keeps an edited %config(noreplace) file as .rpmsave.
    grep -q "^# $MARK" "$CONFIG.rpmsave" || fail "the edited $CONFIG is gone"
    ok "edited config kept as $CONFIG.rpmsave"
else
    grep -q "^# $MARK" "$CONFIG" || fail "the edited $CONFIG is gone"
    ok "edited config kept: $CONFIG"
fi
[ -e "$ENV_FILE" ] || [ -e "$ENV_FILE.rpmsave" ] || fail "$ENV_FILE is gone"
[ -n "$(ls -A "$DATA" 2>/dev/null)" ] || fail "the data in $DATA is gone"
ok "data kept: $DATA ($(du -sh "$DATA" | cut -f1))"

if [ "$KIND" = rpm ]; then
    step "5b. purge: rpm has none; reinstall must find the kept data"
else
    step "5b. purge"
    check "purge" pkg_purge
    absent /etc/peat-sidecar "$ENV_FILE" "$DATA" "$RUNDIR" /usr/bin/$NAME "$unit_file"
    if user_exists; then fail "user $NAME is still there"; fi
    if group_exists; then fail "group $NAME is still there"; fi
    ok "user and group $NAME removed"
fi

step "6. reinstall"
check "install $(basename "$ARTIFACT") again" pkg_apply -i "$ARTIFACT"
[ "$(systemctl is-enabled "$UNIT" 2>&1)" = enabled ] || fail "$UNIT is not enabled"
ok "$UNIT is enabled"
wait_active
stat_is "$CONFIG" "640 root $NAME"
stat_is "$DATA" "750 $NAME $NAME"
# The packaged config serves the socket.
api_setup unix
exercise_api reinstalled
if [ "$KIND" = rpm ]; then
    documents_kept unix
else
    if ctl get vmcheck unix-ctl >/dev/null 2>&1; then
        fail "a document survived the purge"
    fi
    ok "nothing survived the purge"
fi

step "all checks passed for $KIND in $(elapsed)s"
