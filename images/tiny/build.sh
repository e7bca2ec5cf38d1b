#!/bin/bash
# Builds the nilbox "tiny" guest image from Debian packages, without root:
#   vmlinux          Debian's kernel (linux-image-amd64 -> linux-image-6.1.0-NN-amd64),
#                    fetched with `apt-get download` and unpacked with dpkg-deb, as
#                    the uncompressed ELF that QEMU boots through its PVH entry:
#                    under TCG decompressing the bzImage costs seconds
#   vmlinuz          the same kernel as shipped (bzImage), a fallback
#   initramfs.img    an uncompressed cpio (again: no decompression under TCG) with
#                    busybox-static, the needed kernel modules (modules.dep
#                    closure, depmod'ed so modprobe and request_module work),
#                    nft + e2fsprogs tools with their shared libraries,
#                    nilbox-agent, and the init scripts from rootfs/
#   disk.qcow2       an empty ext4 data disk; VMs get a qcow2 overlay on it
#   manifest.json    sha256 of every artifact and the recipe hash
# The build is skipped when the manifest's recipe hash matches (same scripts,
# same package versions, same agent binary); --force rebuilds anyway.
#
# usage: images/tiny/build.sh [--out DIR] [--agent PATH | --no-agent] [--cache DIR]
#                             [--kernel-deb FILE] [--compress gzip|zstd|none]
#                             [--disk-size SIZE] [--force]
set -euo pipefail
# The image's file modes must not depend on the caller's umask: nilboxd runs
# with 077, which made /bin and every binary 0700 (root only) in the guest.
umask 022

HERE=$(cd "$(dirname "$0")" && pwd)
IMAGES=$(dirname "$HERE")
# shellcheck source=../lib/common.sh
. "$IMAGES/lib/common.sh"

NILBOX_HOME=${NILBOX_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/nilbox}
OUT="$NILBOX_HOME/images/tiny"
CACHE=""
AGENT=""
NO_AGENT=0
KDEB=""
COMPRESS=none
DISK_SIZE=1G
FORCE=0

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --out) OUT=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --agent) AGENT=$2; shift 2 ;;
    --no-agent) NO_AGENT=1; shift ;;
    --kernel-deb) KDEB=$2; shift 2 ;;
    --compress) COMPRESS=$2; shift 2 ;;
    --disk-size) DISK_SIZE=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; nb_die "unknown option $1" ;;
    esac
done
case "$COMPRESS" in gzip | zstd | none) ;; *) nb_die "--compress must be gzip, zstd or none" ;; esac
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
CACHE=${CACHE:-$(dirname "$OUT")/.cache}
# One build per output folder at a time (a second one waits, then finds the
# image up to date).
exec 9>"$OUT/.lock"
flock 9

if [ -n "$AGENT" ]; then
    [ -f "$AGENT" ] || nb_die "agent binary $AGENT not found"
    file -b "$AGENT" | grep -q -e 'statically linked' -e 'static-pie linked' ||
        nb_die "$AGENT is not a statically linked binary (the guest has no host libraries)"
    AGENT_ID=$(nb_sha256 "$AGENT")
elif [ "$NO_AGENT" = 1 ]; then
    AGENT_ID=none
else
    nb_die "no guest agent given: pass --agent PATH (the static nilbox-agent from the build,
       e.g. build/src/agent/nilbox-agent), or --no-agent for a boot-test image without it"
fi

nb_need dpkg-deb depmod python3 busybox ldd file sha256sum mke2fs qemu-img
[ "$COMPRESS" = none ] || nb_need "$COMPRESS"
BUSYBOX=$(command -v busybox)
file -b "$(readlink -f "$BUSYBOX")" | grep -q 'statically linked' ||
    nb_die "$BUSYBOX is not static: install busybox-static"
NFT=$(command -v nft || true)
[ -n "$NFT" ] || NFT=/usr/sbin/nft
[ -x "$NFT" ] || nb_die "nft not found: install nftables"
# curl (Debian's, with its shared libraries) for agents and the egress tests.
CURL=$(command -v curl || true)
[ -n "$CURL" ] || nb_die "curl not found: install curl"
E2TOOLS="/sbin/mke2fs /sbin/resize2fs /sbin/e2fsck"
# rsync (Debian's, ~0.6 MiB + popt/acl/lz4/xxhash; the rest is curl's) so that
# `rsync -e ssh` through the SSH gateway works: rsync needs itself on both ends.
RSYNC=$(command -v rsync || true)
[ -n "$RSYNC" ] || nb_die "rsync not found: install rsync"

