/* sdworker-generate: one image from the command line, through the same
 * pipeline the service runs, on the CPU backend. */
#include <errno.h>
#include <getopt.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend/backend.h"
#include "base/clock.h"
#include "image/image.h"
#include "pipeline/pipeline.h"
#include "pipeline/pixels.h"
#include "pipeline/scheduler.h"
#include "tensor/profile.h"
#include "tensor/tensor.h"

enum { EXIT_USAGE = 2, EXIT_INPUT = 3, EXIT_MODEL = 4, EXIT_GENERATE = 5 };

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sdworker-generate --model DIR|FILE --prompt TEXT [options]\n"
            "\n"
            "Generates one image with a Stable Diffusion 1.x, 2.x or XL model: txt2img, img2img\n"
            "(--init-image) or inpainting (--init-image and --mask).\n"
            "\n"
            "  --model P             a diffusers folder or a single-file .safetensors checkpoint\n"
            "  --prompt TEXT         what to draw\n"
            "  --negative-prompt T   what to steer away from (default none: empty, or for SDXL\n"
            "                        zero embeddings)\n"
            "  --steps N             sampling steps, 1..1000 (default 20)\n"
            "  --guidance G          classifier-free guidance scale; <= 1 turns it off (default 7.5)\n"
            "  --width W, --height H txt2img size, multiples of 8 (default: the model's own, e.g.\n"
            "                        512x512 for SD 1.x, 768x768 for SD 2.1); img2img and\n"
            "                        inpainting use the init image's size\n"
            "  --seed N              0..2^64-1; random when absent; printed either way\n"
            "  --sampler NAME        %s\n"
            "                        (default: the model's own scheduler)\n"
            "  --eta X               ddim's eta (default 0)\n"
            "  --prediction P        epsilon or v_prediction: what the UNet predicts, over what\n"
            "                        the model's files say or, for a single file, imply\n"
            "  --clip-skip K         stop the text encoder K layers early (default 0: off)\n"
            "  --lora FILE[:W]       apply a LoRA file (kohya or diffusers .safetensors) with weight W,\n"
            "                        -4..4 (default 1); repeat for several (at most 8)\n"
            "  --original-size WxH   SDXL's micro-conditioning: the size the image is to look\n"
            "                        cropped from (default: the image's size)\n"
            "  --crop TOP,LEFT       SDXL: the crop's top-left corner (default 0,0)\n"
            "  --target-size WxH     SDXL: the size it is to look made for (default: the image's)\n"
            "  --init-image F        PNG or JPEG to start from (img2img, inpainting); a size that is\n"
            "                        not a multiple of 8 is resized down to one, with a message\n"
            "  --strength S          0..1: how much of the init image is redrawn (default 0.8,\n"
            "                        1.0 when inpainting)\n"
            "  --mask F              PNG or JPEG, white = repaint; resized to the init image's size\n"
            "  --output F            the PNG to write (default out.png); the parameters go in its\n"
            "                        tEXt \"parameters\" chunk\n"
            "  --threads N           CPU threads (default: OpenMP's, OMP_NUM_THREADS)\n"
            "  --device D            cpu (default) or cuda:N (builds configured --with-cuda)\n"
            "  --precision P         CUDA tensor storage: fp16 (default), bf16 or fp32\n"
            "  --timings             also print the timings as one JSON line (for benchmarks)\n"
            "  --latents FILE        also write the final latents to FILE as raw float32 in\n"
            "                        the machine's byte order, [4, height/8, width/8] (to compare devices)\n"
            "  --warmup              first generate the same image once, untimed, as a long-running\n"
            "                        service would have done before: the timings then leave out\n"
            "                        one-off costs (CUDA: cuDNN's algorithm search, graph capture)\n"
            "                        and the warm-up's own are printed on one line before them\n"
            "  --profile[=N]         then generate the same image again with every op timed alone,\n"
            "                        and print where the time went: the N costliest ops by shape\n"
            "                        (default 30) and the totals per op\n"
            "  --quiet               no progress bar or timings; errors only\n"
            "  --help                this text\n"
            "\n"
            "Prints the seed and the timings (load, text encoding, seconds per step, VAE decode) on\n"
            "stdout; the progress bar goes to stderr (plain lines when stderr is not a terminal).\n"
            "\n"
            "Exit status: 0 success, 2 bad usage, 3 unreadable or unusable input image or mask,\n"
            "4 the model cannot be loaded, 5 generation or writing the output failed.\n",
            sdw_sampler_names);
}

