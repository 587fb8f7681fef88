/* The GPU session's first step (tests/gpu/run.sh): in a second or two, does
 * this machine run our CUDA code at all? It reports the driver, runtime,
 * cuBLAS and cuDNN versions and the device, then runs one of our kernels
 * (so a fat binary without code for this chip fails here, not ten minutes
 * later), one cuBLAS product and a cuDNN handle. Built by
 * tests/gpu/prepare.sh against the kernel objects of the CUDA build; not part
 * of make check, which has tests/test_backend_ops for the kernels
 * themselves. TAP; skips without a device. */
#include <cublas_v2.h>
#include <cudnn.h>
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "tap.h"

#define N 4096

static int cuda_ok(cudaError_t rc, const char *what)
{
    return tap_ok(rc == cudaSuccess, "%s%s%s", what, rc == cudaSuccess ? "" : ": ",
                  rc == cudaSuccess ? "" : cudaGetErrorString(rc));
}

int main(void)
{
    int drv = 0, rt = 0, count = 0;
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    tap_diag("CUDA driver API %d.%d, runtime %d.%d (built with %d.%d)", drv / 1000, drv % 1000 / 10, rt / 1000,
             rt % 1000 / 10, CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
    int bmaj = 0, bmin = 0, bpat = 0;
    cublasGetProperty(MAJOR_VERSION, &bmaj);
    cublasGetProperty(MINOR_VERSION, &bmin);
    cublasGetProperty(PATCH_LEVEL, &bpat);
    tap_diag("cuDNN %zu (built with %d), cuBLAS %d.%d.%d (built with %d)", cudnnGetVersion(), CUDNN_VERSION, bmaj,
             bmin, bpat, CUBLAS_VERSION);
    cudaError_t crc = cudaGetDeviceCount(&count);
    if (crc != cudaSuccess || count == 0) {
        tap_skip("no CUDA device (%s)", crc != cudaSuccess ? cudaGetErrorString(crc) : "none found");
        return tap_done();
    }
    struct cudaDeviceProp prop;
    if (!cuda_ok(cudaGetDeviceProperties(&prop, 0), "device 0 properties"))
        return tap_done();
    tap_diag("device 0: %s, compute capability %d.%d, %d SMs, %zu MiB", prop.name, prop.major, prop.minor,
             prop.multiProcessorCount, prop.totalGlobalMem >> 20);

    static float host[N], back[N];
    for (int i = 0; i < N; i++)
        host[i] = (float)(i % 97) - 48.0f;
    float *x = NULL, *y = NULL;
    if (!cuda_ok(cudaMalloc((void **)&x, N * sizeof *x), "cudaMalloc") ||
        !cuda_ok(cudaMalloc((void **)&y, N * sizeof *y), "cudaMalloc"))
        return tap_done();
    cuda_ok(cudaMemcpy(x, host, sizeof host, cudaMemcpyHostToDevice), "upload");
    cudaMemset(y, 0xff, N * sizeof *y);
    if (cuda_ok(sdw_k_scale(x, 0.5f, y, N, SDW_K_F32, 0), "our kernel launches (sdw_k_scale)") &&
        cuda_ok(cudaDeviceSynchronize(), "our kernel runs") &&
        cuda_ok(cudaMemcpy(back, y, sizeof back, cudaMemcpyDeviceToHost), "download")) {
        int bad = 0;
        for (int i = 0; i < N; i++)
            bad += back[i] != 0.5f * host[i];
        tap_ok(bad == 0, "our kernel's result (%d of %d wrong)", bad, N);
    }

    /* A 64x64 by 64x64 float32 product of x with itself against the host. */
    cublasHandle_t blas = NULL;
    cublasStatus_t brc = cublasCreate(&blas);
    if (tap_ok(brc == CUBLAS_STATUS_SUCCESS, "cublasCreate (status %d)", (int)brc)) {
        const float one = 1.0f, zero = 0.0f;
        brc = cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, 64, 64, 64, &one, x, 64, x, 64, &zero, y, 64);
        if (tap_ok(brc == CUBLAS_STATUS_SUCCESS, "cublasSgemm (status %d)", (int)brc) &&
            cuda_ok(cudaMemcpy(back, y, sizeof back, cudaMemcpyDeviceToHost), "download")) {
            double worst = 0;
            for (int c = 0; c < 64; c++)
                for (int r = 0; r < 64; r++) {
                    double s = 0;
                    for (int k = 0; k < 64; k++)
                        s += (double)host[k * 64 + r] * host[c * 64 + k];
                    worst = fmax(worst, fabs(s - back[c * 64 + r]) / (fabs(s) + 1.0));
                }
            tap_ok(worst < 1e-3, "cublasSgemm result (worst relative error %.1e)", worst);
        }
        cublasDestroy(blas);
    }

    cudnnHandle_t dnn = NULL;
    cudnnStatus_t drc = cudnnCreate(&dnn);
    tap_ok(drc == CUDNN_STATUS_SUCCESS, "cudnnCreate: %s", cudnnGetErrorString(drc));
    if (dnn)
        cudnnDestroy(dnn);
    cudaFree(x);
    cudaFree(y);
    return tap_done();
}
