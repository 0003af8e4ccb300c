// kvlab's engine-facing interface in one include (docs/api.md). `cmake --install` puts this file
// at <prefix>/include/kvlab/kvlab.h, `#include <kvlab/kvlab.h>`, with every header it includes,
// transitively, in the repository's folders (cmake/kvlab_install.cmake):
//
//   base/status.h          Status / StatusOr<T>: how every call that can fail reports it
//   model/model.h          Model::load (GGUF, llama2.c), Model::forward over sequence slots,
//                          Model::make_cache; the model's Tokenizer and ModelConfig
//   kvcache/kv_cache.h     KvCache: lengths, crop, reset, save / restore, memory()
//   kvcache/policy_spec.h  policy specs ("kivi:bits=4", "L0-14=kivi:bits=2;L15-29=full:dtype=f16")
//   kvcache/registry.h     the registered policies and their parameters
//   kvcache/memory.h       MemoryReport: the bytes a cache holds, by kind
#pragma once

#include "base/status.h"
#include "kvcache/kv_cache.h"
#include "kvcache/memory.h"
#include "kvcache/policy_spec.h"
#include "kvcache/registry.h"
#include "model/model.h"
