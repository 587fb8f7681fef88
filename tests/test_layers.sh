#!/bin/sh
# The layering of src/ (doc/architecture.md, "Layers"): every #include of a
# header of ours names its folder, and a folder includes only its own
# headers and those of the folders the table below allows.
set -u
top=$(cd "${srcdir:-.}" && pwd)
exec python3 - "$top" <<'PY'
import os, re, sys
top = sys.argv[1]
allowed = {
    "base": set(),
    "image": {"base"}, "config": {"base"}, "ring": {"base"},
    "contract": {"image", "base"},
    "tensor": {"base"},
    "backend": {"tensor", "base"},
    "cpu": {"backend", "tensor", "base"},
    "cuda": {"backend", "tensor", "base", "kernels"},
    "model": {"tensor", "base"},
    "pipeline": {"model", "tensor", "image", "base"},
    "runner": {"pipeline", "backend", "contract", "ring", "config", "image", "base"},
    "pool": {"contract", "ring", "config", "image", "base"},
    "tools": None,  # the programs may include anything
}
# Headers outside src/ that sources include by bare name: the configure
# header, and within kernels/ each other.
bare_ok = {"sdw-build.h"}
src = os.path.join(top, "src")
checks = []
for folder in sorted(os.listdir(src)):
    path = os.path.join(src, folder)
    if not os.path.isdir(path):
        continue
    bad = []
    if folder not in allowed:
        bad.append("folder %s is not in the layer table" % folder)
    for name in sorted(os.listdir(path)):
        if not name.endswith((".c", ".h")):
            continue
        for n, line in enumerate(open(os.path.join(path, name), encoding="utf-8"), 1):
            m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
            if not m:
                continue
            inc = m.group(1)
            where = "src/%s/%s:%d: %s" % (folder, name, n, inc)
            if "/" not in inc:
                if inc not in bare_ok:
                    bad.append(where + " (name the folder)")
                continue
            dep = inc.split("/")[0]
            if dep == folder:
                continue
            if dep not in allowed and dep != "kernels":
                bad.append(where + " (no such layer)")
            elif allowed.get(folder) is not None and dep not in allowed[folder]:
                bad.append(where + " (%s may not include %s)" % (folder, dep))
    checks.append((folder, bad))
print("1..%d" % len(checks))
failed = 0
for i, (folder, bad) in enumerate(checks, 1):
    if bad:
        failed += 1
        print("not ok %d - src/%s includes only what its layer allows" % (i, folder))
        for b in bad:
            print("#   " + b)
    else:
        print("ok %d - src/%s includes only what its layer allows" % (i, folder))
sys.exit(1 if failed else 0)
PY
