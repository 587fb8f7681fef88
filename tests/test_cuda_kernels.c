/* Each CUDA kernel against its CPU twin on fresh random inputs, with the
 * output poisoned (NaN) before every launch so that a kernel that skips
 * elements cannot pass. Skips when the machine has no CUDA device. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "tap.h"
#include "tensor.h"

static uint64_t lcg = 0x9e3779b97f4a7c15ull;

static float *rand_buf(size_t n, float scale, float offset)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) {
        lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)((double)(lcg >> 11) / 9007199254740992.0 * 2.0 - 1.0) * scale + offset;
    }
    return p;
}

static float *to_dev(const float *h, size_t n)
{
    float *d = NULL;
    if (cudaMalloc((void **)&d, n * sizeof *d) != cudaSuccess || cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice) != cudaSuccess)
        return NULL;
    return d;
}

static float *poisoned(size_t n)
{
    float *d = NULL;
    if (cudaMalloc((void **)&d, n * sizeof *d) != cudaSuccess || cudaMemset(d, 0xff, n * sizeof *d) != cudaSuccess)
        return NULL;
    return d;
}

/* max |got - want| / max |want|; NaN anywhere counts as failure. */
static double rel_err(const float *got, const float *want, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]))
            return INFINITY;
        double d = fabs((double)got[i] - want[i]);
        num = d > num ? d : num;
        den = fabs(want[i]) > den ? fabs(want[i]) : den;
    }
    return num / (den > 0 ? den : 1);
}

static void check_layer_norm(sdw_backend *cpu, int64_t rows, int64_t n)
{
    size_t total = (size_t)(rows * n);
    float *x = rand_buf(total, 3, 4), *g = rand_buf((size_t)n, 1, 1), *b = rand_buf((size_t)n, 1, 0);
    float *want = malloc(total * sizeof *want), *got = malloc(total * sizeof *got);
    sdw_error e;
    sdw_tensor tx, tg, tb, ty;
    int64_t s[2] = {rows, n};
    sdw_tensor_from_host(&tx, cpu, 2, s, x, &e);
    sdw_tensor_from_host(&tg, cpu, 1, &n, g, &e);
    sdw_tensor_from_host(&tb, cpu, 1, &n, b, &e);
    sdw_tensor_new(&ty, cpu, 2, s, &e);
    sdw_op_layer_norm(&tx, &tg, &tb, 1e-5f, &ty, &e);
    sdw_tensor_to_host(&ty, want, &e);

    float *dx = to_dev(x, total), *dg = to_dev(g, (size_t)n), *db = to_dev(b, (size_t)n), *dy = poisoned(total);
    cudaError_t rc = sdw_k_layer_norm(dx, dg, db, dy, rows, n, 1e-5f, 0);
    if (rc == cudaSuccess)
        rc = cudaMemcpy(got, dy, total * sizeof *got, cudaMemcpyDeviceToHost);
    double r = rc == cudaSuccess ? rel_err(got, want, total) : INFINITY;
    tap_ok(rc == cudaSuccess && r <= 1e-5, "layer_norm %lldx%lld vs CPU: rel err %.2e (%s)", (long long)rows,
           (long long)n, r, cudaGetErrorString(rc));
    cudaFree(dx), cudaFree(dg), cudaFree(db), cudaFree(dy);
    sdw_tensor_free(&tx), sdw_tensor_free(&tg), sdw_tensor_free(&tb), sdw_tensor_free(&ty);
    free(x), free(g), free(b), free(want), free(got);
}

static void check_act(sdw_backend *cpu, sdw_act act, const char *name, int64_t n)
{
    float *x = rand_buf((size_t)n, 8, 0), *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)n * sizeof *got);
    sdw_error e;
    sdw_tensor tx, ty;
    sdw_tensor_from_host(&tx, cpu, 1, &n, x, &e);
    sdw_tensor_new(&ty, cpu, 1, &n, &e);
    sdw_op_act(&tx, act, &ty, &e);
    sdw_tensor_to_host(&ty, want, &e);
    float *dx = to_dev(x, (size_t)n), *dy = poisoned((size_t)n);
    cudaError_t rc = sdw_k_act(dx, dy, n, (int)act, 0);
    if (rc == cudaSuccess)
        rc = cudaMemcpy(got, dy, (size_t)n * sizeof *got, cudaMemcpyDeviceToHost);
    double r = rc == cudaSuccess ? rel_err(got, want, (size_t)n) : INFINITY;
    tap_ok(rc == cudaSuccess && r <= 1e-5, "%s n=%lld vs CPU: rel err %.2e (%s)", name, (long long)n, r,
           cudaGetErrorString(rc));
    cudaFree(dx), cudaFree(dy);
    sdw_tensor_free(&tx), sdw_tensor_free(&ty);
    free(x), free(want), free(got);
}

int main(void)
{
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess || count == 0) {
        tap_skip("no CUDA device (%s)", rc != cudaSuccess ? cudaGetErrorString(rc) : "none found");
        return tap_done();
    }
    sdw_backend *cpu;
    sdw_error e;
    if (sdw_backend_cpu(&cpu, &e)) {
        tap_ok(0, "cpu backend: %s", e.msg);
        return tap_done();
    }
    check_layer_norm(cpu, 154, 768);
    check_layer_norm(cpu, 7, 33);
    check_layer_norm(cpu, 4096, 320);
    check_act(cpu, SDW_ACT_SILU, "silu", 1 << 20);
    check_act(cpu, SDW_ACT_GELU, "gelu", 1000003);
    check_act(cpu, SDW_ACT_QUICK_GELU, "quick_gelu", 77 * 3072);
    tap_ok(sdw_k_act(NULL, NULL, 0, 0, 0) == cudaErrorInvalidValue, "an empty launch is refused");
    sdw_backend_destroy(cpu);
    return tap_done();
}
