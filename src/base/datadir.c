#include "base/datadir.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Whether the running executable lies under the build directory; both sides
 * are resolved, since configure records the directory as `pwd` spelt it. */
static bool run_from_build_tree(void)
{
    char exe[PATH_MAX], top[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k <= 0 || !realpath(SDW_BUILDDIR, top))
        return false;
    exe[k] = '\0';
    size_t n = strlen(top);
    return strncmp(exe, top, n) == 0 && (exe[n] == '/' || (n == 1 && top[0] == '/'));
}

static bool join(char *path, size_t n, const char *dir, const char *name)
{
    int k = snprintf(path, n, "%s/%s", dir, name);
    return k > 0 && (size_t)k < n;
}

int sdw_data_path(const char *name, char *path, size_t n, sdw_error *e)
{
    const char *env = getenv("SDW_DATA_DIR");
    if (env && *env) {
        if (join(path, n, env, name) && access(path, R_OK) == 0)
            return 0;
        return sdw_fail(e, SDW_ENOTFOUND, "%s/%s: not readable (from SDW_DATA_DIR)", env, name);
    }
    char tried[384] = "";
    if (run_from_build_tree()) {
        if (join(path, n, SDW_SRCDIR "/data", name) && access(path, R_OK) == 0)
            return 0;
        snprintf(tried, sizeof tried, "%s/data (the source tree), ", SDW_SRCDIR);
    }
    if (join(path, n, SDW_DATADIR, name) && access(path, R_OK) == 0)
        return 0;
    return sdw_fail(e, SDW_ENOTFOUND, "%s not found in %s%s (installed); set SDW_DATA_DIR to the folder that holds it",
                    name, tried, SDW_DATADIR);
}
