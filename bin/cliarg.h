/* Command-line values shared by the binaries that take them (ds-train, ds-lrrt). */
#ifndef DS_BIN_CLIARG_H
#define DS_BIN_CLIARG_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>

/* --seed: 0 to 2^64-1, as a config's "seed" (strtoull alone would take "-1" as 2^64-1).
 * 0, or -1 when s is not such a number (the caller says so). */
int cliarg_seed(const char *s, uint64_t *out);
#define CLIARG_SEED_EXPECTED "an integer from 0 to 18446744073709551615"

/* SIGBUS (a memory-mapped data file truncated while it is read) ends the program with a
 * message saying so, exit status 1, instead of a bare "Bus error". prog: "ds-train", ... */
void cliarg_sigbus_message(const char *prog);

/* bar[CLIARG_BAR + 1]: a progress bar of done out of total ("=====>    ") for a progress line */
#define CLIARG_BAR 30
void cliarg_bar(char *bar, int64_t done, int64_t total);

/* What went wrong where getopt_long returned '?' or ':' (opterr 0) on word, argv[optind - 1]:
 * "option --quiet takes no value" (--quiet=3), "option --config needs a value", "option --sa is
 * ambiguous (--save, --save-weights, --save_interval)", or "unknown option --x" / "-x" (short:
 * optopt). Into msg[size]. */
void cliarg_bad_option(const struct option *opts, const char *word, int optopt, char *msg, size_t size);

#endif
