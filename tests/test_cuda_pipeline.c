/* Whole pipelines on the CUDA backend against the CPU backend, on the tiny
 * fixture models (tests/fixtures/models): txt2img with a deterministic and an
 * ancestral sampler, img2img, and 9-channel inpainting, SD 1 and SD 2
 * (v-prediction), and with LoRAs (linear and convolution deltas; on SDXL
 * through the host simulation). Final latents within
 * 1e-4 relative error (max abs difference over max abs reference) in
 * float32, within 1e-2 in fp16, within BF16_TOL in bf16. A second identical generation must not grow
 * the device memory in use: the caching allocator serves every later step
 * from the blocks of the first. On CUDA the UNet step is recorded as a graph
 * on the second call and replayed after: every case checks that it was
 * (the replay count), and float32 runs once more with graphs turned off
 * (SDW_CUDA_GRAPHS=0), which must give the same latents within 1e-5 (its
 * own convolution algorithms may sum in another order). Against the host
 * stand-ins (SDW_CUSIM), a device shrunk to leave 48 MiB free must fail a
 * generation with SDW_ENOMEM and a clear message, and the same pipeline
 * must work again once memory is back. Skips without a CUDA device. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "fixture.h"
#include "pipeline/pipeline.h"
#include "tap.h"

/* bfloat16 keeps 8 significant bits to half's 11: its latents may differ
 * from the CPU's up to eight times as much as fp16's 1e-2. */
#define BF16_TOL 8e-2

typedef struct gen_case {
    const char *name, *model, *sampler, *init, *mask;
    sdw_gen_kind kind;
    int width, height, steps;
    double strength;
    /* LoRA files under fixtures/lora/ with their weights (NULL: none) */
    const char *lora[2];
    float lora_w[2];
} gen_case;

static const gen_case cases[] = {
#ifdef SDW_CUSIM
    /* Through the host simulation of the kernels and the fake CUDA
     * libraries (tests/cusim), where each op takes milliseconds: one small
     * case, with the fewest UNet steps that still include replays. */
    {"txt2img euler 32x32", "tiny-a", "euler", NULL, NULL, SDW_GEN_TXT2IMG, 32, 32, 3, 1.0, {NULL, NULL}, {0, 0}},
    /* SD 2: gelu text encoder, linear projections, per-level heads, v-prediction */
    {"sd2 txt2img euler 32x32", "tiny-sd2", "euler", NULL, NULL, SDW_GEN_TXT2IMG, 32, 32, 3, 1.0, {NULL, NULL}, {0, 0}},
    /* LoRA deltas beside linears and (LoCon) convolutions, strided ones included */
    {"txt2img euler 32x32 with two LoRAs", "tiny-a", "euler", NULL, NULL, SDW_GEN_TXT2IMG, 32, 32, 3, 1.0,
     {"a-kohya-attn.safetensors", "a-kohya-locon.safetensors"}, {0.7f, -0.5f}},
    /* SDXL: two text encoders, micro-conditioning, kohya's SGM-named LoRA and a PEFT one */
    {"sdxl txt2img euler 32x32 with two LoRAs", "tiny-sdxl", "euler", NULL, NULL, SDW_GEN_TXT2IMG, 32, 32, 3, 1.0,
     {"xl-kohya.safetensors", "xl-peft.safetensors"}, {0.6f, -0.5f}},
#else
    {"txt2img euler", "tiny-a", "euler", NULL, NULL, SDW_GEN_TXT2IMG, 64, 64, 6, 1.0, {NULL, NULL}, {0, 0}},
    {"txt2img euler_a 96x64", "tiny-b", "euler_a", NULL, NULL, SDW_GEN_TXT2IMG, 96, 64, 5, 1.0, {NULL, NULL}, {0, 0}},
    {"img2img ddim", "tiny-a", "ddim", "init-64x64.png", NULL, SDW_GEN_IMG2IMG, 64, 64, 8, 0.6, {NULL, NULL}, {0, 0}},
    {"inpaint 9-channel", "tiny-inpaint", "euler_a", "init-64x64.png", "mask-64x64.png", SDW_GEN_INPAINT, 64, 64, 5,
     1.0, {NULL, NULL}, {0, 0}},
    {"sd2 txt2img dpmpp_2m (v-prediction)", "tiny-sd2", "dpmpp_2m", NULL, NULL, SDW_GEN_TXT2IMG, 64, 64, 5, 1.0,
     {NULL, NULL}, {0, 0}},
    {"sd2 inpaint 9-channel", "tiny-sd2-inpaint", "euler_a", "init-64x64.png", "mask-64x64.png", SDW_GEN_INPAINT, 64,
     64, 5, 1.0, {NULL, NULL}, {0, 0}},
    {"txt2img euler with two LoRAs", "tiny-a", "euler", NULL, NULL, SDW_GEN_TXT2IMG, 64, 64, 6, 1.0,
     {"a-kohya-attn.safetensors", "a-kohya-locon.safetensors"}, {0.7f, -0.5f}},
    {"sd2 txt2img euler with a LoRA", "tiny-sd2", "euler", NULL, NULL, SDW_GEN_TXT2IMG, 64, 64, 5, 1.0,
     {"sd2-kohya.safetensors", NULL}, {1.0f, 0}},
#endif
};

