#!/usr/bin/env python3
"""Writes a C file holding data/llm-catalogue.json as nb_llmcat_builtin (the
daemon's compiled-in catalogue). Usage: embed-catalogue.py IN OUT"""
import json
import sys

src, dst = sys.argv[1], sys.argv[2]
data = open(src, 'rb').read()
json.loads(data)  # a broken catalogue fails the build, not the daemon
rows = []
for i in range(0, len(data), 16):
    rows.append('    ' + ', '.join('0x%02x' % b for b in data[i:i + 16]) + ',')
with open(dst, 'w') as f:
    f.write('/* Generated from data/llm-catalogue.json by scripts/embed-catalogue.py. */\n')
    f.write('#include <stddef.h>\n\n#include "daemon/egress/llmcat.h"\n\n')
    f.write('const char nb_llmcat_builtin[] = {\n%s\n    0x00};\n' % '\n'.join(rows))
    f.write('const size_t nb_llmcat_builtin_len = %d;\n' % len(data))
