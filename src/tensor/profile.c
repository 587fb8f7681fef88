#include "tensor/profile.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/vec.h"

struct sdw_profile {
    SDW_VEC(sdw_profile_row) rows;
    int sorted;
};

int sdw_profile_new(sdw_profile **p, sdw_error *e)
{
    if (!(*p = calloc(1, sizeof **p)))
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    return SDW_OK;
}

void sdw_profile_free(sdw_profile *p)
{
    if (p)
        sdw_vec_free(&p->rows);
    free(p);
}

void sdw_backend_profile(sdw_backend *be, sdw_profile *p)
{
    be->prof = p;
}

static int wait_for(sdw_backend *be, sdw_error *e)
{
    return be->ops->sync ? be->ops->sync(be, e) : SDW_OK;
}

int sdw_profile_enter(sdw_backend *be, double *t0, sdw_error *e)
{
    int rc = wait_for(be, e);
    *t0 = sdw_now_s();
    return rc;
}

/* The row for `what`, made when new; NULL when out of memory (the op's time
 * is then lost, not the op). */
static sdw_profile_row *row_for(sdw_profile *p, const char *what)
{
    for (size_t i = 0; i < p->rows.n; i++)
        if (!strcmp(p->rows.v[i].what, what))
            return &p->rows.v[i];
    if (sdw_vec_push(&p->rows, (sdw_profile_row){0}, NULL))
        return NULL;
    sdw_profile_row *r = &p->rows.v[p->rows.n - 1];
    snprintf(r->what, sizeof r->what, "%s", what);
    return r;
}

int sdw_profile_leave(sdw_backend *be, double t0, int rc, double flops, sdw_error *e, const char *fmt, ...)
{
    if (!rc)
        rc = wait_for(be, e);
    if (rc)
        return rc;
    double dt = sdw_now_s() - t0;
    char what[sizeof ((sdw_profile_row *)0)->what];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    sdw_profile_row *r = row_for(be->prof, what);
    if (r) {
        r->calls++;
        r->seconds += dt;
        r->flops += flops;
        be->prof->sorted = 0;
    }
    return SDW_OK;
}

static int by_time(const void *a, const void *b)
{
    double x = ((const sdw_profile_row *)a)->seconds, y = ((const sdw_profile_row *)b)->seconds;
    return x < y ? 1 : x > y ? -1 : 0;
}

const sdw_profile_row *sdw_profile_rows(sdw_profile *p, size_t *n)
{
    if (!p->sorted && p->rows.n)
        qsort(p->rows.v, p->rows.n, sizeof *p->rows.v, by_time);
    p->sorted = 1;
    *n = p->rows.n;
    return p->rows.v;
}

static void print_row(FILE *f, double total, double s, int64_t calls, double flops, const char *what)
{
    fprintf(f, "%6.1f%% %10.2f %7lld %9.3f ", total > 0 ? 100.0 * s / total : 0.0, s * 1e3, (long long)calls,
            calls ? s * 1e3 / (double)calls : 0.0);
    if (flops > 0 && s > 0)
        fprintf(f, "%9.0f", flops / s * 1e-9);
    else
        fprintf(f, "%9s", "");
    fprintf(f, "  %s\n", what);
}

void sdw_profile_print(sdw_profile *p, FILE *f, int most)
{
    size_t n;
    const sdw_profile_row *r = sdw_profile_rows(p, &n);
    double total = 0;
    int64_t calls = 0;
    for (size_t i = 0; i < n; i++)
        total += r[i].seconds, calls += r[i].calls;
    fprintf(f, "profile: %lld ops, %.3f s, each op timed alone (waits before and after it)\n",
            (long long)calls, total);
    fprintf(f, "%7s %10s %7s %9s %9s  %s\n", "share", "total ms", "calls", "mean ms", "GFLOP/s", "op and shapes");
    for (size_t i = 0; i < n && (int64_t)i < most; i++)
        print_row(f, total, r[i].seconds, r[i].calls, r[i].flops, r[i].what);
    if (n > (size_t)most)
        fprintf(f, "(%zu more rows)\n", n - (size_t)most);
    /* Totals per op (a row's op is its text up to the first space), most
     * time first. */
    sdw_profile_row *ops = calloc(n ? n : 1, sizeof *ops);
    size_t nops = 0;
    for (size_t i = 0; ops && i < n; i++) {
        char op[sizeof r->what];
        snprintf(op, sizeof op, "%.*s", (int)strcspn(r[i].what, " "), r[i].what);
        size_t k = 0;
        while (k < nops && strcmp(ops[k].what, op))
            k++;
        if (k == nops)
            memcpy(ops[nops++].what, op, sizeof op);
        ops[k].calls += r[i].calls;
        ops[k].seconds += r[i].seconds;
        ops[k].flops += r[i].flops;
    }
    if (ops) {
        qsort(ops, nops, sizeof *ops, by_time);
        fprintf(f, "by op:\n");
        for (size_t k = 0; k < nops; k++)
            print_row(f, total, ops[k].seconds, ops[k].calls, ops[k].flops, ops[k].what);
    }
    free(ops);
}
