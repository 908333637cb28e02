/* libFuzzer's entry for one target, chosen when compiled: -DDS_FUZZ_TARGET=\"config\"
 * (scripts/fuzz.sh). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#ifndef DS_FUZZ_TARGET
#error "compile with -DDS_FUZZ_TARGET=\"name\""
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int (*run)(const uint8_t *, size_t);
    if (!run) {
        for (const ds_fuzz_target *t = ds_fuzz_targets; t->name && !run; t++)
            if (!strcmp(t->name, DS_FUZZ_TARGET))
                run = t->run;
        if (!run) {
            fprintf(stderr, "no fuzz target %s\n", DS_FUZZ_TARGET);
            abort();
        }
    }
    return run(data, size);
}
