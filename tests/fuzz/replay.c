/* Replays kept fuzz inputs through a target, without libFuzzer (tests/fuzz.sh, `make check`):
 *   tests/fuzz_replay TARGET FILE|DIR...
 * Prints "TARGET: N inputs" and exits 0; an input that crashes a reader or breaks a promise
 * aborts (its name printed first), so the run fails. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int run_file(int (*run)(const uint8_t *, size_t), const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            unsigned char *nb = realloc(buf, cap *= 2);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    int bad = ferror(f) || !buf;
    fclose(f);
    if (bad) {
        fprintf(stderr, "%s: could not read\n", path);
        free(buf);
        return -1;
    }
    fprintf(stderr, "%s\n", path); /* named before it runs, in case it crashes */
    run(buf, n);
    free(buf);
    return 1;
}

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TARGET FILE|DIR...\n", argv[0]);
        return 2;
    }
    int (*run)(const uint8_t *, size_t) = NULL;
    for (const ds_fuzz_target *t = ds_fuzz_targets; t->name; t++)
        if (!strcmp(t->name, argv[1]))
            run = t->run;
    if (!run) {
        fprintf(stderr, "%s: no target \"%s\" (expected one of:", argv[0], argv[1]);
        for (const ds_fuzz_target *t = ds_fuzz_targets; t->name; t++)
            fprintf(stderr, " %s", t->name);
        fprintf(stderr, ")\n");
        return 2;
    }
    long count = 0;
    for (int a = 2; a < argc; a++) {
        struct stat sb;
        if (stat(argv[a], &sb) != 0) {
            perror(argv[a]);
            return 1;
        }
        if (!S_ISDIR(sb.st_mode)) {
            if (run_file(run, argv[a]) < 0)
                return 1;
            count++;
            continue;
        }
        DIR *dir = opendir(argv[a]);
        if (!dir) {
            perror(argv[a]);
            return 1;
        }
        char **names = NULL;
        size_t nn = 0;
        struct dirent *e;
        while ((e = readdir(dir))) {
            if (e->d_name[0] == '.')
                continue;
            char **nv = realloc(names, (nn + 1) * sizeof *names);
            if (!nv || !(nv[nn] = malloc(strlen(argv[a]) + strlen(e->d_name) + 2))) {
                fprintf(stderr, "out of memory\n");
                return 1;
            }
            names = nv;
            sprintf(names[nn++], "%s/%s", argv[a], e->d_name);
        }
        closedir(dir);
        qsort(names, nn, sizeof *names, cmp);
        for (size_t i = 0; i < nn; i++) {
            if (run_file(run, names[i]) < 0)
                return 1;
            count++;
            free(names[i]);
        }
        free(names);
    }
    printf("%s: %ld inputs\n", argv[1], count);
    return 0;
}
