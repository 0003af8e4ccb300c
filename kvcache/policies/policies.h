// Registry entries of the policies: those built on the tiered token store (tiered_policy.h) and
// aquakv (aquakv_policy.cc) and xkv (xkv_policy.cc). One function per policy; kvcache/registry.cc
// lists them.
#pragma once

#include "kvcache/registry.h"

namespace kvlab {

PolicyInfo full_policy_info();       // full:dtype=f32|f16|bf16|fp8
PolicyInfo kivi_policy_info();       // kivi:bits=2|3|4|8,group=G,residual=R,sink=S,dtype=...
PolicyInfo quant_policy_info();      // quant:kbits=..,vbits=..,group=G,residual=R,dtype=...
PolicyInfo streaming_policy_info();  // streaming:sink=S,window=W,dtype=...
PolicyInfo aquakv_policy_info();     // aquakv:bits=2|3|4|inf,calib=FILE,predictors=on|off,prefix=P,buffer=B,...
PolicyInfo xkv_policy_info();            // xkv:group=G,rank_k=RK,rank_v=RV,short_group=on|off,min_tokens=N,dtype=...
PolicyInfo dynsparse_policy_info();      // dynsparse:keep=,layer=K,decider=random|knorm,seed=,base=[SPEC]
PolicyInfo evict_policy_info();          // evict:keep=,layer=K,score=h2o|tova|recent,recent=,dtype=
PolicyInfo lighttransfer_policy_info();  // lighttransfer:rule=ratio|threshold|...,rho=,tau=,sink=,window=,base=[SPEC]

}  // namespace kvlab