NB_STEPS=7
nb_step "resolving inputs"
nb_kernel_resolve "$KDEB"
# The recipe: everything that decides the bytes of the image.
RECIPE=$({
    echo "tiny-recipe-1 compress=$COMPRESS disk=$DISK_SIZE"
    echo "kernel $NB_KID"
    echo "busybox-static $(nb_pkg_version busybox-static) nftables $(nb_pkg_version nftables)"
    echo "e2fsprogs $(nb_pkg_version e2fsprogs) libc6 $(nb_pkg_version libc6)"
    echo "curl $(nb_pkg_version curl) libcurl4 $(nb_pkg_version libcurl4)"
    echo "rsync $(nb_pkg_version rsync)"
    echo "agent $AGENT_ID"
    (cd "$IMAGES" && nb_tree_hash lib tiny)
} | sha256sum | cut -d' ' -f1)

if [ "$FORCE" = 0 ] && [ -f "$OUT/manifest.json" ] &&
    python3 - "$OUT" "$RECIPE" <<'PY'; then
import hashlib, json, os, sys
out, recipe = sys.argv[1], sys.argv[2]
m = json.load(open(os.path.join(out, "manifest.json")))
if m.get("recipe") != recipe:
    sys.exit(1)
for name, a in m["artifacts"].items():
    p = os.path.join(out, name)
    if not os.path.isfile(p) or os.path.getsize(p) != a["size"]:
        sys.exit(1)
PY
    nb_say "tiny image is up to date in $OUT (recipe ${RECIPE:0:12})"
    exit 0
fi
nb_say "building tiny image in $OUT (recipe ${RECIPE:0:12}, kernel $NB_KPKG $NB_KDEB_VERSION)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nilbox-tiny.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/root"
KX="$WORK/kernel"

nb_step "fetching $NB_KPKG $NB_KDEB_VERSION"
DEB=$(nb_kernel_fetch "$CACHE" "$KDEB")

nb_step "unpacking the kernel package (no install)"
dpkg-deb -x "$DEB" "$KX"
KVER=$(ls "$KX/lib/modules" | head -1)
[ -n "$KVER" ] && [ -f "$KX/boot/vmlinuz-$KVER" ] || nb_die "no kernel in $DEB"
# The .deb ships no modules.dep (the package's postinst makes it).
depmod -b "$KX" "$KVER"

nb_step "staging the root file system"
mkdir -p "$ROOT"
cp -a "$HERE/rootfs/." "$ROOT/"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,data,mnt,var/log}
ln -s ../run "$ROOT/var/run"
cp "$(readlink -f "$BUSYBOX")" "$ROOT/bin/busybox"

# Kernel modules: the listed ones plus their modules.dep closure.
MODS=$(grep -v -e '^#' -e '^$' "$HERE/modules.list" | tr '-' '_')
python3 - "$KX/lib/modules/$KVER" $MODS >"$WORK/modfiles" <<'PY'
import os, sys
base, want = sys.argv[1], sys.argv[2:]
dep = {}
for line in open(os.path.join(base, "modules.dep")):
    mod, _, deps = line.partition(":")
    dep[mod] = deps.split()
byname = {os.path.basename(m)[:-3].replace("-", "_"): m for m in dep}
need, todo = set(), []
for w in want:
    if w not in byname:
        sys.exit("module %s is not in this kernel" % w)
    todo.append(byname[w])
while todo:
    m = todo.pop()
    if m not in need:
        need.add(m)
        todo.extend(dep[m])
print("\n".join(sorted(need)))
PY
KM="$ROOT/lib/modules/$KVER"
while read -r m; do
    mkdir -p "$KM/$(dirname "$m")"
    cp "$KX/lib/modules/$KVER/$m" "$KM/$m"
