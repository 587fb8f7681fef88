/* libFuzzer target for the contract's base64 decoder: any bytes either fail
 * to decode or decode to at most 3/4 of their length, and what they decode
 * to encodes and decodes back to itself. */
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "contract/contract.h"
#include "fuzz.h"

/* Small enough that the limit is reached by inputs libFuzzer makes. */
#define MAX_OUT 4096

int fuzz_base64_one(const uint8_t *data, size_t size)
{
    unsigned char *out;
    size_t n;
    int rc = sdw_base64_decode((const char *)data, size, MAX_OUT, &out, &n);
    if (rc < 0) {
        if (out || (rc != SDW_EFORMAT && rc != SDW_EINVAL && rc != SDW_ENOMEM))
            abort();
        return rc;
    }
    if (n > MAX_OUT || n > size / 4 * 3 + 2)
        abort();
    char *text = sdw_base64_encode(out, n);
    unsigned char *back;
    size_t m;
    if (!text || sdw_base64_decode(text, strlen(text), MAX_OUT, &back, &m) < 0 || m != n ||
        (n && memcmp(back, out, n)))
        abort();
    free(back);
    free(text);
    free(out);
    return 0;
}

SDW_FUZZ_ENTRY(fuzz_base64_one)
