/* Random numbers that reproduce torch's CPU generator bit for bit:
 * torch.Generator("cpu").manual_seed(s) followed by torch.randn(shape,
 * generator=g), including the way successive draws continue one stream. */
#ifndef SDW_RNG_H
#define SDW_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct sdw_rng {
    uint32_t mt[624];
    int idx;
    int has_next_normal;  /* torch caches the second value of a scalar Box-Muller pair */
    double next_normal;
} sdw_rng;

void sdw_rng_seed(sdw_rng *r, uint64_t seed);
uint32_t sdw_rng_u32(sdw_rng *r);
/* out[n] = torch.randn(n, dtype=float32, generator=g) */
void sdw_rng_randn(sdw_rng *r, float *out, size_t n);

#endif