/* The generation once more, its image dropped: --warmup's, --profile's. */
static int generate_unkept(sdw_pipeline *p, const sdw_gen_params *gp, sdw_gen_timings *t, sdw_error *e)
{
    sdw_image img = {0};
    int rc = sdw_pipeline_generate(p, gp, NULL, NULL, &img, NULL, t, e);
    sdw_image_free(&img);
    return rc;
}

/* --profile: the same generation again with a profile attached (the first
 * one warmed up the backend: algorithm choices, memory), then its table. */
static int profile(sdw_pipeline *p, sdw_backend *be, const sdw_gen_params *gp, int rows)
{
    sdw_error e = {0};
    sdw_profile *prof = NULL;
    sdw_gen_timings t = {0};
    if (sdw_profile_new(&prof, &e)) {
        fprintf(stderr, "sdworker-generate: %s\n", e.msg);
        return EXIT_GENERATE;
    }
    sdw_backend_profile(be, prof);
    int rc = generate_unkept(p, gp, &t, &e);
    sdw_backend_profile(be, NULL);
    if (rc)
        fprintf(stderr, "sdworker-generate: profiled run: %s\n", e.msg);
    else
        sdw_profile_print(prof, stdout, rows);
    sdw_profile_free(prof);
    return rc ? EXIT_GENERATE : 0;
}

typedef struct progress {
    int quiet, tty;
    double start, last;
} progress;

static int on_step(void *ctx, sdw_pipeline *p, int step, int total)
{
    progress *pr = ctx;
    if (pr->quiet)
        return 0;
    double t = sdw_now_s(), per = (t - pr->start) / step, eta = per * (total - step);
    if (pr->tty) {
        int width = 30, fill = total ? step * width / total : width;
        char bar[64];
        for (int i = 0; i < width; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "\r[%s] %d/%d  %.2f s/step  ETA %.0f s ", bar, step, total, per, eta);
        if (step == total)
            fputc('\n', stderr);
    } else {
        fprintf(stderr, "step %d/%d %.2f s/step ETA %.0f s\n", step, total, per, eta);
    }
    pr->last = t;
    return 0;
}

static int parse_int(const char *opt, const char *s, long lo, long hi, int *v)
{
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (errno || !*s || *end || x < lo || x > hi) {
        fprintf(stderr, "sdworker-generate: %s: '%s' is not an integer in %ld..%ld\n", opt, s, lo, hi);
        return -1;
    }
    *v = (int)x;
    return 0;
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *v)
{
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (errno || !*s || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "sdworker-generate: %s: '%s' is not a number in %g..%g\n", opt, s, lo, hi);
        return -1;
    }
    *v = x;
    return 0;
}

static int parse_float(const char *opt, const char *s, double lo, double hi, float *v)
{
    double x;
    int rc = parse_double(opt, s, lo, hi, &x);
    *v = (float)x;
    return rc;
}

static uint64_t random_seed(void)
{
    uint64_t s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&s, sizeof s, 1, f) != 1)
        s = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (f)
        fclose(f);
    return s;
}

/* Loads an image (grey for masks); a size that is not a multiple of 8, or
 * that differs from want_w x want_h when those are set, is resized. */
static int load_input(const char *what, const char *path, int grey, int want_w, int want_h, sdw_image *img,
                      int quiet)
{
    sdw_error e = {0};
    if (sdw_image_load(img, path, grey, &e)) {
        fprintf(stderr, "sdworker-generate: %s: %s\n", what, e.msg);
        return -1;
    }
    int w = want_w ? want_w : img->width / 8 * 8, h = want_h ? want_h : img->height / 8 * 8;
    if (w < 8 || h < 8) {
        fprintf(stderr, "sdworker-generate: %s: %s is %dx%d; at least 8x8 is needed\n", what, path,
                img->width, img->height);
        return -1;
    }
    if (w == img->width && h == img->height)
        return 0;
    sdw_image r = {0};
    if (sdw_image_resize(img, w, h, &r, &e)) {
        fprintf(stderr, "sdworker-generate: %s: %s\n", what, e.msg);
        return -1;
    }
    if (!quiet)
        fprintf(stderr, "%s %s: resized from %dx%d to %dx%d%s\n", what, path, img->width, img->height, w, h,
                want_w ? " (the init image's size)" : " (multiples of 8)");
    sdw_image_free(img);
    *img = r;
    return 0;
}

