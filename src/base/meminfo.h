/* What the host's memory allows: the bytes a process could still allocate
 * (the kernel's MemAvailable, or less where a cgroup limit is nearer) and
 * this process's anonymous resident memory, from /proc and /sys. The
 * engine sizes its biggest image with them (doc/architecture.md, "Memory
 * estimate"). */
#ifndef SDW_MEMINFO_H
#define SDW_MEMINFO_H

#include <stddef.h>

/* min(MemAvailable, cgroup limit - cgroup usage + its inactive file pages),
 * cgroup v2 or v1, in bytes; 0 when /proc/meminfo cannot be read. */
size_t sdw_meminfo_available(void);

/* This process's RssAnon (heap, anonymous maps: what it allocated, not the
 * files it maps), in bytes; 0 when unknown. */
size_t sdw_meminfo_rss_anon(void);

#endif
