#!/bin/bash
# Builds the nilbox "debian" guest image: Debian bookworm made by mmdebstrap
# (nodejs, python3, git, curl, ca-certificates, systemd, udev; no sshd, no
# passwords), the agent as a systemd service, as an ext4 file system in a
# qcow2 base image. It boots with the tiny image's kernel and initramfs
# (kernel argument nilbox.root=/dev/vda), which are copied next to it:
#   vmlinux, initramfs.img   from the tiny image (built first if needed)
#   disk.qcow2               the root file system; VMs get an overlay on it
#   manifest.json            sha256 of every artifact and the recipe hash
# Needs only the Debian archive. Without root, mmdebstrap uses user
# namespaces (unshare mode). Slow (minutes): opt-in.
#
# usage: images/debian/build.sh [--out DIR] [--agent PATH | --no-agent] [--tiny DIR]
#                               [--cache DIR] [--size SIZE] [--force]
set -euo pipefail
# The image's file modes must not depend on the caller's umask: nilboxd runs
# with 077, which made /bin and every binary 0700 (root only) in the guest.
umask 022

HERE=$(cd "$(dirname "$0")" && pwd)
IMAGES=$(dirname "$HERE")
# shellcheck source=../lib/common.sh
. "$IMAGES/lib/common.sh"

NILBOX_HOME=${NILBOX_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/nilbox}
OUT="$NILBOX_HOME/images/debian"
TINY=""
CACHE=""
AGENT=""
NO_AGENT=0
SIZE=4G
FORCE=0
SUITE=bookworm
PACKAGES="systemd-sysv,udev,dbus,kmod,iproute2,nftables,e2fsprogs,procps,less,ca-certificates,curl,git,python3,nodejs,npm,sudo"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --out) OUT=$2; shift 2 ;;
    --tiny) TINY=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --agent) AGENT=$2; shift 2 ;;
    --no-agent) NO_AGENT=1; shift ;;
    --size) SIZE=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; nb_die "unknown option $1" ;;
    esac
done
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
TINY=${TINY:-$(dirname "$OUT")/tiny}
CACHE=${CACHE:-$(dirname "$OUT")/.cache}
# One build per output folder at a time (a second one waits, then finds the
# image up to date).
exec 9>"$OUT/.lock"
flock 9
case "$OUT$TINY$HERE" in *[[:space:]\'\"]*) nb_die "paths with spaces or quotes are not supported" ;; esac

if [ -n "$AGENT" ]; then
    AGENT=$(cd "$(dirname "$AGENT")" && pwd)/$(basename "$AGENT")
    AGENT_ARGS=(--agent "$AGENT")
    AGENT_ID=$(nb_sha256 "$AGENT")
elif [ "$NO_AGENT" = 1 ]; then
    AGENT=none
    AGENT_ARGS=(--no-agent)
    AGENT_ID=none
else
    nb_die "no guest agent given: pass --agent PATH (the static nilbox-agent), or --no-agent"
fi
nb_need mmdebstrap mke2fs qemu-img python3 cpio

NB_STEPS=4
nb_step "tiny image (kernel + initramfs) in $TINY"
bash "$IMAGES/tiny/build.sh" --out "$TINY" --cache "$CACHE" "${AGENT_ARGS[@]}"
TINY_RECIPE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["recipe"])' \
    "$TINY/manifest.json")
RECIPE=$({
    echo "debian-recipe-1 suite=$SUITE size=$SIZE packages=$PACKAGES"
    echo "tiny $TINY_RECIPE agent $AGENT_ID mmdebstrap $(nb_pkg_version mmdebstrap)"
    (cd "$IMAGES" && nb_tree_hash lib debian)
} | sha256sum | cut -d' ' -f1)
if [ "$FORCE" = 0 ] && [ -f "$OUT/manifest.json" ] &&
    [ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("recipe"))' \
        "$OUT/manifest.json")" = "$RECIPE" ]; then
    nb_say "debian image is up to date in $OUT (recipe ${RECIPE:0:12})"
    exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nilbox-debian.XXXXXX")
chmod 0755 "$WORK"
trap 'rm -rf "$WORK"' EXIT

nb_step "mmdebstrap $SUITE ($PACKAGES) -> ext4 ($SIZE)"
T0=$(date +%s)
# The file system image is written by the customize hook, inside
# mmdebstrap's (possibly unprivileged) namespace; the tree itself is
# discarded (/dev/null target).
mmdebstrap --variant=apt --include="$PACKAGES" \
    --customize-hook="sh $HERE/customize.sh \"\$1\" $AGENT $TINY/initramfs.img $WORK/disk.raw $SIZE" \
    "$SUITE" /dev/null \
    "deb http://deb.debian.org/debian $SUITE main" \
    "deb http://deb.debian.org/debian $SUITE-updates main" \
    "deb http://deb.debian.org/debian-security $SUITE-security main"
nb_say "  mmdebstrap + mke2fs took $(($(date +%s) - T0)) s"

nb_step "converting to qcow2"
qemu-img convert -q -f raw -O qcow2 "$WORK/disk.raw" "$WORK/disk.qcow2"
rm -f "$WORK/disk.raw"
cp "$TINY/vmlinux" "$TINY/initramfs.img" "$WORK/"

nb_step "writing the manifest"
python3 - "$WORK" "$RECIPE" "$TINY/manifest.json" "$AGENT_ID" >"$WORK/manifest.json" <<'PY'
import hashlib, json, os, sys
work, recipe, tinym, agent = sys.argv[1:5]
t = json.load(open(tinym))
arts = {}
for name in ("vmlinux", "initramfs.img", "disk.qcow2"):
    h = hashlib.sha256()
    with open(os.path.join(work, name), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    arts[name] = {"sha256": h.hexdigest(), "size": os.path.getsize(os.path.join(work, name))}
m = {
    "name": "debian",
    "format": 1,
    "recipe": recipe,
    "kernel": t["kernel"],
    "agent": None if agent == "none" else {"sha256": agent},
    "kernel_image": "vmlinux",
    "cmdline": "console=ttyS0 nilbox.root=/dev/vda",
    "root": "disk",
    "artifacts": arts,
}
print(json.dumps(m, indent=2, sort_keys=True))
PY
rm -f "$OUT/manifest.json"
for a in vmlinux initramfs.img disk.qcow2; do
    chmod 0644 "$WORK/$a"
    mv -f "$WORK/$a" "$OUT/$a"
done
mv -f "$WORK/manifest.json" "$OUT/manifest.json"
nb_say "debian image ready in $OUT:"
for a in vmlinux initramfs.img disk.qcow2; do
    nb_say "  $(printf '%-14s %8s KiB' "$a" $(($(stat -c %s "$OUT/$a") / 1024)))"
done
