#!/usr/bin/env python3
"""Writes a cpio "newc" archive of a staging folder, reproducibly and without root.

Why not `find | cpio -o`: as a normal user we cannot create device nodes in the
staging folder (the kernel needs /dev/console before devtmpfs is mounted), cpio
stores the builder's uid/gid and mtimes, and its entry order follows the file
system. Here every entry is owned by root, carries one fixed mtime
(SOURCE_DATE_EPOCH, default 0), entries are sorted, and extra device nodes are
given on the command line. The same staging folder always gives the same bytes.

usage: mkcpio.py STAGING_DIR OUT [--dev PATH:c|b:MAJOR:MINOR:MODE]...
"""
import os
import stat
import sys

TRAILER = "TRAILER!!!"


def header(name, ino, mode, nlink, mtime, size, rmajor=0, rminor=0):
    namez = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, mtime, size, 0, 0, rmajor, rminor, len(namez), 0]
    h = b"070701" + b"".join(b"%08X" % f for f in fields) + namez
    return h + b"\0" * ((4 - len(h) % 4) % 4)


def pad(data):
    return data + b"\0" * ((4 - len(data) % 4) % 4)


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    root, out = argv[1], argv[2]
    devs = {}
    rest = argv[3:]
    while rest:
        if rest[0] != "--dev" or len(rest) < 2:
            sys.stderr.write("mkcpio: bad argument %r\n" % rest[0])
            return 2
        path, kind, major, minor, mode = rest[1].split(":")
        kbit = stat.S_IFCHR if kind == "c" else stat.S_IFBLK
        devs[path.lstrip("/")] = (kbit | int(mode, 8), int(major), int(minor))
        rest = rest[2:]
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            entries.append(rel)
        for f in filenames:
            entries.append(os.path.normpath(os.path.join(rel, f)))
        # os.walk does not descend into symlinked dirs: list them as entries.
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                entries.append(os.path.normpath(os.path.join(rel, d)))
                dirnames.remove(d)
    entries = sorted(set(entries) | set(devs))

    ino = 1
    with open(out + ".tmp", "wb") as o:
        for name in entries:
            ino += 1
            if name in devs and not os.path.lexists(os.path.join(root, name)):
                mode, ma, mi = devs[name]
                o.write(header(name, ino, mode, 1, mtime, 0, ma, mi))
                continue
            p = os.path.join(root, name)
            st = os.lstat(p)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(p).encode()
                o.write(header(name, ino, stat.S_IFLNK | 0o777, 1, mtime, len(data)))
                o.write(pad(data))
            elif stat.S_ISDIR(st.st_mode):
                o.write(header(name, ino, stat.S_IFDIR | perm, 2, mtime, 0))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    data = f.read()
                o.write(header(name, ino, stat.S_IFREG | perm, 1, mtime, len(data)))
                o.write(pad(data))
            else:
                sys.stderr.write("mkcpio: skipping special file %s\n" % name)
        o.write(header(TRAILER, 0, 0, 1, 0, 0))
    os.replace(out + ".tmp", out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
