/* Per-op timings (profile.h) on the CPU backend: rows by op and shapes,
 * calls and floating-point operations counted, most time first, graph
 * recording refused while attached, nothing counted once detached, and the
 * printed table. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "tap.h"
#include "tensor/profile.h"

static const sdw_profile_row *find(sdw_profile *p, const char *what)
{
    size_t n;
    const sdw_profile_row *r = sdw_profile_rows(p, &n);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(r[i].what, what))
            return &r[i];
    return NULL;
}

int main(void)
{
    sdw_error e;
    sdw_backend *be = NULL;
    sdw_profile *p = NULL;
    if (!tap_ok(sdw_backend_cpu(&be, &e) == 0 && sdw_profile_new(&p, &e) == 0, "cpu backend and profile"))
        return tap_done();
    int64_t xs[2] = {64, 96}, ws[2] = {48, 96}, ys[2] = {64, 48}, n = 48;
    int64_t is[4] = {2, 8, 16, 16}, ks[4] = {8, 8, 3, 3};
    float *h = calloc(64 * 96, sizeof *h);
    sdw_tensor x, w, b, y, img, k, out, big;
    int rc = !h || sdw_tensor_from_host(&x, be, 2, xs, h, &e) || sdw_tensor_from_host(&w, be, 2, ws, h, &e) ||
             sdw_tensor_from_host(&b, be, 1, &n, h, &e) || sdw_tensor_new(&y, be, 2, ys, &e) ||
             sdw_tensor_new(&img, be, 4, is, &e) || sdw_tensor_from_host(&k, be, 4, ks, h, &e) ||
             sdw_tensor_new(&out, be, 4, is, &e) || sdw_tensor_new(&big, be, 2, (int64_t[]){1024, 1024}, &e);
    if (!tap_ok(!rc, "tensors"))
        return tap_done();

    /* Not attached: nothing is counted. */
    rc = sdw_op_linear(&x, &w, &b, &y, &e);
    size_t nrows;
    sdw_profile_rows(p, &nrows);
    tap_ok(!rc && nrows == 0, "ops run without a profile are not counted (%zu rows)", nrows);

    sdw_backend_profile(be, p);
    rc = sdw_op_linear(&x, &w, &b, &y, &e) || sdw_op_linear(&x, &w, &b, &y, &e) || sdw_op_linear(&x, &w, NULL, &y, &e);
    rc = rc || sdw_op_conv2d(&img, &k, NULL, (sdw_conv2d_geom){1, 1, 1}, &out, &e);
    rc = rc || sdw_op_scale(&big, 2.0f, &big, &e) || sdw_op_scale(&big, 2.0f, &big, &e) ||
         sdw_op_scale(&big, 2.0f, &big, &e);
    tap_ok(!rc, "ops run with a profile attached%s%s", rc ? ": " : "", rc ? e.msg : "");
    const sdw_profile_row *r = find(p, "linear 64x96 * 48x96 + bias");
    tap_ok(r && r->calls == 2 && r->flops == 2 * 2.0 * 64 * 48 * 96 && r->seconds > 0,
           "two calls of one linear share a row with their flops: %lld calls, %.0f flops", r ? (long long)r->calls : -1,
           r ? r->flops : -1);
    r = find(p, "linear 64x96 * 48x96");
    tap_ok(r && r->calls == 1, "the same product without a bias has its own row");
    r = find(p, "conv2d 2x8x16x16 * 8x8x3x3 stride 1");
    tap_ok(r && r->calls == 1 && r->flops == 2.0 * 2 * 8 * 16 * 16 * 8 * 9, "conv2d's row counts 2*b*o*oh*ow*c*kh*kw");
    r = find(p, "scale 1048576");
    tap_ok(r && r->calls == 3 && r->flops == 0, "an elementwise op has no flops");
    sdw_profile_rows(p, &nrows);
    const sdw_profile_row *rows = sdw_profile_rows(p, &nrows);
    int sorted = nrows == 4;
    for (size_t i = 1; i < nrows; i++)
        sorted = sorted && rows[i - 1].seconds >= rows[i].seconds;
    tap_ok(sorted, "four rows, most time first");

    rc = sdw_graph_begin(be, &e);
    tap_ok(rc == SDW_EUNSUPPORTED && strstr(e.msg, "profile"), "recording a graph is refused while profiling: %s",
           e.msg);

    rc = sdw_op_linear(&x, &w, &b, &y, &e) ? 1 : sdw_op_scale(&x, 1.0f, &y, &e);
    tap_ok(rc == SDW_EINVAL, "an op that fails its shape check is refused as before");
    r = find(p, "scale 6144");
    tap_ok(!r, "and is not counted");

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    sdw_profile_print(p, f, 2);
    fclose(f);
    tap_ok(text && strstr(text, "profile: 8 ops") && strstr(text, "(2 more rows)") && strstr(text, "by op:") &&
               strstr(text, "GFLOP/s"),
           "the printed table: a header, two rows, the rest counted, totals per op");
    /* Per op: linear has four calls over two rows (the last one ran before
     * the failed scale). */
    long long lin = 0;
    const char *by = text ? strstr(text, "by op:") : NULL, *l = by ? strstr(by, "  linear\n") : NULL;
    while (l && l > by && l[-1] != '\n')
        l--;
    if (l)
        sscanf(l, "%*f%% %*f %lld", &lin);
    tap_ok(lin == 4, "by op: linear sums its rows' calls (%lld of 4)", lin);
    free(text);

    sdw_backend_profile(be, NULL);
    sdw_op_scale(&big, 2.0f, &big, &e);
    r = find(p, "scale 1048576");
    tap_ok(r && r->calls == 3, "detached: nothing more is counted");

    sdw_tensor_free(&x), sdw_tensor_free(&w), sdw_tensor_free(&b), sdw_tensor_free(&y);
    sdw_tensor_free(&img), sdw_tensor_free(&k), sdw_tensor_free(&out), sdw_tensor_free(&big);
    free(h);
    sdw_profile_free(p);
    sdw_backend_destroy(be);
    return tap_done();
}