/* Runs case c on be; latents receives [4, h/8, w/8], t the timings. */
static int run(sdw_backend *be, const gen_case *c, float *latents, sdw_gen_timings *t, sdw_error *e)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", tap_fixture("models"), c->model);
    sdw_pipeline *p = NULL;
    int rc = sdw_pipeline_load(&p, be, dir, NULL, e);
    if (rc)
        return rc;
    sdw_image init = {0}, mask = {0}, out = {0};
    char path[4096];
    sdw_lora *loras[2] = {0};
    sdw_lora_use uses[2];
    int nloras = 0;
    for (int i = 0; !rc && i < 2 && c->lora[i]; i++, nloras++) {
        snprintf(path, sizeof path, "%s/%s", tap_fixture("lora"), c->lora[i]);
        rc = sdw_lora_open(&loras[i], path, e);
        uses[i] = (sdw_lora_use){.lora = loras[i], .name = c->lora[i], .weight = c->lora_w[i]};
    }
    if (!rc && c->init) {
        snprintf(path, sizeof path, "%s/%s", tap_fixture("pipeline"), c->init);
        rc = sdw_image_load(&init, path, 0, e);
    }
    if (!rc && c->mask) {
        snprintf(path, sizeof path, "%s/%s", tap_fixture("pipeline"), c->mask);
        rc = sdw_image_load(&mask, path, 1, e);
    }
    if (!rc) {
        sdw_gen_params gp;
        sdw_gen_params_init(&gp, c->kind);
        gp.prompt = "a photograph of an astronaut riding a horse";
        gp.negative_prompt = "blurry";
        gp.steps = c->steps;
        gp.guidance = 7.5f;
        gp.width = c->width;
        gp.height = c->height;
        gp.seed = 42;
        gp.sampler = c->sampler;
        if (c->kind != SDW_GEN_TXT2IMG)
            gp.strength = c->strength;
        gp.init_image = init.pixels ? &init : NULL;
        gp.mask = mask.pixels ? &mask : NULL;
        gp.loras = uses;
        gp.nloras = nloras;
        rc = sdw_pipeline_generate(p, &gp, NULL, NULL, &out, latents, t, e);
    }
    for (int i = 0; i < 2; i++)
        sdw_lora_free(loras[i]);
    sdw_image_free(&out);
    sdw_image_free(&init);
    sdw_image_free(&mask);
    sdw_pipeline_free(p);
    return rc;
}

/* txt2img "a cat", euler, steps steps at size x size. */
static sdw_gen_params cat_params(int steps, int size)
{
    sdw_gen_params gp;
    sdw_gen_params_init(&gp, SDW_GEN_TXT2IMG);
    gp.prompt = "a cat";
    gp.steps = steps;
    gp.width = gp.height = size;
    gp.sampler = "euler";
    return gp;
}