/* "AxB" (sep 'x') or "A,B", each in lo..16384. */
static int parse_pair(const char *flag, const char *arg, char sep, int lo, int *a, int *b)
{
    char *end;
    errno = 0;
    long x = strtol(arg, &end, 10), y = -1;
    if (!errno && end != arg && *end == sep) {
        const char *rest = end + 1;
        y = strtol(rest, &end, 10);
        if (errno || end == rest || *end)
            y = -1;
    }
    if (x < lo || x > 16384 || y < lo || y > 16384) {
        fprintf(stderr, "sdworker-generate: %s: expected two integers in %d..16384 as A%cB, not '%s'\n", flag, lo,
                sep, arg);
        return 1;
    }
    *a = (int)x, *b = (int)y;
    return 0;
}

/* The command line, as parsed. */
typedef struct gen_opts {
    const char *model, *prompt, *negative, *sampler, *init_path, *mask_path, *output, *device, *latents_path;
    const char *prediction;
    int precision, json_timings, profile_rows, warmup;
    int steps, width, height, clip_skip, threads, quiet, have_seed, have_strength, have_size;
    int orig_w, orig_h, crop_top, crop_left, target_w, target_h;
    float guidance, eta;
    double strength; /* double: 0.7 * 10 steps must keep 7 of them, as in Python */
    uint64_t seed;
    int nloras;
    const char *lora_paths[8];
    float lora_weights[8];
} gen_opts;

/* Fills o from argv; -1 to go on, else the exit status (help, bad usage). */
static int parse_args(int argc, char **argv, gen_opts *o)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"prompt", required_argument, 0, 'p'},
        {"negative-prompt", required_argument, 0, 'n'}, {"steps", required_argument, 0, 's'},
        {"guidance", required_argument, 0, 'g'},   {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'},     {"seed", required_argument, 0, 'S'},
        {"sampler", required_argument, 0, 'a'},    {"eta", required_argument, 0, 'e'},
        {"clip-skip", required_argument, 0, 'k'},  {"init-image", required_argument, 0, 'i'},
        {"strength", required_argument, 0, 't'},   {"mask", required_argument, 0, 'M'},
        {"output", required_argument, 0, 'o'},     {"threads", required_argument, 0, 'T'},
        {"quiet", no_argument, 0, 'q'},            {"help", no_argument, 0, 'h'},
        {"device", required_argument, 0, 'D'},     {"precision", required_argument, 0, 'P'},
        {"timings", no_argument, 0, 'J'},         {"latents", required_argument, 0, 'L'},
        {"profile", optional_argument, 0, 'F'},    {"warmup", no_argument, 0, 'w'},
        {"prediction", required_argument, 0, 'R'}, {"lora", required_argument, 0, 'l'},
        {"original-size", required_argument, 0, 'O'}, {"crop", required_argument, 0, 'C'},
        {"target-size", required_argument, 0, 'G'},
        {0, 0, 0, 0},
    };
    *o = (gen_opts){.output = "out.png", .device = "cpu", .precision = SDW_PREC_FP16, .steps = 20, .width = 512,
                    .height = 512, .guidance = 7.5f};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        char *end;
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'p': o->prompt = optarg; break;
        case 'n': o->negative = optarg; break;
        case 's': bad = parse_int("--steps", optarg, 1, 1000, &o->steps); break;
        case 'g': bad = parse_float("--guidance", optarg, 0, 100, &o->guidance); break;
        case 'W': bad = parse_int("--width", optarg, 8, 4096, &o->width), o->have_size = 1; break;
        case 'H': bad = parse_int("--height", optarg, 8, 4096, &o->height), o->have_size = 1; break;
        case 'S':
            errno = 0;
            o->seed = strtoull(optarg, &end, 10);
            if (errno || !*optarg || *end || *optarg == '-') {
                fprintf(stderr, "sdworker-generate: --seed: '%s' is not an integer in 0..2^64-1\n", optarg);
                bad = 1;
            }
            o->have_seed = 1;
            break;
        case 'a': o->sampler = optarg; break;
        case 'e': bad = parse_float("--eta", optarg, 0, 1, &o->eta); break;
        case 'k': bad = parse_int("--clip-skip", optarg, 0, 11, &o->clip_skip); break;
        case 'i': o->init_path = optarg; break;
        case 't': bad = parse_double("--strength", optarg, 0, 1, &o->strength), o->have_strength = 1; break;
        case 'M': o->mask_path = optarg; break;
        case 'o': o->output = optarg; break;
        case 'T': bad = parse_int("--threads", optarg, 1, 1024, &o->threads); break;
        case 'D': o->device = optarg; break;
        case 'P':
            o->precision = sdw_precision_parse(optarg);
            if (o->precision < 0) {
                fprintf(stderr, "sdworker-generate: --precision: expected fp32, fp16 or bf16, not '%s'\n", optarg);
                bad = 1;
            }
            break;
        case 'J': o->json_timings = 1; break;
        case 'F':
            o->profile_rows = 30;
            if (optarg)
                bad = parse_int("--profile", optarg, 1, 100000, &o->profile_rows);
            break;
        case 'L': o->latents_path = optarg; break;
        case 'R':
            if (!strcmp(optarg, "v"))
                optarg = "v_prediction";
            if (strcmp(optarg, "epsilon") && strcmp(optarg, "v_prediction")) {
                fprintf(stderr, "sdworker-generate: --prediction: expected epsilon or v_prediction, not '%s'\n",
                        optarg);
                bad = 1;
            }
            o->prediction = optarg;
            break;
        case 'l': {
            if (o->nloras == 8) {
                fprintf(stderr, "sdworker-generate: --lora: at most 8\n");
                return EXIT_USAGE;
            }
            /* FILE:W when what follows the last ':' is a number, else FILE. */
            char *colon = strrchr(optarg, ':');
            float w = 1.0f;
            if (colon && colon[1]) {
                errno = 0;
                double x = strtod(colon + 1, &end);
                if (!errno && !*end) {
                    if (!(x >= -4 && x <= 4)) {
                        fprintf(stderr, "sdworker-generate: --lora: weight %s outside -4..4\n", colon + 1);
                        return EXIT_USAGE;
                    }
                    w = (float)x;
                    *colon = 0;
                }
            }
            o->lora_paths[o->nloras] = optarg;
            o->lora_weights[o->nloras++] = w;
            break;
        }
        case 'O': bad = parse_pair("--original-size", optarg, 'x', 1, &o->orig_w, &o->orig_h); break;
        case 'C': bad = parse_pair("--crop", optarg, ',', 0, &o->crop_top, &o->crop_left); break;
        case 'G': bad = parse_pair("--target-size", optarg, 'x', 1, &o->target_w, &o->target_h); break;
        case 'w': o->warmup = 1; break;
        case 'q': o->quiet = 1; break;
        case 'h': usage(stdout); return 0;
        default: fprintf(stderr, "sdworker-generate: see --help\n"); return EXIT_USAGE;
        }
        if (bad)
            return EXIT_USAGE;
    }
    if (optind < argc) {
        fprintf(stderr, "sdworker-generate: unexpected argument '%s' (see --help)\n", argv[optind]);
        return EXIT_USAGE;
    }
    return -1;
}

