#!/bin/sh
# mmdebstrap customize hook for the nilbox "debian" image.
# usage: customize.sh ROOTFS AGENT|none TINY_INITRAMFS OUT_RAW SIZE
# Runs as (namespaced) root with the finished bookworm tree in ROOTFS, and
# writes the ext4 file system image OUT_RAW from it (mke2fs -d), so that file
# ownership is right even when mmdebstrap runs unprivileged (unshare mode).
set -eu
R=${1%/} AGENT=$2 TINYRD=$3 OUT=$4 SIZE=$5
HERE=$(dirname "$0")
# Everything below writes under $R: make sure it is mmdebstrap's tree.
case "$R" in /*/*) ;; *) echo "customize.sh: refusing root '$R'" >&2; exit 1 ;; esac
[ -d "$R/etc/apt" ] && [ -x "$R/usr/bin/dpkg" ] || { echo "customize.sh: $R is not a chroot" >&2; exit 1; }

echo nilbox >"$R/etc/hostname"
printf '127.0.0.1 localhost nilbox\n::1 localhost\n' >"$R/etc/hosts"
# No passwords: root is locked; there is no sshd. Access is the agent only.
sed -i 's|^root:[^:]*:|root:*:|' "$R/etc/shadow"
# The unprivileged account that `nilbox exec` and `shell` use by default
# (uid 1000, as in the tiny image): many agents refuse to run as root. No
# password (locked, and there is no sshd); passwordless sudo for what needs
# root (apt, services).
chroot "$R" useradd --create-home --uid 1000 --user-group --shell /bin/bash \
    --comment "nilbox agent" agent
printf 'agent ALL=(ALL:ALL) NOPASSWD: ALL\n' >"$R/etc/sudoers.d/nilbox-agent"
chmod 0440 "$R/etc/sudoers.d/nilbox-agent"
# Root on the whole virtio disk, grown online to the disk size at each boot
# (after `nilbox vm resize`).
printf '/dev/vda / ext4 defaults,noatime,x-systemd.growfs 0 1\n' >"$R/etc/fstab"

# Kernel modules for the nilbox kernel: the same set as the tiny image (the
# initramfs that boots this disk is the tiny one), copied out of it.
(cd "$R" && cpio -i -d --quiet 'lib/modules/*' <"$TINYRD")
KVER=$(ls "$R/lib/modules" | head -1)
chroot "$R" depmod "$KVER"
printf 'qemu_fw_cfg\nvirtio_console\n' >"$R/etc/modules-load.d/nilbox.conf"

# Egress capture, as in the tiny image (its scripts, taken from the same
# initramfs): dummy0 default route + nftables redirect to the agent, whose
# fake-IP resolver on 127.0.0.53 is the only name server. The host writes
# the interception CA under /usr/local/share/ca-certificates/nilbox/ and
# runs update-ca-certificates, and the placeholders into /etc/environment
# and /etc/profile.d/nilbox-env.sh.
(cd "$R" && cpio -i -d --quiet 'usr/lib/nilbox/*' 'usr/share/nilbox/*' <"$TINYRD")
install -m 0644 "$HERE/nilbox-net.service" "$R/etc/systemd/system/nilbox-net.service"
chroot "$R" systemctl enable nilbox-net.service >/dev/null 2>&1
rm -f "$R/etc/resolv.conf"
printf 'nameserver 127.0.0.53\noptions edns0 trust-ad\n' >"$R/etc/resolv.conf"
mkdir -p "$R/usr/local/share/ca-certificates/nilbox" "$R/etc/nilbox"

install -m 0644 "$HERE/nilbox-agent.service" "$R/etc/systemd/system/nilbox-agent.service"
if [ "$AGENT" != none ]; then
    install -m 0755 "$AGENT" "$R/usr/sbin/nilbox-agent"
    chroot "$R" systemctl enable nilbox-agent.service
else
    # Boot-test image: announce readiness on the channel port like the tiny
    # image's init does without an agent.
    install -m 0644 "$HERE/nilbox-ready.service" "$R/etc/systemd/system/nilbox-ready.service"
    chroot "$R" systemctl enable nilbox-ready.service
fi
# Nothing periodic or network-bound in a sandbox VM without a NIC.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer man-db.timer dpkg-db-backup.timer systemd-timesyncd.service; do
    chroot "$R" systemctl mask "$u" >/dev/null 2>&1 || true
done
chroot "$R" systemctl set-default multi-user.target >/dev/null

rm -f "$R/etc/machine-id"
: >"$R/etc/machine-id"

truncate -s "$SIZE" "$OUT"
# mmdebstrap has /proc, /sys, /dev... mounted inside the tree while hooks
# run, and keeps its own apt configuration and lists in it (which its
# cleanup step after the hooks still needs: never delete them here). In a
# private mount namespace, unmount the former and hide the latter (apt
# lists and cache, /tmp) under empty tmpfs mounts, then write the
# file system from that view; mmdebstrap's own view stays as it is.
export R OUT
unshare -m --propagation private sh -c '
    awk -v r="$R/" "index(\$2, r) == 1 { print \$2 }" /proc/mounts | sort -r |
        while read -r m; do umount -l "$m"; done
    for d in tmp var/tmp var/lib/apt/lists var/cache/apt; do
        mount -t tmpfs -o mode=0755 tmpfs "$R/$d"
    done
    chmod 1777 "$R/tmp" "$R/var/tmp"
    mkdir -p "$R/var/lib/apt/lists/partial" "$R/var/cache/apt/archives/partial"
    E2FSPROGS_FAKE_TIME=1 mke2fs -q -F -t ext4 -L nilbox-root \
        -U 6e696c62-6f78-4000-8000-000000000003 \
        -E root_owner=0:0,hash_seed=6e696c62-6f78-4000-8000-000000000004 -d "$R" "$OUT"
'
# mmdebstrap's own apt settings, removed from the tree only after the hooks.
debugfs -w -R "rm /etc/apt/apt.conf.d/00mmdebstrap" "$OUT" >/dev/null 2>&1 || true
