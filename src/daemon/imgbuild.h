/* Guest image builds: the recipe images/<name>/build.sh runs as a child of
 * the daemon; every line it prints becomes a `progress` event, the start
 * an `image.build_started` event and the end `image.built` or
 * `image.build_failed`. At most NB_IMGBUILD_MAX run at once. A build does
 * not keep a stopping daemon's loop alive. Loop thread. */
#ifndef NB_IMGBUILD_H
#define NB_IMGBUILD_H

#include <stddef.h>
#include <uv.h>

#include "daemon/base/events.h"

#define NB_IMGBUILD_MAX 4

typedef struct nb_imgbuild nb_imgbuild_t;

/* `home` is copied; `ev` is borrowed and may be NULL. 0 or -ENOMEM. */
int nb_imgbuild_new(uv_loop_t *loop, const char *home, nb_events_t *ev, nb_imgbuild_t **out);

/* Frees the builder; running builds go on detached (no more events) and
 * free themselves. NULL is a no-op. */
void nb_imgbuild_free(nb_imgbuild_t *ib);

/* 1 when image `name` is being built. */
int nb_imgbuild_running(const nb_imgbuild_t *ib, const char *name);

/* Builds image `name` into $NILBOX_HOME/images/<name> with recipe `script`
 * and guest agent `agent` (`force`: rebuild even when up to date). 0,
 * NB_EEXIST (already building), NB_ESTATE (NB_IMGBUILD_MAX running), or
 * another negative code with a sentence in `err`. */
int nb_imgbuild_start(nb_imgbuild_t *ib, const char *name, const char *script, const char *agent,
                      int force, char *err, size_t errsz);

#endif
