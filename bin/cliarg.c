#include "cliarg.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* the message, written by the handler with write(2) (async-signal-safe); set once at startup */
static char sigbus_text[512];
static size_t sigbus_len;

static void on_sigbus(int sig)
{
    (void)sig;
    ssize_t w = write(2, sigbus_text, sigbus_len);
    (void)w;
    _exit(1);
}

void cliarg_sigbus_message(const char *prog)
{
    int n = snprintf(sigbus_text, sizeof sigbus_text,
                     "%s: bus error reading a memory-mapped file: a --data file (or a checkpoint being read) was "
                     "truncated or replaced while %s used it; stopped (the checkpoints already saved are intact)\n",
                     prog, prog);
    sigbus_len = n > 0 && (size_t)n < sizeof sigbus_text ? (size_t)n : sizeof sigbus_text - 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigbus;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
}

void cliarg_bar(char *bar, int64_t done, int64_t total)
{
    const int filled = total > 0 ? (int)((double)CLIARG_BAR * (double)done / (double)total) : 0;
    for (int i = 0; i < CLIARG_BAR; i++)
        bar[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
    bar[CLIARG_BAR] = '\0';
}

/* Edit distance of a[0..na) and b[0..nb) counting a swap of neighbours as one edit (--stpes is
 * one from --steps), both under 64 characters (else 99) */
static int edit_distance(const char *a, size_t na, const char *b, size_t nb)
{
    if (na >= 64 || nb >= 64)
        return 99;
    int d[65][65];
    for (size_t i = 0; i <= na; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= nb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= na; i++)
        for (size_t j = 1; j <= nb; j++) {
            int best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[na][nb];
}

void cliarg_bad_option(const struct option *opts, const char *word, int optopt, char *msg, size_t size)
{
    if (!word || word[0] != '-' || word[1] != '-') { /* a short option */
        if (optopt > 0 && optopt < 128)
            snprintf(msg, size, "unknown option -%c", optopt);
        else
            snprintf(msg, size, "unknown option %s", word ? word : "");
        return;
    }
    const char *name = word + 2, *eq = strchr(name, '=');
    const size_t len = eq ? (size_t)(eq - name) : strlen(name);
    const struct option *hit = NULL;
    int n_hit = 0;
    char list[256] = "";
    for (const struct option *o = opts; o->name; o++) {
        if (strncmp(o->name, name, len) != 0)
            continue;
        if (strlen(o->name) == len) { /* exact: this one whatever else begins so */
            hit = o, n_hit = 1;
            break;
        }
        int seen = 0; /* the same option under another spelling */
        for (const struct option *p = opts; p < o; p++)
            seen |= strncmp(p->name, name, len) == 0 && p->val == o->val && p->flag == o->flag;
        if (seen)
            continue;
        if (!hit)
            hit = o;
        n_hit++;
        size_t k = strlen(list);
        if (k + strlen(o->name) + 8 < sizeof list)
            snprintf(list + k, sizeof list - k, "%s--%s", k ? ", " : "", o->name);
    }
    if (n_hit > 1)
        snprintf(msg, size, "option --%.*s is ambiguous (%s)", (int)len, name, list);
    else if (hit && eq && hit->has_arg == no_argument)
        snprintf(msg, size, "option --%s takes no value", hit->name);
    else if (hit && hit->has_arg == required_argument && !eq)
        snprintf(msg, size, "option --%s needs a value", hit->name);
    else { /* a typo: the nearest option within 2 edits (--stpes: --steps) */
        const struct option *near = NULL;
        int best = 3;
        for (const struct option *o = opts; o->name; o++) {
            int d = edit_distance(name, len, o->name, strlen(o->name));
            if (d < best && (size_t)d * 3 <= len)
                best = d, near = o;
        }
        if (near)
            snprintf(msg, size, "unknown option %.*s (did you mean --%s?)", (int)(eq ? eq - word : (long)strlen(word)), word,
                     near->name);
        else
            snprintf(msg, size, "unknown option %s", word);
    }
}
