/* llhttp's generated C (Debian node-llhttp), compiled into the fuzz targets
 * so that libFuzzer sees its coverage too; one wrapper per upstream file
 * because they disagree on prototypes when merged. Same strict mode as the
 * real build (src/lib/meson.build); upstream warnings are not ours to fix. */
#pragma clang diagnostic ignored "-Weverything"
#define LLHTTP_STRICT_MODE 1
#include "/usr/share/llhttp/llhttp.c"
