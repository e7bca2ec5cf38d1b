/* The one origin nilbox-desktop's web view may show: the daemon's UI
 * listener (http://127.0.0.1:PORT). Pure, unit-tested (test_desktop_origin). */
#ifndef NB_DESKTOP_ORIGIN_H
#define NB_DESKTOP_ORIGIN_H

/* 1 when `uri` has the scheme, host and port of `base` (the daemon's URL
 * from api.json), compared after parsing (GUri), so userinfo, a longer
 * host or another port never pass. 0 for anything else, unparsable too. */
int nb_desk_same_origin(const char *base, const char *uri);

/* 1 when `uri` is an http or https URL that may go to the system browser
 * (never file:, data:, javascript: or a custom scheme). */
int nb_desk_external_ok(const char *uri);

#endif
