#include "pool/metrics.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The codes a submission can be refused with; whatever else comes (a code
 * added later and not listed here) counts as "other", the last. */
static const char *const reject_codes[] = {
    SDW_API_INVALID_JSON,        SDW_API_INVALID_REQUEST,        SDW_API_INVALID_VALUE,
    SDW_API_INVALID_INIT_IMAGE,  SDW_API_INVALID_MASK_IMAGE,     SDW_API_UNSUPPORTED_OPERATION,
    SDW_API_UNKNOWN_OPERATION,   SDW_API_UNSUPPORTED_FEATURE,    SDW_API_UNKNOWN_MODEL,
    SDW_API_PAYLOAD_TOO_LARGE,   SDW_API_UNSUPPORTED_MEDIA_TYPE, SDW_API_QUEUE_FULL,
    SDW_API_ENGINE_UNAVAILABLE,  SDW_API_UNAUTHORIZED,           SDW_API_RATE_LIMITED,
    SDW_API_TOO_MANY_QUEUED,     SDW_API_INTERNAL,               SDW_API_UNKNOWN_LORA,
    SDW_API_LORA_MISMATCH,       "other",
};
#define N_REJECT_CODES (sizeof reject_codes / sizeof reject_codes[0])
_Static_assert(N_REJECT_CODES <= SDW_POOL_REJECT_CODES, "SDW_POOL_REJECT_CODES is too small");

static const char *const image_names[SDW_POOL_IMAGES] = { "init_image", "mask_image" };

static const sdw_operation operations[] = { SDW_OPERATION_GENERATE, SDW_OPERATION_TRANSFORM,
                                            SDW_OPERATION_INPAINT };

const char *sdw_metrics_api_name(sdw_metrics_api api)
{
    static const char *const n[SDW_METRICS_APIS] = { "rbee" };
    return (unsigned)api < SDW_METRICS_APIS ? n[api] : "unknown";
}

void sdw_metrics_count_rejection(sdw_pool_counters *c, sdw_metrics_api api, const char *code, bool decoded)
{
    if ((unsigned)api >= SDW_METRICS_APIS)
        return;
    size_t k = 0;
    while (k < N_REJECT_CODES - 1 && strcmp(reject_codes[k], code ? code : "") != 0)
        k++;
    __atomic_fetch_add(&c->rejected[api][k], 1, __ATOMIC_RELAXED);
    int image = !decoded ? -1
                : strcmp(code, SDW_API_INVALID_INIT_IMAGE) == 0 ? 0
                : strcmp(code, SDW_API_INVALID_MASK_IMAGE) == 0 ? 1 : -1;
    if (image >= 0)
        __atomic_fetch_add(&c->image_rejected[api][image], 1, __ATOMIC_RELAXED);
}

/* A label value as the exposition format escapes it: \\, \" and \n. */
static void escape_value(const char *s, char *out, size_t n)
{
    size_t k = 0;
    for (; *s && k + 2 < n; s++) {
        if (*s == '\\' || *s == '"' || *s == '\n') {
            out[k++] = '\\';
            out[k++] = *s == '\n' ? 'n' : *s;
        } else {
            out[k++] = *s;
        }
    }
    out[k] = '\0';
}