int main(void)
{
    int count = 0;
    cudaError_t crc = cudaGetDeviceCount(&count);
    if (crc != cudaSuccess || count == 0) {
        tap_skip("no CUDA device (%s)", crc != cudaSuccess ? cudaGetErrorString(crc) : "none found");
        return tap_done();
    }
    sdw_error e;
    sdw_backend *cpu = NULL, *f32 = NULL, *f16 = NULL, *bf16 = NULL, *plain = NULL;
    if (!tap_ok(sdw_backend_cpu(&cpu, &e) == 0, "cpu backend"))
        return tap_done();
    /* The call first: the message's arguments must see its result. */
    int brc = sdw_backend_cuda(&f32, 0, SDW_PREC_FP32, &e);
    if (!tap_ok(brc == 0, "cuda fp32 backend%s%s", brc ? ": " : "", brc ? e.msg : ""))
        return tap_done();
    brc = sdw_backend_cuda(&f16, 0, SDW_PREC_FP16, &e);
    if (!tap_ok(brc == 0, "cuda fp16 backend%s%s", brc ? ": " : "", brc ? e.msg : ""))
        return tap_done();
    brc = sdw_backend_cuda(&bf16, 0, SDW_PREC_BF16, &e);
    if (!tap_ok(brc == 0, "cuda bf16 backend%s%s", brc ? ": " : "", brc ? e.msg : ""))
        return tap_done();
    setenv("SDW_CUDA_GRAPHS", "0", 1);
    int prc = sdw_backend_cuda(&plain, 0, SDW_PREC_FP32, &e);
    unsetenv("SDW_CUDA_GRAPHS");
    if (!tap_ok(prc == 0, "cuda fp32 backend without graphs%s%s", prc ? ": " : "", prc ? e.msg : ""))
        return tap_done();

    /* force_upcast (tiny-a's VAE config leaves it at diffusers' default,
     * true): given a float32 backend, the VAE of an fp16 pipeline goes
     * there, and the generation decodes on it; bf16 storage keeps its VAE. */
    {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/tiny-a", tap_fixture("models"));
        sdw_pipeline_options o = {.fp32 = f32};
        sdw_pipeline *p16 = NULL, *pbf = NULL, *pno = NULL;
        sdw_pipeline_info i16 = {0}, ibf = {0}, ino = {0};
        int rc = sdw_pipeline_load(&p16, f16, dir, &o, &e);
        if (!rc && !(rc = sdw_pipeline_load(&pbf, bf16, dir, &o, &e)))
            rc = sdw_pipeline_load(&pno, f16, dir, NULL, &e);
        if (!rc) {
            sdw_pipeline_describe(p16, &i16), sdw_pipeline_describe(pbf, &ibf), sdw_pipeline_describe(pno, &ino);
        }
        tap_ok(!rc && i16.vae_fp32 && !ibf.vae_fp32 && !ino.vae_fp32,
               "force_upcast: fp16's VAE on the float32 backend (%d), bf16's (%d) and one without it given (%d) "
               "on their own%s%s", i16.vae_fp32, ibf.vae_fp32, ino.vae_fp32, rc ? ": " : "", rc ? e.msg : "");
        sdw_gen_params gp;
        sdw_gen_params_init(&gp, SDW_GEN_TXT2IMG);
        gp.prompt = "a red door";
        gp.width = gp.height = 32;
        gp.steps = 2;
        gp.sampler = "euler";
        sdw_image out = {0};
        sdw_gen_timings t = {0};
        size_t before, peak;
        before = sdw_backend_memory(f32, &peak);
        rc = rc ? rc : sdw_pipeline_generate(p16, &gp, NULL, NULL, &out, NULL, &t, &e);
        tap_ok(!rc && out.width == 32 && t.mem_decode_peak > before,
               "an fp16 generation decodes on the float32 backend (%zu KiB at its peak there)%s%s",
               t.mem_decode_peak >> 10, rc ? ": " : "", rc ? e.msg : "");
        sdw_image_free(&out);
        sdw_pipeline_free(p16), sdw_pipeline_free(pbf), sdw_pipeline_free(pno);
    }

    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const gen_case *c = &cases[i];
        size_t n = (size_t)4 * (c->width / 8) * (c->height / 8);
        float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got), *direct = malloc(n * sizeof *direct);
        if (!want || !got || !direct)
            abort();
        sdw_gen_timings t;
        if (!tap_ok(run(cpu, c, want, &t, &e) == 0, "%s on %s: cpu runs", c->name, c->model)) {
            tap_diag("%s", e.msg);
            free(want), free(got), free(direct);
            continue;
        }
        tap_ok(t.graph_replays == 0 && !t.mem_start && !t.mem_denoise_peak && !t.mem_decode_peak,
               "%s: the cpu replays nothing (%d) and reports no device memory", c->name, t.graph_replays);
        int rc = run(f32, c, got, &t, &e);
        double r = rc ? INFINITY : max_rel_err(got, want, n);
        tap_ok(!rc && r <= 1e-4, "%s on %s: cuda fp32 latents vs cpu: rel err %.2e%s%s", c->name, c->model, r,
               rc ? ": " : "", rc ? e.msg : "");
        /* Step 1 runs op by op, step 2 is recorded, the rest are replays. */
        tap_ok(!rc && t.graph_replays == t.unet_calls - 2, "%s: fp32 replayed %d of %d UNet steps%s%s", c->name,
               t.graph_replays, t.unet_calls, t.graph_note[0] ? ": " : "", t.graph_note);
        rc = run(plain, c, direct, &t, &e);
        r = rc ? INFINITY : max_rel_err(got, direct, n);
        tap_ok(!rc && r <= 1e-5 && t.graph_replays == 0,
               "%s: fp32 without graphs gives the same latents: rel err %.2e, %d replays%s%s", c->name, r,
               t.graph_replays, rc ? ": " : "", rc ? e.msg : "");
        rc = run(f16, c, got, &t, &e);
        r = rc ? INFINITY : max_rel_err(got, want, n);
        tap_ok(!rc && r <= 1e-2, "%s on %s: cuda fp16 latents vs cpu: rel err %.2e%s%s", c->name, c->model, r,
               rc ? ": " : "", rc ? e.msg : "");
        tap_ok(!rc && t.graph_replays == t.unet_calls - 2, "%s: fp16 replayed %d of %d UNet steps%s%s", c->name,
               t.graph_replays, t.unet_calls, t.graph_note[0] ? ": " : "", t.graph_note);
        rc = run(bf16, c, got, &t, &e);
        r = rc ? INFINITY : max_rel_err(got, want, n);
        tap_ok(!rc && r <= BF16_TOL, "%s on %s: cuda bf16 latents vs cpu: rel err %.2e (tol %.0e)%s%s", c->name,
               c->model, r, BF16_TOL, rc ? ": " : "", rc ? e.msg : "");
        free(want), free(got), free(direct);
    }

    /* Same generation twice on one loaded model: after the first, device
     * memory in use must not grow. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", tap_fixture("models"), cases[0].model);
    sdw_pipeline *p = NULL;
    if (tap_ok(sdw_pipeline_load(&p, f16, dir, NULL, &e) == 0, "tiny-a loads on fp16")) {
        sdw_gen_params gp = cat_params(4, 64);
        size_t free1 = 0, free2 = 0, total = 0;
        sdw_image out = {0};
        sdw_gen_timings t;
        int rc = sdw_pipeline_generate(p, &gp, NULL, NULL, &out, NULL, &t, &e);
        sdw_image_free(&out);
        if (!rc && cudaDeviceSynchronize() == cudaSuccess && cudaMemGetInfo(&free1, &total) == cudaSuccess)
            rc = sdw_pipeline_generate(p, &gp, NULL, NULL, &out, NULL, &t, &e);
        sdw_image_free(&out);
        int ok = !rc && cudaDeviceSynchronize() == cudaSuccess && cudaMemGetInfo(&free2, &total) == cudaSuccess;
        tap_ok(ok && free2 >= free1, "a second generation allocates no device memory (free %zu -> %zu MiB)%s%s",
               free1 >> 20, free2 >> 20, rc ? ": " : "", rc ? e.msg : "");
        tap_ok(!rc && t.mem_start > 0 && t.mem_denoise_peak >= t.mem_start && t.mem_decode_peak > 0,
               "device memory reported: %zu KiB at the start, at most %zu KiB denoising, %zu KiB decoding",
               t.mem_start >> 10, t.mem_denoise_peak >> 10, t.mem_decode_peak >> 10);
        /* SDW_CUDA_TRIM=1: cached blocks go back at the start of a
         * generation (a second one starts with less reserved) and before the
         * decode, so the decode's peak is no higher (lower wherever the
         * decoder does not reuse every size the UNet left; on the fake
         * device, by 16 KiB). The trimmed backend is a second one, and cuDNN
         * times its candidates afresh: on a real device it may pick other
         * convolution algorithms, which sum in another order, so its latents
         * agree within fp16's bound rather than bit for bit. */
        sdw_backend *trim = NULL;
        sdw_pipeline *pt = NULL;
        setenv("SDW_CUDA_TRIM", "1", 1);
        int trc = sdw_backend_cuda(&trim, 0, SDW_PREC_FP16, &e);
        unsetenv("SDW_CUDA_TRIM");
        if (!trc)
            trc = sdw_pipeline_load(&pt, trim, dir, NULL, &e);
        sdw_image a = {0}, b = {0};
        sdw_gen_timings tt;
        size_t nlat = (size_t)4 * 8 * 8;
        float la[4 * 8 * 8], lb[4 * 8 * 8];
        if (!trc)
            trc = sdw_pipeline_generate(p, &gp, NULL, NULL, &a, la, &t, &e);
        for (int i = 0; !trc && i < 2; i++) {
            sdw_image_free(&b);
            trc = sdw_pipeline_generate(pt, &gp, NULL, NULL, &b, lb, &tt, &e);
        }
        double r = trc ? INFINITY : max_rel_err(lb, la, nlat);
        tap_ok(!trc && r <= 1e-2 && tt.mem_decode_peak <= t.mem_decode_peak && tt.mem_start < t.mem_start,
               "with SDW_CUDA_TRIM=1 a second generation starts at %zu KiB, not %zu, the decode peaks at %zu KiB, "
               "not %zu, and the latents agree: rel err %.2e%s%s",
               tt.mem_start >> 10, t.mem_start >> 10, tt.mem_decode_peak >> 10, t.mem_decode_peak >> 10, r,
               trc ? ": " : "", trc ? e.msg : "");
        sdw_image_free(&a), sdw_image_free(&b);
        sdw_pipeline_free(pt);
        sdw_backend_destroy(trim);
        sdw_pipeline_free(p);
    }
