/* libFuzzer target for nb_qemu_error_line (src/host/accel.c), which
 * picks the line to quote from QEMU's stderr (qemu.log, the KVM probe).
 *
 * Byte 0 picks the output size (0..255). The answer must be a terminated
 * string that fits, without control characters, and found ("1") exactly
 * when the input has a line with something other than blanks. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "host/accel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char out[256];
    if (size < 1)
        return 0;
    size_t outsz = data[0];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    memset(out, 'X', sizeof out);
    int r = nb_qemu_error_line(text, len, out, outsz);
    int content = 0;
    for (size_t i = 0; i < len; i++)
        if (text[i] != '\n' && text[i] != '\r' && text[i] != ' ' && text[i] != '\t')
            content = 1;
    if (r != 0 && r != 1)
        abort();
    if (outsz == 0) {
        if (r != 0 || out[0] != 'X')
            abort();
        return 0;
    }
    /* A line of blanks, or only a time stamp, counts as empty; any found
     * line had content. */
    if (r == 1 && !content)
        abort();
    size_t n = strnlen(out, outsz);
    if (n >= outsz)
        abort();
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
            abort();
    if (r == 0 && n != 0)
        abort();
    return 0;
}