done <"$WORK/modfiles"
cp "$KX/lib/modules/$KVER"/modules.{builtin,builtin.modinfo,order} "$KM/"
depmod -b "$ROOT" "$KVER"
# busybox modprobe reads only the text files.
rm -f "$KM"/*.bin

# Dynamically linked tools with their libraries (same paths as on Debian).
# --remove-destination: never write through a symlink in the staging tree.
copy_bin() {
    local b=$1 dst=$2 l
    cp --remove-destination "$(readlink -f "$b")" "$ROOT/$dst"
    for l in $(ldd "$b" | awk '/=> \//{ print $3 } /^\t\/lib/{ print $1 }'); do
        mkdir -p "$ROOT/$(dirname "$l")"
        [ -e "$ROOT/$l" ] || cp -L --remove-destination "$l" "$ROOT/$l"
    done
}
copy_bin "$NFT" usr/sbin/nft
copy_bin "$CURL" usr/bin/curl
copy_bin "$RSYNC" usr/bin/rsync
# The system CA bundle is the interception CA the host provisions (every
# TLS connection on 443 is intercepted; there is no other way out).
install -d -m 0755 "$ROOT/etc/ssl" "$ROOT/etc/ssl/certs"
ln -sf /etc/nilbox/ca.pem "$ROOT/etc/ssl/certs/ca-certificates.crt"
for b in $E2TOOLS; do copy_bin "$b" "sbin/$(basename "$b")"; done
# The loader path baked into the binaries is /lib64/ld-linux-x86-64.so.2.
mkdir -p "$ROOT/lib64"
[ -e "$ROOT/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$ROOT/lib64/"

if [ "$AGENT_ID" != none ]; then
    install -m 0755 "$AGENT" "$ROOT/sbin/nilbox-agent"
fi

# One relative symlink per busybox applet, last, so that real tools (mke2fs
# from e2fsprogs) and our own scripts win. Relative, so that nothing that
# writes into the staging tree can ever reach the host's /bin/busybox.
"$ROOT/bin/busybox" --list-full | while read -r a; do
    [ "$a" = linuxrc ] && continue
    [ -e "$ROOT/$a" ] || [ -L "$ROOT/$a" ] && continue
    up=$(dirname "$a" | sed 's|[^/][^/]*|..|g')
    mkdir -p "$ROOT/$(dirname "$a")"
    ln -s "$up/bin/busybox" "$ROOT/$a"
done

nb_step "writing the initramfs ($COMPRESS)"
# /dev/console must exist before devtmpfs is mounted; mkcpio adds the node.
SOURCE_DATE_EPOCH=0 python3 "$IMAGES/lib/mkcpio.py" "$ROOT" "$WORK/initramfs.cpio" \
    --dev /dev/console:c:5:1:0600 --dev /dev/null:c:1:3:0666
case "$COMPRESS" in
gzip) gzip -n -9 -c "$WORK/initramfs.cpio" >"$WORK/initramfs.img" ;;
zstd) zstd -q -19 -c "$WORK/initramfs.cpio" >"$WORK/initramfs.img" ;;
none) mv "$WORK/initramfs.cpio" "$WORK/initramfs.img" ;;
esac
cp "$KX/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
python3 "$IMAGES/lib/extract-vmlinux.py" "$WORK/vmlinuz" "$WORK/vmlinux"

nb_step "creating the empty data disk ($DISK_SIZE, ext4 in qcow2)"
# Fixed UUID and hash seed so that the same recipe gives the same disk.
truncate -s "$DISK_SIZE" "$WORK/disk.raw"
E2FSPROGS_FAKE_TIME=1 mke2fs -q -F -t ext4 -L nilbox-data -U 6e696c62-6f78-4000-8000-000000000001 \
    -E root_owner=0:0,hash_seed=6e696c62-6f78-4000-8000-000000000002 \
    "$WORK/disk.raw"
qemu-img convert -q -f raw -O qcow2 "$WORK/disk.raw" "$WORK/disk.qcow2"

nb_step "writing the manifest"
python3 - "$WORK" "$RECIPE" "$KVER" "$NB_KPKG" "$NB_KDEB_VERSION" "$COMPRESS" "$AGENT_ID" \
    >"$WORK/manifest.json" <<'PY'
import hashlib, json, os, sys
work, recipe, kver, kpkg, kdebv, comp, agent = sys.argv[1:8]
arts = {}
for name in ("vmlinux", "vmlinuz", "initramfs.img", "disk.qcow2"):
    h = hashlib.sha256()
    with open(os.path.join(work, name), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    arts[name] = {"sha256": h.hexdigest(), "size": os.path.getsize(os.path.join(work, name))}
m = {
    "name": "tiny",
    "format": 1,
    "recipe": recipe,
    "kernel": {"release": kver, "package": kpkg, "version": kdebv},
    "initramfs_compression": comp,
    "agent": None if agent == "none" else {"sha256": agent},
    "kernel_image": "vmlinux",
    "cmdline": "console=ttyS0",
    "root": "initramfs",
    "artifacts": arts,
}
print(json.dumps(m, indent=2, sort_keys=True))
PY
# Publish: artifacts first, the manifest last (its presence means complete).
rm -f "$OUT/manifest.json"
for a in vmlinux vmlinuz initramfs.img disk.qcow2; do
    chmod 0644 "$WORK/$a"
    mv -f "$WORK/$a" "$OUT/$a"
done
mv -f "$WORK/manifest.json" "$OUT/manifest.json"

nb_say "tiny image ready in $OUT:"
for a in vmlinux vmlinuz initramfs.img disk.qcow2; do
    nb_say "  $(printf '%-14s %8s KiB' "$a" $(($(stat -c %s "$OUT/$a") / 1024)))"
done
