#!/bin/sh
# Turns a fresh debootstrap tree into the test guest. Runs inside the
# chroot (with /proc mounted and the package cache bind-mounted by the
# host) from the directory holding this file and its sibling files.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

echo peat-vm > /etc/hostname
# A fixed machine id: no first-boot preset run, same guest every time.
echo 5e1f0c0ffee0a11ce5eed5a1dec0de00 > /etc/machine-id
# No fsck pass: every boot starts from the freshly made file system.
cat > /etc/fstab <<'FSTAB'
/dev/vda / ext4 rw,errors=remount-ro 0 0
FSTAB
printf '%s\n' 9p 9pnet_virtio > /etc/modules-load.d/peat-vm.conf

# A small initrd: only what is needed to find an ext4 root on virtio-blk.
mkdir -p /etc/initramfs-tools/conf.d
printf '%s\n' MODULES=list > /etc/initramfs-tools/conf.d/peat-vm.conf
printf '%s\n' virtio_pci virtio_blk ext4 > /etc/initramfs-tools/modules
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends linux-image-amd64

install -D -m 0755 "$here/peat-vm-run" /usr/local/libexec/peat-vm-run
install -m 0644 "$here/peat-vm-check.service" /etc/systemd/system/peat-vm-check.service
systemctl enable peat-vm-check.service

# Nothing the checks need, all of it boot time under emulation.
systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer getty.target \
    systemd-pstore.service

# Drop driver families a virtio-only guest never loads: a smaller image is
# faster to build, to cache and to copy.
for kernel in /usr/lib/modules/*; do
    (
        cd "$kernel/kernel"
        rm -rf sound drivers/gpu drivers/media drivers/infiniband drivers/iio \
            drivers/staging drivers/usb drivers/scsi drivers/net/wireless \
            drivers/net/ethernet drivers/comedi drivers/mtd drivers/target \
            drivers/isdn drivers/bluetooth drivers/hwmon drivers/video \
            net/wireless net/mac80211 net/bluetooth
    )
    depmod "$(basename "$kernel")"
done

# The package cache is the host's (bind-mounted); only the indexes go.
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
