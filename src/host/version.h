/* The nilbox version shared by nilboxd and nilbox. Must equal the
 * project version in meson.build (src/daemon/meson.build asserts it). */
#ifndef NB_VERSION_H
#define NB_VERSION_H

#define NB_VERSION "0.1.0"

#endif