/* The checks that involve several options; 0 or EXIT_USAGE. */
static int check_args(const gen_opts *o)
{
    const char *why = NULL;
    if (!o->model || !o->prompt)
        why = "--model and --prompt are required (see --help)";
    else if (o->mask_path && !o->init_path)
        why = "--mask needs --init-image";
    else if (o->init_path && o->have_size)
        why = "--width/--height apply to txt2img only; img2img and inpainting use the init image's size";
    if (why) {
        fprintf(stderr, "sdworker-generate: %s\n", why);
        return EXIT_USAGE;
    }
    if (!o->init_path && (o->width % 8 || o->height % 8)) {
        fprintf(stderr, "sdworker-generate: --width and --height must be multiples of 8 (got %dx%d)\n", o->width,
                o->height);
        return EXIT_USAGE;
    }
    if (o->sampler && sdw_sampler_parse(o->sampler) < 0) {
        fprintf(stderr, "sdworker-generate: unknown sampler '%s' (valid: %s)\n", o->sampler, sdw_sampler_names);
        return EXIT_USAGE;
    }
    return 0;
}

static void print_timings(const gen_opts *o, const sdw_image *out, double load_s, const sdw_gen_timings *t)
{
    printf("output: %s (%dx%d)\n", o->output, out->width, out->height);
    printf("load: %.2f s\n", load_s);
    if (o->nloras)
        printf("lora: %.3f s (%d applied)\n", t->lora_s, o->nloras);
    printf("text encode: %.2f s\nprepare: %.2f s\n", t->encode_s, t->prepare_s);
    printf("denoise: %.2f s (%d UNet steps, %.3f s/step", t->denoise_s, t->unet_calls,
           t->unet_calls ? t->denoise_s / t->unet_calls : 0.0);
    if (t->graph_replays)
        printf(", %d replayed from a CUDA graph", t->graph_replays);
    printf(")\n");
    if (t->graph_note[0])
        printf("not using a CUDA graph: %s\n", t->graph_note);
    printf("vae decode: %.2f s\ntotal: %.2f s\n", t->decode_s, t->total_s + load_s);
    if (t->mem_start)
        printf("device memory: %zu MiB reserved at the start, at most %zu MiB encoding and denoising, "
               "%zu MiB decoding\n",
               t->mem_start >> 20, t->mem_denoise_peak >> 20, t->mem_decode_peak >> 20);
}

