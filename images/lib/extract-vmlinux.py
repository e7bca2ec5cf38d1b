#!/usr/bin/env python3
"""Extracts the uncompressed kernel ELF (vmlinux) from a bzImage.

Like the kernel's scripts/extract-vmlinux: find the compressed payload by its
magic, decompress it, and keep it only if it is an ELF file. QEMU boots such
an ELF directly through its PVH entry point (the kernel has CONFIG_PVH=y), so
the guest skips decompressing itself, which under TCG takes seconds. Refuses
an ELF without the PVH note, since QEMU could not boot it.

usage: extract-vmlinux.py BZIMAGE OUT
"""
import gzip
import lzma
import struct
import sys

XEN_ELFNOTE_PHYS32_ENTRY = 18


def has_pvh_note(elf):
    # 64-bit little-endian ELF: walk the program headers for PT_NOTE segments.
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        ptype, _, off, _, _, filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if ptype != 4:  # PT_NOTE
            continue
        pos, end = off, off + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def try_decompress(data):
    for magic, fn in ((b"\xfd7zXZ\x00", lambda d: lzma.LZMADecompressor().decompress(d)),
                      (b"\x1f\x8b\x08", lambda d: gzip.GzipFile(fileobj=__import__("io").BytesIO(d)).read())):
        pos = data.find(magic)
        while pos >= 0:
            try:
                out = fn(data[pos:])
            except (lzma.LZMAError, OSError, EOFError):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            pos = data.find(magic, pos + 1)
    return None


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    data = open(argv[1], "rb").read()
    elf = try_decompress(data)
    if elf is None:
        sys.stderr.write("extract-vmlinux: no xz or gzip compressed ELF in %s\n" % argv[1])
        return 1
    if not has_pvh_note(elf):
        sys.stderr.write("extract-vmlinux: kernel has no PVH entry note (CONFIG_PVH)\n")
        return 1
    with open(argv[2], "wb") as f:
        f.write(elf)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
