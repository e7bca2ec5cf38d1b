/* decode.c with brotli, for fuzz_reflect: the fuzz targets share one set
 * of compiler flags, so the switch is set here. */
#define NB_HAVE_BROTLI 1
#include "../src/daemon/egress/decode.c"