static void print_json_timings(double load_s, const sdw_gen_timings *t, const sdw_gen_timings *wt)
{
    printf("{\"load_s\":%.6f,\"lora_s\":%.6f,\"encode_s\":%.6f,\"prepare_s\":%.6f,\"denoise_s\":%.6f,\"unet_calls\":%d,"
           "\"graph_replays\":%d,\"decode_s\":%.6f,\"total_s\":%.6f,\"mem_start_mib\":%zu,"
           "\"mem_denoise_peak_mib\":%zu,\"mem_decode_peak_mib\":%zu,\"warmup_s\":%.6f,"
           "\"warmup_denoise_s\":%.6f,\"warmup_decode_s\":%.6f}\n",
           load_s, t->lora_s, t->encode_s, t->prepare_s, t->denoise_s, t->unet_calls, t->graph_replays, t->decode_s,
           t->total_s, t->mem_start >> 20, t->mem_denoise_peak >> 20, t->mem_decode_peak >> 20, wt->total_s,
           wt->denoise_s, wt->decode_s);
}

static int write_latents(const char *path, const float *latents, size_t n)
{
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(latents, sizeof *latents, n, f) == n;
    if (f && fclose(f))
        ok = 0;
    if (!ok) {
        fprintf(stderr, "sdworker-generate: %s: %s\n", path, strerror(errno));
        return EXIT_GENERATE;
    }
    return 0;
}

/* Loads the model and makes the image o asks for, with the inputs loaded;
 * returns the exit status. */
