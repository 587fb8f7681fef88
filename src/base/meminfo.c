#include "base/meminfo.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* The value (in kB) after "key:" in a /proc file of such lines; -1 when absent. */
static long long proc_kb(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[256];
    size_t n = strlen(key);
    long long v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':' && sscanf(line + n + 1, "%lld", &v) == 1)
            break;
    fclose(f);
    return v;
}

static long long file_ll(const char *dir, const char *name)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char buf[64];
    long long v = -1;
    if (fgets(buf, sizeof buf, f) && sscanf(buf, "%lld", &v) != 1)
        v = -1; /* cgroup v2 writes "max" for no limit */
    fclose(f);
    return v;
}

/* "key value" in a cgroup memory.stat; -1 when absent. */
static long long stat_ll(const char *dir, const char *key)
{
    char path[4200], line[256];
    snprintf(path, sizeof path, "%s/memory.stat", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = strlen(key);
    long long v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ' ' && sscanf(line + n + 1, "%lld", &v) == 1)
            break;
    fclose(f);
    return v;
}

/* Room left under this process's cgroup memory limit, or -1 for none. A
 * container sees its own cgroup as the root of /sys/fs/cgroup, so the path
 * /proc/self/cgroup names may not exist: the mount's root is tried next. */
static long long cgroup_room(void)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return -1;
    char line[2048], dir[2100];
    long long room = -1;
    while (room < 0 && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *ctrl = strchr(line, ':'), *path = ctrl ? strchr(ctrl + 1, ':') : NULL;
        if (!path)
            continue;
        *path++ = 0;
        ctrl++;
        int v2 = !*ctrl;
        if (!v2 && strcmp(ctrl, "memory"))
            continue;
        const char *base = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory";
        const char *lim_f = v2 ? "memory.max" : "memory.limit_in_bytes";
        const char *use_f = v2 ? "memory.current" : "memory.usage_in_bytes";
        const char *inactive = v2 ? "inactive_file" : "total_inactive_file";
        for (int root = 0; root < 2 && room < 0; root++) {
            snprintf(dir, sizeof dir, "%s%s", base, root ? "" : path);
            long long lim = file_ll(dir, lim_f), use = file_ll(dir, use_f);
            /* v1 says "no limit" with a huge page-rounded number */
            if (lim <= 0 || use < 0 || lim >= (long long)1 << 60)
                continue;
            long long reclaim = stat_ll(dir, inactive);
            room = lim - use + (reclaim > 0 ? reclaim : 0);
            if (room < 0)
                room = 0;
        }
    }
    fclose(f);
    return room;
}

size_t sdw_meminfo_available(void)
{
    long long kb = proc_kb("/proc/meminfo", "MemAvailable");
    if (kb < 0)
        return 0;
    long long avail = kb * 1024, room = cgroup_room();
    if (room >= 0 && room < avail)
        avail = room;
    return (size_t)avail;
}

size_t sdw_meminfo_rss_anon(void)
{
    long long kb = proc_kb("/proc/self/status", "RssAnon");
    return kb < 0 ? 0 : (size_t)kb * 1024;
}
