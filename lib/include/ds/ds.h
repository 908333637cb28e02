/* libds: DeepSpeed's training engine as a C library. Include this header for everything. */
#ifndef DS_DS_H
#define DS_DS_H

#include "ds/status.h"
#include "ds/dtype.h"
#include "ds/rng.h"
#include "ds/tensor.h"
#include "ds/backend.h"
#include "ds/config.h"
#include "ds/net.h"
#include "ds/optim.h"
#include "ds/sched.h"
#include "ds/safetensors.h"
#include "ds/data.h"
#include "ds/engine.h"
#include "ds/launch.h"
#include "ds/dist.h"
#include "ds/prof.h"
#include "ds/ckpt.h"

#define DS_VERSION "0.1.0"

#endif