static int run(const gen_opts *o, sdw_gen_params *gp, const sdw_image *init)
{
    int status = 0;
    sdw_error e = {0};
    sdw_backend *be = NULL, *be32 = NULL;
    sdw_pipeline *p = NULL;
    sdw_image out = {0};
    char *params = NULL;
    float *latents = NULL;
    size_t nlat = 0;
    sdw_gen_timings t = {0}, wt = {0};
    sdw_lora *loras[8] = {0};
    sdw_lora_use uses[8];
    double t0 = sdw_now_s();
    sdw_device dev;
    /* fp16 storage: a float32 backend beside it for a force_upcast VAE */
    if (sdw_device_parse(o->device, &dev, &e) || sdw_backend_open(&be, dev, (sdw_precision)o->precision, &e) ||
        (be->fp16 && sdw_backend_open(&be32, dev, SDW_PREC_FP32, &e))) {
        fprintf(stderr, "sdworker-generate: %s\n", e.msg);
        status = EXIT_MODEL;
        goto done;
    }
    sdw_pipeline_options po = {.prediction = o->prediction, .fp32 = be32};
    if (sdw_pipeline_load(&p, be, o->model, &po, &e)) {
        fprintf(stderr, "sdworker-generate: cannot load the model: %s\n", e.msg);
        status = EXIT_MODEL;
        goto done;
    }
    if (!o->init_path && !o->have_size) {
        sdw_pipeline_info pi;
        sdw_pipeline_describe(p, &pi);
        gp->width = pi.width;
        gp->height = pi.height;
    }
    double load_s = sdw_now_s() - t0;
    for (int i = 0; i < o->nloras; i++) {
        if (sdw_lora_open(&loras[i], o->lora_paths[i], &e) || sdw_pipeline_lora_check(p, loras[i], &e)) {
            fprintf(stderr, "sdworker-generate: LoRA %s: %s\n", o->lora_paths[i], e.msg);
            status = EXIT_INPUT;
            goto done;
        }
        uses[i] = (sdw_lora_use){.lora = loras[i], .name = o->lora_paths[i], .weight = o->lora_weights[i]};
    }
    gp->loras = uses;
    gp->nloras = o->nloras;
    int sc = sdw_pipeline_scale(p);
    if (o->init_path && (init->width % sc || init->height % sc)) {
        fprintf(stderr, "sdworker-generate: the init image's size must be a multiple of the model's scale %d\n", sc);
        status = EXIT_INPUT;
        goto done;
    }
    if (o->latents_path) {
        nlat = (size_t)4 * (size_t)(gp->width / sc) * (size_t)(gp->height / sc);
        if (!(latents = malloc(nlat * sizeof *latents))) {
            fprintf(stderr, "sdworker-generate: out of memory\n");
            status = EXIT_GENERATE;
            goto done;
        }
    }
    if (!o->quiet)
        printf("seed: %llu\n", (unsigned long long)gp->seed);
    fflush(stdout);
    if (o->warmup) {
        if (generate_unkept(p, gp, &wt, &e)) {
            fprintf(stderr, "sdworker-generate: warm-up: %s\n", e.msg);
            status = EXIT_GENERATE;
            goto done;
        }
        if (!o->quiet)
            printf("warm-up: %.2f s (text encode %.2f s, denoise %.2f s, vae decode %.2f s)\n", wt.total_s,
                   wt.encode_s, wt.denoise_s, wt.decode_s);
        fflush(stdout);
    }
    progress pr = {.quiet = o->quiet, .tty = isatty(2), .start = 0};
    pr.start = sdw_now_s();
    if (sdw_pipeline_generate(p, gp, on_step, &pr, &out, latents, &t, &e)) {
        fprintf(stderr, "sdworker-generate: %s\n", e.msg);
        status = EXIT_GENERATE;
        goto done;
    }
    if (o->latents_path && (status = write_latents(o->latents_path, latents, nlat)))
        goto done;
    params = sdw_gen_params_text(gp, out.width, out.height, sdw_pipeline_sampler(p, o->sampler), o->model);
    const char *text[2] = {"parameters", params};
    if (!params || sdw_png_save(&out, o->output, text, 1, &e)) {
        fprintf(stderr, "sdworker-generate: %s: %s\n", o->output, params ? e.msg : "out of memory");
        status = EXIT_GENERATE;
        goto done;
    }
    if (!o->quiet)
        print_timings(o, &out, load_s, &t);
    if (o->profile_rows && (status = profile(p, be, gp, o->profile_rows)))
        goto done;
    if (o->json_timings)
        print_json_timings(load_s, &t, &wt);
done:
    free(params);
    free(latents);
    sdw_image_free(&out);
    sdw_pipeline_free(p);
    for (int i = 0; i < o->nloras; i++)
        sdw_lora_free(loras[i]);
    sdw_backend_destroy(be32);
    sdw_backend_destroy(be);
    return status;
}

int main(int argc, char **argv)
{
    gen_opts o;
    int status = parse_args(argc, argv, &o);
    if (status >= 0)
        return status;
    if ((status = check_args(&o)))
        return status;
    if (o.threads) {
        omp_set_num_threads(o.threads);
        openblas_set_num_threads(o.threads);
    }
    if (!o.have_seed)
        o.seed = random_seed();

    sdw_image init = {0}, mask = {0};
    sdw_gen_kind kind = o.mask_path ? SDW_GEN_INPAINT : o.init_path ? SDW_GEN_IMG2IMG : SDW_GEN_TXT2IMG;
    if (o.init_path && load_input("init image", o.init_path, 0, 0, 0, &init, o.quiet))
        return EXIT_INPUT;
    if (o.mask_path && load_input("mask", o.mask_path, 1, init.width, init.height, &mask, o.quiet)) {
        sdw_image_free(&init);
        return EXIT_INPUT;
    }
    sdw_gen_params gp;
    sdw_gen_params_init(&gp, kind);
    gp.prompt = o.prompt;
    gp.negative_prompt = o.negative;
    gp.steps = o.steps;
    gp.guidance = o.guidance;
    gp.width = o.init_path ? init.width : o.width;
    gp.height = o.init_path ? init.height : o.height;
    gp.seed = o.seed;
    gp.sampler = o.sampler;
    gp.eta = o.eta;
    gp.clip_skip = o.clip_skip;
    gp.original_width = o.orig_w, gp.original_height = o.orig_h;
    gp.crop_top = o.crop_top, gp.crop_left = o.crop_left;
    gp.target_width = o.target_w, gp.target_height = o.target_h;
    if (o.have_strength)
        gp.strength = o.strength;
    gp.init_image = o.init_path ? &init : NULL;
    gp.mask = o.mask_path ? &mask : NULL;
    status = run(&o, &gp, &init);
    sdw_image_free(&init);
    sdw_image_free(&mask);
    return status;
}
