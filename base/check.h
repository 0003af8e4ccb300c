// KVLAB_CHECK: invariants that only a bug can break. Aborts with file and line; never used for
// user input (that is a Status, see base/status.h).
#pragma once

#include <cstdio>
#include <cstdlib>

#define KVLAB_CHECK(cond)                                                            \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: KVLAB_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)
