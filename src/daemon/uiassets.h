/* The web UI's files, embedded at build time (scripts/ui-embed.py builds
 * ui/ with esbuild and writes the table). Served by api_ui.c. */
#ifndef NB_DAEMON_UIASSETS_H
#define NB_DAEMON_UIASSETS_H

#include <stddef.h>

typedef struct {
    const char *name;  /* "index.html", "app.js", "app.css"; NULL ends the table */
    const char *ctype; /* Content-Type */
    const unsigned char *data;
    size_t len;
    const unsigned char *gz; /* the same bytes, gzip-compressed */
    size_t gz_len;
} nb_uiasset_t;

extern const nb_uiasset_t nb_uiassets[];
/* 0 when the npm packages were missing and the table is a placeholder page. */
extern const int nb_uiassets_built;

#endif
