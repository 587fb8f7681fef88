/* Plain loops on purpose: these are references, not the CPU backend's fast
 * paths (see twins.h). */
#include "cpu/twins.h"

#include <math.h>
#include <string.h>

void sdw_cpu_fill_rows(const float *v, float *y, int64_t rows, int64_t n)
{
    for (int64_t r = 0; r < rows; r++)
        memcpy(y + r * n, v, (size_t)n * sizeof *y);
}

void sdw_cpu_pad(const float *x, float *y, int64_t bc, int64_t h, int64_t w, int64_t hp, int64_t wp, int pad_t,
                 int pad_l)
{
    for (int64_t p = 0; p < bc; p++)
        for (int64_t r = 0; r < hp; r++)
            for (int64_t c = 0; c < wp; c++) {
                int64_t sr = r - pad_t, sc = c - pad_l;
                y[(p * hp + r) * wp + c] = sr >= 0 && sr < h && sc >= 0 && sc < w ? x[(p * h + sr) * w + sc] : 0.0f;
            }
}

void sdw_cpu_softmax_rows(const float *s, float *p, int64_t rows, int64_t n, int64_t rpb, int64_t r0, int causal)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *x = s + r * n;
        float *y = p + r * n;
        int64_t valid = causal ? r0 + r % rpb + 1 : n;
        valid = valid < n ? valid : n;
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < valid; j++)
            mx = x[j] > mx ? x[j] : mx;
        for (int64_t j = 0; j < valid; j++)
            sum += exp(x[j] - mx);
        /* In place, y[j] overwrites x[j] only after its last read. */
        for (int64_t j = 0; j < n; j++)
            y[j] = j < valid ? (float)(exp(x[j] - mx) / sum) : 0.0f;
    }
}
