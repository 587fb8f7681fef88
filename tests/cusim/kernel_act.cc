// kernels/act.cu built as host C++ for the simulator. cusim.h comes first so
// that its qualifiers are in place before the toolkit's headers see them.
#include "cusim.h"

#include "act.cu"