int sdw_metrics_job_labels(const char *model, sdw_operation op, sdw_metrics_api api, char *buf, size_t n,
                           sdw_error *e)
{
    char m[2 * SDW_ID_FIELD_MAX + 1];
    escape_value(model, m, sizeof m);
    int k = snprintf(buf, n, "model=\"%s\",operation=\"%s\",api=\"%s\"", m, sdw_operation_name(op),
                     sdw_metrics_api_name(api));
    if (k < 0 || (size_t)k >= n)
        return sdw_fail(e, SDW_ETOOBIG, "the metric labels of model \"%s\" take more than %zu bytes", model, n - 1);
    return 0;
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The label sets to show: every one the ring has counted, then, at zero,
 * each configured model, operation and API it has not, so that rate() and
 * increase() have a series from the first scrape on. */
static int label_sets(const sdw_config *cfg, const sdw_ring_metrics *m, char (**out)[SDW_RING_LABELS_MAX],
                      int *n_out)
{
    int max = (int)m->n_sets + cfg->n_models * 3 * SDW_METRICS_APIS;
    char (*sets)[SDW_RING_LABELS_MAX] = calloc((size_t)(max ? max : 1), sizeof *sets);
    if (!sets)
        return SDW_ENOMEM;
    int n = 0;
    for (unsigned i = 0; i < m->n_sets; i++)
        memcpy(sets[n++], m->set[i].labels, SDW_RING_LABELS_MAX);
    for (int i = 0; i < cfg->n_models; i++)
        for (int o = 0; o < 3; o++)
            for (int a = 0; a < SDW_METRICS_APIS; a++) {
                char l[SDW_RING_LABELS_MAX];
                if (sdw_metrics_job_labels(cfg->models[i].name, operations[o], (sdw_metrics_api)a, l, sizeof l,
                                           NULL) < 0)
                    continue;
                bool known = false;
                for (unsigned k = 0; k < m->n_sets && !known; k++)
                    known = strcmp(m->set[k].labels, l) == 0;
                if (!known)
                    memcpy(sets[n++], l, sizeof l);
            }
    *out = sets;
    *n_out = n;
    return 0;
}

static void job_counter(FILE *f, const char *name, const char *help, const sdw_ring_metrics *m,
                        char (*sets)[SDW_RING_LABELS_MAX], int n, size_t field)
{
    family(f, name, "counter", help);
    for (int i = 0; i < n; i++) {
        uint64_t v = 0;
        if ((unsigned)i < m->n_sets)
            memcpy(&v, (const char *)&m->set[i] + field, sizeof v);
        fprintf(f, "%s{%s} %" PRIu64 "\n", name, sets[i], v);
    }
}

static void histogram(FILE *f, const char *name, const char *help, const sdw_ring_hist *h)
{
    family(f, name, "histogram", help);
    uint64_t cum = 0;
    for (int b = 0; b < SDW_RING_HIST_BOUNDS; b++) {
        cum += h->bucket[b];
        fprintf(f, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, h->bounds[b], cum);
    }
    cum += h->bucket[SDW_RING_HIST_BOUNDS];
    fprintf(f, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %.6f\n%s_count %" PRIu64 "\n", name, cum, name,
            h->sum_s, name, cum);
}

static void write_page(FILE *f, const sdw_config *cfg, sdw_ring *ring, const sdw_board *board,
                       const sdw_ring_metrics *m, char (*sets)[SDW_RING_LABELS_MAX], int n)
{
    job_counter(f, "sdworker_jobs_submitted_total", "Jobs accepted into the queue.", m, sets, n,
                offsetof(sdw_ring_label_counts, submitted));
    job_counter(f, "sdworker_jobs_completed_total", "Jobs that finished with an image.", m, sets, n,
                offsetof(sdw_ring_label_counts, completed));
    job_counter(f, "sdworker_jobs_cancelled_total", "Jobs cancelled by their client.", m, sets, n,
                offsetof(sdw_ring_label_counts, cancelled));

    family(f, "sdworker_jobs_failed_total", "counter", "Jobs that ended with an error event, by its code.");
    for (unsigned i = 0; i < m->n_failures; i++) {
        char code[2 * SDW_RING_CODE_MAX];
        escape_value(m->failure[i].code, code, sizeof code);
        fprintf(f, "sdworker_jobs_failed_total{%s,code=\"%s\"} %" PRIu64 "\n", sets[m->failure[i].set], code,
                m->failure[i].count);
    }
    for (unsigned i = 0; i < m->n_sets; i++)
        if (m->set[i].failed_other)
            fprintf(f, "sdworker_jobs_failed_total{%s,code=\"other\"} %" PRIu64 "\n", sets[i],
                    m->set[i].failed_other);

    family(f, "sdworker_jobs_unlabelled_total", "counter",
           "Jobs submitted beyond the ring's table of label sets, counted in no labelled series.");
    fprintf(f, "sdworker_jobs_unlabelled_total %" PRIu64 "\n", m->unlabelled);

    const sdw_pool_counters *c = &board->counters;
    family(f, "sdworker_jobs_rejected_total", "counter", "Submissions refused before a job existed, by error code.");
    for (int a = 0; a < SDW_METRICS_APIS; a++)
        for (size_t k = 0; k < N_REJECT_CODES; k++)
            fprintf(f, "sdworker_jobs_rejected_total{api=\"%s\",code=\"%s\"} %" PRIu64 "\n",
                    sdw_metrics_api_name((sdw_metrics_api)a), reject_codes[k],
                    __atomic_load_n(&c->rejected[a][k], __ATOMIC_RELAXED));
    family(f, "sdworker_image_decode_rejections_total", "counter",
           "Submissions refused because an init or mask image did not decode within the limits.");
    for (int a = 0; a < SDW_METRICS_APIS; a++)
        for (int k = 0; k < SDW_POOL_IMAGES; k++)
            fprintf(f, "sdworker_image_decode_rejections_total{api=\"%s\",image=\"%s\"} %" PRIu64 "\n",
                    sdw_metrics_api_name((sdw_metrics_api)a), image_names[k],
                    __atomic_load_n(&c->image_rejected[a][k], __ATOMIC_RELAXED));

    /* One engine serves one ring: the ring's name tells workers apart. */
    char worker[2 * sizeof cfg->ring_name];
    escape_value(cfg->ring_name[0] == '/' ? cfg->ring_name + 1 : cfg->ring_name, worker, sizeof worker);
    sdw_engine_info info;
    sdw_error e = { 0 };
    if (sdw_ring_engine_status(ring, &info, &e) == 0) {
        family(f, "sdworker_queue_depth", "gauge", "Jobs waiting in the queue.");
        fprintf(f, "sdworker_queue_depth{worker=\"%s\"} %u\n", worker, info.queued);
        family(f, "sdworker_jobs_running", "gauge", "Jobs the engine is running.");
        fprintf(f, "sdworker_jobs_running{worker=\"%s\"} %u\n", worker, info.running);
        family(f, "sdworker_engine_ready", "gauge", "1 when the engine is ready for work, else 0.");
        fprintf(f, "sdworker_engine_ready{worker=\"%s\"} %d\n", worker, info.state == SDW_ENGINE_READY);
    }
    family(f, "sdworker_engine_restarts_total", "counter", "New engines started after one died.");
    fprintf(f, "sdworker_engine_restarts_total{worker=\"%s\"} %" PRIu64 "\n", worker, m->engine_restarts);

    histogram(f, "sdworker_queue_wait_seconds", "Time from submission to the engine taking the job.",
              &m->hist[SDW_RING_HIST_QUEUE_WAIT]);
    histogram(f, "sdworker_job_duration_seconds", "Time from the engine taking a job to its end.",
              &m->hist[SDW_RING_HIST_JOB]);
    histogram(f, "sdworker_step_duration_seconds", "Time of one denoising step.", &m->hist[SDW_RING_HIST_STEP]);

    sdw_pool_stats st;
    sdw_board_stats(board, -1, &st);
    family(f, "sdworker_open_streams", "gauge", "Open event streams, over every pool process.");
    fprintf(f, "sdworker_open_streams %d\n", st.streams);
    family(f, "sdworker_pool_children", "gauge",
           "Pool processes: idle (spare, in accept), busy, retiring (finishing before they exit).");
    fprintf(f, "sdworker_pool_children{state=\"idle\"} %d\n", st.idle);
    fprintf(f, "sdworker_pool_children{state=\"busy\"} %d\n", st.active);
    fprintf(f, "sdworker_pool_children{state=\"retiring\"} %d\n", st.retiring);
}

int sdw_metrics_render(const sdw_config *cfg, sdw_ring *ring, const sdw_board *board, char **text, size_t *len,
                       sdw_error *e)
{
    *text = NULL;
    *len = 0;
    sdw_ring_metrics *m = malloc(sizeof *m);
    if (!m)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    sdw_ring_metrics_read(ring, m);
    char (*sets)[SDW_RING_LABELS_MAX];
    int n;
    if (label_sets(cfg, m, &sets, &n) < 0) {
        free(m);
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    }
    FILE *f = open_memstream(text, len);
    if (f) {
        write_page(f, cfg, ring, board, m, sets, n);
        if (ferror(f)) {
            fclose(f);
            free(*text);
            *text = NULL;
            f = NULL;
        } else {
            fclose(f);
        }
    }
    free(sets);
    free(m);
    return *text ? 0 : sdw_fail(e, SDW_ENOMEM, "out of memory");
}