#ifdef SDW_CUSIM
    /* Out of device memory, on the fake device shrunk to what is in use
     * plus 48 MiB: a new fp16 backend starts (cuBLAS's 32 MiB workspace) and
     * loads the tiny model, but its first convolution's workspace does not
     * fit. The generation must fail with SDW_ENOMEM and a message that says
     * what it asked for and what was free, and the same pipeline must
     * generate once the memory is there again. */
    size_t fr = 0, total = 0;
    sdw_backend *small = NULL;
    p = NULL;
    if (cudaMemGetInfo(&fr, &total) == cudaSuccess) {
        char mib[32];
        snprintf(mib, sizeof mib, "%zu", ((total - fr) >> 20) + 48);
        setenv("SDW_FAKE_DEVICE_MIB", mib, 1);
    }
    int src = sdw_backend_cuda(&small, 0, SDW_PREC_FP16, &e);
    int lrc = src ? src : sdw_pipeline_load(&p, small, dir, NULL, &e);
    tap_ok(!src && !lrc, "a backend and the tiny model fit in 48 MiB%s%s", src || lrc ? ": " : "",
           src || lrc ? e.msg : "");
    if (!lrc) {
        sdw_gen_params gp = cat_params(3, 32);
        sdw_image out = {0};
        sdw_gen_timings t;
        int rc = sdw_pipeline_generate(p, &gp, NULL, NULL, &out, NULL, &t, &e);
        tap_ok(rc == SDW_ENOMEM && strstr(e.msg, "cannot allocate") && strstr(e.msg, "MiB free"),
               "a generation that does not fit fails with SDW_ENOMEM: %s", rc ? e.msg : "(it ran)");
        sdw_image_free(&out);
        unsetenv("SDW_FAKE_DEVICE_MIB");
        rc = sdw_pipeline_generate(p, &gp, NULL, NULL, &out, NULL, &t, &e);
        tap_ok(!rc && out.width == 32, "with the memory back, the same pipeline generates%s%s", rc ? ": " : "",
               rc ? e.msg : "");
        sdw_image_free(&out);
    }
    unsetenv("SDW_FAKE_DEVICE_MIB");
    sdw_pipeline_free(p);
    sdw_backend_destroy(small);
#endif
    sdw_backend_destroy(plain);
    sdw_backend_destroy(f16);
    sdw_backend_destroy(bf16);
    sdw_backend_destroy(f32);
    sdw_backend_destroy(cpu);
    return tap_done();
}
