/* Replays the committed fuzz corpus through the fuzz entry point without
 * libFuzzer. Files named ok-* must parse, bad-* must be rejected; any other
 * file (a saved libFuzzer finding) only has to come through without a crash,
 * which the sanitizer-free build still catches as a failed test when it
 * faults. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tap.h"
#include "fuzz_safetensors.h"

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The corpus directory: argv[1], else under $srcdir (set by automake's test
 * harness), else relative to the current directory. */
int main(int argc, char **argv)
{
    char dirbuf[4096];
    const char *srcdir = getenv("srcdir");
    snprintf(dirbuf, sizeof dirbuf, "%s/tests/fuzz/corpus/safetensors", srcdir ? srcdir : ".");
    const char *dir = argc > 1 ? argv[1] : dirbuf;
    DIR *d = opendir(dir);
    if (!tap_ok(d != NULL, "open corpus %s", dir))
        return tap_done();
    char *names[4096];
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 4096)
        if (de->d_name[0] != '.')
            names[n++] = strdup(de->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, name_cmp);
    tap_ok(n >= 10, "corpus has %zu files", n);
    for (size_t i = 0; i < n; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%.4000s/%.4000s", dir, names[i]);
        FILE *fp = fopen(path, "rb");
        uint8_t *buf = NULL;
        long len = -1;
        if (fp && fseek(fp, 0, SEEK_END) == 0 && (len = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0) {
            buf = malloc(len ? (size_t)len : 1);
            if (buf && fread(buf, 1, (size_t)len, fp) != (size_t)len)
                len = -1;
        }
        if (fp)
            fclose(fp);
        if (!tap_ok(buf && len >= 0, "read %s", names[i])) {
            free(buf);
            continue;
        }
        int rc = fuzz_safetensors_one(buf, (size_t)len);
        if (strncmp(names[i], "ok-", 3) == 0)
            tap_ok(rc == 0, "%s parses (rc %d)", names[i], rc);
        else if (strncmp(names[i], "bad-", 4) == 0)
            tap_ok(rc < 0, "%s is rejected (rc %d)", names[i], rc);
        else
            tap_ok(1, "%s runs (rc %d)", names[i], rc);
        free(buf);
        free(names[i]);
    }
    return tap_done();
}
