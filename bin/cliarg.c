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
    else
        snprintf(msg, size, "unknown option %s", word);
}
