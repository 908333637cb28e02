#include "cliarg.h"

#include <errno.h>
#include <stdlib.h>

int cliarg_seed(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s || *s < '0' || *s > '9')
        return -1;
    *out = v;
    return 0;
}
