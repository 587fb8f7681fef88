/* Replays the committed fuzz corpora through the fuzz entry points without
 * libFuzzer: tests/fuzz/corpus/NAME/ through target NAME. Files named ok-*
 * must be accepted, bad-* must be rejected; any other file (a saved
 * libFuzzer finding, or a coverage input) only has to come through without
 * a crash, which the sanitizer-free build still catches as a failed test
 * when it faults, and the --enable-sanitizers build on any memory error.
 *
 * Usage: fuzz_corpus [NAME [DIR]]: every target over its corpus under
 * $srcdir (set by automake's test harness, else the current directory), or
 * one target, over DIR when given. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tap.h"
#include "fuzz.h"

static const struct target {
    const char *name;
    int (*one)(const uint8_t *data, size_t size);
    size_t min_files;   /* a corpus that shrank by accident fails */
} targets[] = {
    { "safetensors", fuzz_safetensors_one, 10 },
    { "lora", fuzz_lora_one, 8 },
    { "contract", fuzz_contract_one, 10 },
    { "base64", fuzz_base64_one, 8 },
    { "image", fuzz_image_one, 8 },
    { "tokenizer", fuzz_tokenizer_one, 8 },
    { "tokenizer_hf", fuzz_tokenizer_hf_one, 4 },
    { "tokenizer_json", fuzz_tokenizer_json_one, 8 },
    { "config", fuzz_config_one, 8 },
    { "auth", fuzz_auth_one, 6 },
    { "http", fuzz_http_one, 8 },
};

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static uint8_t *read_all(const char *path, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    uint8_t *buf = NULL;
    long len = -1;
    if (fp && fseek(fp, 0, SEEK_END) == 0 && (len = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0) {
        buf = malloc(len ? (size_t)len : 1);
        if (buf && fread(buf, 1, (size_t)len, fp) != (size_t)len) {
            free(buf);
            buf = NULL;
        }
    }
    if (fp)
        fclose(fp);
    *size = buf ? (size_t)len : 0;
    return buf;
}

static void replay(const struct target *t, const char *dir)
{
    DIR *d = opendir(dir);
    if (!tap_ok(d != NULL, "%s: open corpus %s", t->name, dir))
        return;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **nn = realloc(names, cap * sizeof *names);
            if (!nn)
                break;
            names = nn;
        }
        names[n++] = strdup(de->d_name);
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, name_cmp);
    tap_ok(n >= t->min_files, "%s: corpus has %zu files", t->name, n);
    for (size_t i = 0; i < n; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%.4000s/%.4000s", dir, names[i]);
        size_t len;
        uint8_t *buf = read_all(path, &len);
        if (tap_ok(buf != NULL, "%s: read %s", t->name, names[i])) {
            int rc = t->one(buf, len);
            if (strncmp(names[i], "ok-", 3) == 0)
                tap_ok(rc == 0, "%s: %s is accepted (rc %d)", t->name, names[i], rc);
            else if (strncmp(names[i], "bad-", 4) == 0)
                tap_ok(rc < 0, "%s: %s is rejected (rc %d)", t->name, names[i], rc);
            else
                tap_ok(1, "%s: %s runs (rc %d)", t->name, names[i], rc);
        }
        free(buf);
        free(names[i]);
    }
    free(names);
}

int main(int argc, char **argv)
{
    const char *srcdir = getenv("srcdir");
    size_t ntargets = sizeof targets / sizeof *targets, ran = 0;
    for (size_t i = 0; i < ntargets; i++) {
        if (argc > 1 && strcmp(argv[1], targets[i].name) != 0)
            continue;
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/%s", srcdir ? srcdir : ".", targets[i].name);
        replay(&targets[i], argc > 2 ? argv[2] : dir);
        ran++;
    }
    if (argc > 1 && !ran)
        tap_ok(0, "no fuzz target called %s", argv[1]);
    return tap_done();
}
