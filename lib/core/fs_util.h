/* Internal file-system helpers shared by the checkpoint writer and the monitors. */
#ifndef DS_FS_UTIL_H
#define DS_FS_UTIL_H

#include "ds/status.h"

/* mkdir -p: dir and its missing parents (0755); an error names the part that could not be made,
 * or dir when it exists but is not a directory. */
ds_status ds_mkdir_p(const char *dir, ds_error *err);

#endif
