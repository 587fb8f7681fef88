/* Where a program finds the data files that ship with sdworker (data/ in
 * the source tree, installed in pkgdatadir): today the CLIP vocabulary that
 * single-file checkpoints need.
 *
 * Search order, first hit wins:
 *   1. $SDW_DATA_DIR when set and not empty, and then only there: an
 *      explicit choice must not be overridden by a file found elsewhere.
 *   2. A program run from its build tree (/proc/self/exe lies under the
 *      directory configure ran in, SDW_BUILDDIR): the source tree's data/
 *      (SDW_SRCDIR/data), so an uninstalled build needs no environment,
 *      in-tree or out-of-tree, from whatever working directory.
 *   3. The installed pkgdatadir (SDW_DATADIR, from configure's --prefix).
 * The build-tree rule compares whole paths instead of probing ../data and
 * its parents, so an installed program never picks up a look-alike
 * directory next to it. */
#ifndef SDW_DATADIR_H
#define SDW_DATADIR_H

#include "base/err.h"

#include <stddef.h>

/* Writes the path of the data file `name` into path[0..n) and returns 0, or
 * returns SDW_ENOTFOUND with every place tried named in e. */
int sdw_data_path(const char *name, char *path, size_t n, sdw_error *e);

#endif
