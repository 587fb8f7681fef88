#include "runner/loras.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    char name[SDW_CONFIG_NAME_MAX];
    char path[SDW_CONFIG_PATH_MAX];
    sdw_lora *lora;      /* NULL: not cached */
    unsigned long used;  /* the use counter when last asked for */
} entry;

struct sdw_loras {
    entry v[SDW_CONFIG_MAX_LORAS];
    int n;
    size_t cap_bytes, bytes;
    unsigned long clock;
};

static int find(const sdw_loras *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->v[i].name, name))
            return i;
    return -1;
}

static int add(sdw_loras *s, const char *name, const char *path, sdw_error *e)
{
    if (find(s, name) >= 0)
        return SDW_OK;
    if (s->n == SDW_CONFIG_MAX_LORAS)
        return sdw_fail(e, SDW_EINVAL, "more than %d LoRAs configured", SDW_CONFIG_MAX_LORAS);
    entry *x = &s->v[s->n++];
    snprintf(x->name, sizeof x->name, "%s", name);
    snprintf(x->path, sizeof x->path, "%s", path);
    return SDW_OK;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* <stem>.safetensors files of dir, in name order so that the table is stable. */
static int scan_dir(sdw_loras *s, const char *dir, sdw_error *e)
{
    DIR *d = opendir(dir);
    if (!d)
        return sdw_fail(e, SDW_EIO, "lora_dir %s: %s", dir, strerror(errno));
    char *names[SDW_CONFIG_MAX_LORAS * 2];
    int n = 0, rc = SDW_OK;
    struct dirent *de;
    while (!rc && (de = readdir(d))) {
        size_t len = strlen(de->d_name), sfx = strlen(".safetensors");
        if (len <= sfx || strcmp(de->d_name + len - sfx, ".safetensors") || de->d_name[0] == '.')
            continue;
        if (n == (int)(sizeof names / sizeof names[0]))
            rc = sdw_fail(e, SDW_EINVAL, "lora_dir %s: more than %d LoRA files", dir, SDW_CONFIG_MAX_LORAS);
        else if (!(names[n++] = strdup(de->d_name)))
            rc = sdw_fail(e, SDW_ENOMEM, "out of memory");
    }
    closedir(d);
    if (!rc)
        qsort(names, (size_t)n, sizeof *names, by_name);
    for (int i = 0; i < n; i++) {
        char stem[SDW_CONFIG_NAME_MAX], path[SDW_CONFIG_PATH_MAX];
        size_t sl = strlen(names[i]) - strlen(".safetensors");
        int ok = 1;
        for (size_t k = 0; k < sl; k++)
            if (!(names[i][k] >= 'a' && names[i][k] <= 'z') && !(names[i][k] >= 'A' && names[i][k] <= 'Z') &&
                !(names[i][k] >= '0' && names[i][k] <= '9') && !strchr("._-", names[i][k]))
                ok = 0;
        /* A file no request could name is left out, not an error. */
        if (!rc && ok && sl < sizeof stem &&
            (size_t)snprintf(path, sizeof path, "%s/%s", dir, names[i]) < sizeof path) {
            memcpy(stem, names[i], sl), stem[sl] = 0;
            rc = add(s, stem, path, e);
        }
        free(names[i]);
    }
    return rc;
}

int sdw_loras_open(sdw_loras **out, const sdw_config *cfg, sdw_error *e)
{
    sdw_loras *s = calloc(1, sizeof *s);
    if (!s)
        return sdw_fail(e, SDW_ENOMEM, "out of memory");
    s->cap_bytes = cfg->lora_cache_bytes;
    int rc = SDW_OK;
    for (int i = 0; !rc && i < cfg->n_loras; i++)
        rc = add(s, cfg->loras[i].name, cfg->loras[i].path, e);
    if (!rc && cfg->lora_dir[0])
        rc = scan_dir(s, cfg->lora_dir, e);
    if (rc) {
        free(s);
        return rc;
    }
    *out = s;
    return SDW_OK;
}

static void drop(sdw_loras *s, entry *x)
{
    if (!x->lora)
        return;
    s->bytes -= sdw_lora_bytes(x->lora);
    sdw_lora_free(x->lora);
    x->lora = NULL;
}

void sdw_loras_free(sdw_loras *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n; i++)
        drop(s, &s->v[i]);
    free(s);
}

int sdw_loras_count(const sdw_loras *s)
{
    return s->n;
}

const char *sdw_loras_name(const sdw_loras *s, int i)
{
    return s->v[i].name;
}

size_t sdw_loras_cached_bytes(const sdw_loras *s)
{
    return s->bytes;
}

int sdw_loras_get(sdw_loras *s, const char *const *names, int n, const sdw_lora **out, sdw_error *e)
{
    unsigned long now = ++s->clock;
    for (int i = 0; i < n; i++) {
        int k = find(s, names[i]);
        if (k < 0)
            return sdw_fail(e, SDW_ENOTFOUND, "no LoRA named %s is configured", names[i]);
        entry *x = &s->v[k];
        if (x->lora && sdw_lora_changed(x->lora))
            drop(s, x);
        if (!x->lora) {
            int rc = sdw_lora_open(&x->lora, x->path, e);
            if (rc)
                return rc;
            s->bytes += sdw_lora_bytes(x->lora);
        }
        x->used = now;
        out[i] = x->lora;
    }
    /* Over the bound: out go the least recently used, never this job's. */
    while (s->bytes > s->cap_bytes) {
        entry *old = NULL;
        for (int i = 0; i < s->n; i++)
            if (s->v[i].lora && s->v[i].used != now && (!old || s->v[i].used < old->used))
                old = &s->v[i];
        if (!old)
            break;
        drop(s, old);
    }
    return SDW_OK;
}
