# One distribution VM check: boot the distribution's own cloud image under
# qemu/KVM, let cloud-init (NoCloud seed) authorise a throwaway ssh key, copy
# in the package and the shared guest script (tests/vm/guest-check.sh), run
# it as root and fail when it fails. Then the shared power-cut check
# (tests/vm/power-cut.sh): the static binary writes onto a raw data disk
# until enough writes are acknowledged and the store has just checkpointed,
# qemu is killed, and after a second boot every acknowledged document must
# be back. The guest's only network is qemu's user-mode stack with ssh
# forwarded to the build sandbox's loopback.
{ pkgs
, name
, image
, # Package set for the image's family: { install = drv; upgrade = drv; }
  # where each derivation's output directory holds exactly one .deb or .rpm.
  packages
, guestCheck
, powerCut
, # The static peat-sidecar executable.
  binary
}:
let
  baseImage = pkgs.fetchurl {
    name = "${name}-cloudimg.qcow2";
    inherit (image) url hash;
  };
  sshPort = "2222";
  # Acknowledged writes to wait for before the power cut (which then comes
  # as soon as the store reports a finished checkpoint).
  ackedBeforeCut = "100";
in
pkgs.runCommand "peat-sidecar-vm-${name}"
{
  nativeBuildInputs = [
    pkgs.qemu_kvm
    pkgs.openssh
    pkgs.cdrkit
  ];
  requiredSystemFeatures = [ "kvm" ];
  meta.timeout = 1800;
}
  ''
    set -eu
    cat > ssh_config <<EOF
    Host vm
      HostName 127.0.0.1
      Port ${sshPort}
      User checker
      IdentityFile $PWD/id
      StrictHostKeyChecking no
      UserKnownHostsFile /dev/null
      ConnectTimeout 5
      LogLevel ERROR
    EOF
    guest() { ssh -F ssh_config vm "$@"; }
    to_guest() { scp -F ssh_config "$@"; }

    ssh-keygen -q -t ed25519 -N "" -f id
    printf 'instance-id: peat-check\nlocal-hostname: peat-check\n' > meta-data
    cat > user-data <<EOF
    #cloud-config
    users:
      - name: checker
        sudo: "ALL=(ALL) NOPASSWD:ALL"
        shell: /bin/sh
        ssh_authorized_keys:
          - $(cat id.pub)
    ssh_pwauth: false
    package_update: false
    package_upgrade: false
    EOF
    genisoimage -quiet -output seed.iso -volid cidata -joliet -rock user-data meta-data

    # A copy-on-write overlay: the pinned image in the store stays untouched.
    qemu-img create -q -f qcow2 -F qcow2 -b ${baseImage} disk.qcow2 10G
    # The power-cut check's data disk; writeback, so that what the guest
    # flushed survives qemu being killed, and only that.
    truncate -s 512M data.img

    start_vm() {
      qemu-system-x86_64 -machine accel=kvm -cpu host -m 2048 -smp 2 -nographic \
        -drive file=disk.qcow2,if=virtio \
        -drive file=seed.iso,if=virtio,media=cdrom,readonly=on \
        -drive file=data.img,if=none,id=data,format=raw,cache=writeback \
        -device virtio-blk-pci,drive=data,serial=peatdata \
        -netdev user,id=net0,hostfwd=tcp:127.0.0.1:${sshPort}-:22 \
        -device virtio-net-pci,netdev=net0 \
        -serial file:console.log -monitor none -display none &
      qemu_pid=$!
      echo "waiting for ${name} to accept ssh"
      for _ in $(seq 1 300); do
        if guest true 2>/dev/null; then break; fi
        if ! kill -0 $qemu_pid 2>/dev/null; then
          echo "qemu exited before the guest came up"; tail -n 80 console.log; exit 1
        fi
        sleep 2
      done
      guest true || { echo "no ssh after 600 s"; tail -n 80 console.log; exit 1; }
      guest sudo cloud-init status --wait > /dev/null || true
    }
    trap 'kill $qemu_pid 2>/dev/null || true' EXIT
    start_vm

    guest mkdir -p /tmp/peat-check/install /tmp/peat-check/upgrade
    to_guest ${guestCheck} vm:/tmp/peat-check/guest-check.sh
    to_guest ${packages.install}/* vm:/tmp/peat-check/install/
    to_guest ${packages.upgrade}/* vm:/tmp/peat-check/upgrade/

    install_pkg=$(cd ${packages.install} && ls)
    upgrade_pkg=$(cd ${packages.upgrade} && ls)
    echo "running guest-check.sh on ${name}"
    status=0
    # The interface `cargo xtask vm-test` uses: KIND FIRST-PACKAGE NEWER-PACKAGE.
    guest "cd /tmp/peat-check && sudo sh ./guest-check.sh ${image.family} \
      /tmp/peat-check/install/$install_pkg /tmp/peat-check/upgrade/$upgrade_pkg" || status=$?
    if [ "$status" -ne 0 ]; then
      guest sudo systemctl poweroff || true
      echo "guest-check.sh failed on ${name} (exit $status)"; exit "$status"
    fi

    # The power cut. /tmp does not survive a boot: the files go in after each.
    data_disk=/dev/disk/by-id/virtio-peatdata
    copy_power_cut() {
      guest mkdir -p /tmp/peat-power-cut
      to_guest ${powerCut} vm:/tmp/peat-power-cut/power-cut.sh
      to_guest ${binary} vm:/tmp/peat-power-cut/peat-sidecar
    }
    copy_power_cut
    echo "power-cut.sh write on ${name}"
    guest "sudo sh /tmp/peat-power-cut/power-cut.sh write $data_disk /tmp/peat-power-cut/peat-sidecar" \
      > power-cut-write.log 2>&1 &
    writer=$!
    for _ in $(seq 1 30000); do
      if [ "$(grep -c '^acked ' power-cut-write.log || true)" -ge ${ackedBeforeCut} ] \
        && grep '^checkpoint ' power-cut-write.log | tail -n 1 | grep -q '^checkpoint done'; then break; fi
      sleep 0.02
    done
    kill -KILL $qemu_pid
    wait $qemu_pid || true
    wait $writer || true
    grep '^acked ' power-cut-write.log > acked || true
    if [ "$(wc -l < acked)" -lt ${ackedBeforeCut} ] || ! grep '^checkpoint done' power-cut-write.log \
      || grep ' failed$' power-cut-write.log; then
      echo "power-cut.sh write did not get to the power cut on ${name}"; cat power-cut-write.log; exit 1
    fi
    echo "power cut after $(wc -l < acked) acknowledged writes; booting ${name} again"
    start_vm
    copy_power_cut
    to_guest acked vm:/tmp/peat-power-cut/acked
    status=0
    guest "sudo sh /tmp/peat-power-cut/power-cut.sh verify $data_disk /tmp/peat-power-cut/peat-sidecar \
      /tmp/peat-power-cut/acked" || status=$?
    guest sudo systemctl poweroff || true
    if [ "$status" -ne 0 ]; then
      echo "power-cut.sh failed on ${name} (exit $status)"; exit "$status"
    fi
    mkdir -p "$out"
    echo "${name}: guest-check.sh and power-cut.sh passed" > "$out/result"
  ''
