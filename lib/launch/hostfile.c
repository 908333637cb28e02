/* The launch plan: hostfile parsing, --include/--exclude, --num_nodes/--num_gpus, rank
 * numbering, the per-rank environment and .deepspeed_env files (spec/launcher.md §1-§3,
 * DECISIONS.md "Launcher"). Starting and watching processes lives in bin/ds-launch.c. */
#define _GNU_SOURCE
#include "ds/launch.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A slot count above this is a typo, not a machine. */
#define DS_LAUNCH_MAX_SLOTS 65536

static ds_status nomem(ds_error *err)
{
    return ds_error_set(err, DS_ERR_NOMEM, "out of memory");
}

static ds_status plan_warn(ds_launch_plan *plan, ds_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static ds_status plan_warn(ds_launch_plan *plan, ds_error *err, const char *fmt, ...)
{
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return nomem(err);
    char **w = realloc(plan->warnings, (size_t)(plan->num_warnings + 1) * sizeof *w);
    if (!w) {
        free(msg);
        return nomem(err);
    }
    plan->warnings = w;
    plan->warnings[plan->num_warnings++] = msg;
    return DS_OK;
}

/* Append a host with ids 0..slots-1. */
static ds_status plan_add(ds_launch_plan *plan, const char *host, size_t host_len, int slots,
                          ds_error *err)
{
    ds_launch_node *nodes = realloc(plan->nodes, (size_t)(plan->num_nodes + 1) * sizeof *nodes);
    if (!nodes)
        return nomem(err);
    plan->nodes = nodes;
    ds_launch_node *n = &nodes[plan->num_nodes];
    memset(n, 0, sizeof *n);
    n->host = strndup(host, host_len);
    n->slot_ids = malloc((size_t)(slots > 0 ? slots : 1) * sizeof *n->slot_ids);
    if (!n->host || !n->slot_ids) {
        free(n->host);
        free(n->slot_ids);
        return nomem(err);
    }
    n->slots = slots;
    n->num_ids = slots;
    for (int i = 0; i < slots; i++)
        n->slot_ids[i] = i;
    plan->num_nodes++;
    return DS_OK;
}

void ds_launch_plan_free(ds_launch_plan *plan)
{
    if (!plan)
        return;
    for (int i = 0; i < plan->num_nodes; i++) {
        free(plan->nodes[i].host);
        free(plan->nodes[i].slot_ids);
    }
    free(plan->nodes);
    for (int i = 0; i < plan->num_local_devices; i++)
        free(plan->local_devices[i]);
    free(plan->local_devices);
    for (int i = 0; i < plan->num_warnings; i++)
        free(plan->warnings[i]);
    free(plan->warnings);
    memset(plan, 0, sizeof *plan);
}

static int find_host(const ds_launch_plan *plan, const char *host, size_t len)
{
    for (int i = 0; i < plan->num_nodes; i++)
        if (strlen(plan->nodes[i].host) == len && memcmp(plan->nodes[i].host, host, len) == 0)
            return i;
    return -1;
}

/* ---- hostfile ------------------------------------------------------------------------- */

/* One stripped, non-empty, non-comment line. DeepSpeed's regex is ^(\S+)\s+slots=(\d+); we
 * take ASCII digits only, and after the digits allow only whitespace-separated key=value
 * tokens (DECISIONS.md), where DeepSpeed ignores whatever follows. */
static ds_status parse_host_line(ds_launch_plan *plan, const char *name, int lineno,
                                 const char *line, int *first_line, ds_error *err)
{
    const char *p = line;
    while (*p && !isspace((unsigned char)*p))
        p++;
    size_t host_len = (size_t)(p - line);
    const char *q = p;
    while (*q && isspace((unsigned char)*q))
        q++;
    bool ok = q > p && strncmp(q, "slots=", 6) == 0 && isdigit((unsigned char)q[6]);
    long slots = 0;
    const char *rest = NULL;
    if (ok) {
        const char *d = q + 6;
        while (isdigit((unsigned char)*d)) {
            if (slots <= DS_LAUNCH_MAX_SLOTS)
                slots = slots * 10 + (*d - '0');
            d++;
        }
        rest = d;
        ok = *rest == '\0' || isspace((unsigned char)*rest);
    }
    if (!ok)
        return ds_error_set(err, DS_ERR_INVALID, "%s:%d: expected \"<host> slots=<n>\", found \"%s\"",
                            name, lineno, line);
    if (slots > DS_LAUNCH_MAX_SLOTS)
        return ds_error_set(err, DS_ERR_INVALID, "%s:%d: slots=%.*s is too large (at most %d)", name,
                            lineno, (int)(rest - (q + 6)), q + 6, DS_LAUNCH_MAX_SLOTS);
    /* Extra tokens: key=value (MPI's max_slots=8) is accepted with a warning. */
    for (const char *t = rest;;) {
        while (*t && isspace((unsigned char)*t))
            t++;
        if (!*t)
            break;
        const char *e = t;
        while (*e && !isspace((unsigned char)*e))
            e++;
        const char *eq = memchr(t, '=', (size_t)(e - t));
        if (!eq || eq == t || *t == '#')
            return ds_error_set(err, DS_ERR_INVALID,
                                "%s:%d: unexpected \"%s\" after slots=%ld in \"%s\" (only key=value "
                                "tokens may follow)",
                                name, lineno, t, slots, line);
        ds_status st = plan_warn(plan, err, "%s:%d: ignoring \"%.*s\" (only slots= is used)", name,
                                 lineno, (int)(e - t), t);
        if (st != DS_OK)
            return st;
        t = e;
    }
    int dup = find_host(plan, line, host_len);
    if (dup >= 0)
        return ds_error_set(err, DS_ERR_INVALID, "%s:%d: multiple entries for %.*s (first on line %d)",
                            name, lineno, (int)host_len, line, first_line[dup]);
    return plan_add(plan, line, host_len, (int)slots, err);
}

ds_status ds_launch_hostfile_parse_text(ds_launch_plan *plan, const char *name, const char *text,
                                        ds_error *err)
{
    memset(plan, 0, sizeof *plan);
    plan->from_hostfile = true;
    int *first_line = NULL; /* line of each node, for the duplicate message */
    ds_status st = DS_OK;
    int lineno = 0;
    if (!strncmp(text, "\xef\xbb\xbf", 3)) /* a UTF-8 byte-order mark (some editors write one) */
        text += 3;
    for (const char *p = text; *p && st == DS_OK;) {
        const char *end = strchr(p, '\n');
        if (!end)
            end = p + strlen(p);
        lineno++;
        /* Strip surrounding whitespace, CR included (CRLF files work). */
        const char *a = p, *b = end;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        p = *end ? end + 1 : end;
        if (a == b || *a == '#')
            continue;
        char *line = strndup(a, (size_t)(b - a));
        int *fl = realloc(first_line, (size_t)(plan->num_nodes + 1) * sizeof *fl);
        if (!line || !fl) {
            free(line);
            if (fl)
                first_line = fl;
            st = nomem(err);
            break;
        }
        first_line = fl;
        first_line[plan->num_nodes] = lineno;
        st = parse_host_line(plan, name, lineno, line, first_line, err);
        free(line);
    }
    free(first_line);
    if (st == DS_OK && plan->num_nodes == 0)
        st = ds_error_set(err, DS_ERR_INVALID,
                          "%s: no hosts (the file is empty or has only comments)", name);
    if (st != DS_OK)
        ds_launch_plan_free(plan);
    return st;
}

static ds_status read_file(const char *path, char **out, ds_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return ds_error_set(err, DS_ERR_IO, "%s: %s", path, strerror(errno));
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (len + 1 < cap)
            break;
        cap *= 2;
        char *nb = realloc(buf, cap);
        if (!nb) {
            free(buf);
            buf = NULL;
        } else {
            buf = nb;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf)
        return nomem(err);
    if (bad) {
        free(buf);
        return ds_error_set(err, DS_ERR_IO, "%s: read error", path);
    }
    buf[len] = '\0';
    if (strlen(buf) != len) {
        free(buf);
        return ds_error_set(err, DS_ERR_INVALID, "%s: not a text file (it holds a NUL byte)", path);
    }
    *out = buf;
    return DS_OK;
}

ds_status ds_launch_hostfile_load(ds_launch_plan *plan, const char *path, ds_error *err)
{
    memset(plan, 0, sizeof *plan);
    char *text;
    ds_status st = read_file(path, &text, err);
    if (st != DS_OK)
        return st;
    st = ds_launch_hostfile_parse_text(plan, path, text, err);
    free(text);
    return st;
}

ds_status ds_launch_plan_local(ds_launch_plan *plan, int num_slots, ds_error *err)
{
    memset(plan, 0, sizeof *plan);
    if (num_slots < 1 || num_slots > DS_LAUNCH_MAX_SLOTS)
        return ds_error_set(err, DS_ERR_INVALID, "--num_gpus %d: need 1 to %d local ranks", num_slots,
                            DS_LAUNCH_MAX_SLOTS);
    return plan_add(plan, "localhost", strlen("localhost"), num_slots, err);
}

ds_status ds_launch_plan_local_devices(ds_launch_plan *plan, const char *visible, ds_error *err)
{
    memset(plan, 0, sizeof *plan);
    int n = 1;
    for (const char *q = visible; *q; q++)
        n += *q == ',';
    if (n > DS_LAUNCH_MAX_SLOTS)
        return ds_error_set(err, DS_ERR_INVALID, "CUDA_VISIBLE_DEVICES lists %d devices (at most %d)", n,
                            DS_LAUNCH_MAX_SLOTS);
    if (!(plan->local_devices = calloc((size_t)n, sizeof *plan->local_devices)))
        return nomem(err);
    ds_status st = DS_OK;
    const char *a = visible;
    for (int i = 0; i < n && st == DS_OK; i++) {
        const char *comma = strchr(a, ',');
        size_t len = comma ? (size_t)(comma - a) : strlen(a);
        const char *b = a + len;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        if (a == b)
            st = ds_error_set(err, DS_ERR_INVALID,
                              "CUDA_VISIBLE_DEVICES=\"%s\": entry %d is empty (expected device indices or "
                              "UUIDs separated by ',')", visible, i);
        else if (!(plan->local_devices[i] = strndup(a, (size_t)(b - a))))
            st = nomem(err);
        else
            plan->num_local_devices++;
        a = comma ? comma + 1 : b;
    }
    if (st == DS_OK)
        st = plan_add(plan, "localhost", strlen("localhost"), n, err);
    if (st != DS_OK)
        ds_launch_plan_free(plan);
    return st;
}

/* ---- --include / --exclude ------------------------------------------------------------ */

/* Parse one slot id of a filter term: Python int() rules, so surrounding spaces are fine. */
static bool parse_id(const char *s, size_t len, long *out)
{
    while (len && isspace((unsigned char)*s))
        s++, len--;
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    if (!len || len > 18)
        return false;
    char buf[24];
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    long v = strtol(buf, &end, 10);
    if (errno || *end || !(isdigit((unsigned char)buf[0]) || buf[0] == '-' || buf[0] == '+'))
        return false;
    *out = v;
    return true;
}

ds_status ds_launch_plan_filter(ds_launch_plan *plan, const char *include, const char *exclude,
                                ds_error *err)
{
    bool inc = include && *include, exc = exclude && *exclude;
    if (inc && exc)
        return ds_error_set(err, DS_ERR_INVALID, "--include and --exclude are mutually exclusive");
    if (!inc && !exc)
        return DS_OK;
    const char *flag = inc ? "--include" : "--exclude";
    const char *spec = inc ? include : exclude;
    /* Per node: the ids named, and whether the host was named bare. DeepSpeed merges the
     * terms of one host: named ids win over a bare mention (w1:0@w1 is [0]). */
    char **named = calloc((size_t)plan->num_nodes, sizeof *named);
    bool *bare = calloc((size_t)plan->num_nodes + 1, sizeof *bare);
    bool *has_ids = calloc((size_t)plan->num_nodes + 1, sizeof *has_ids);
    ds_status st = named && bare && has_ids ? DS_OK : nomem(err);
    for (int i = 0; i < plan->num_nodes && st == DS_OK; i++)
        if (!(named[i] = calloc((size_t)plan->nodes[i].slots + 1, 1)))
            st = nomem(err);
    for (const char *term = spec; st == DS_OK;) {
        const char *end = strchr(term, '@');
        size_t tlen = end ? (size_t)(end - term) : strlen(term);
        /* HOST or HOST:IDS, where a hostfile's HOST may itself be host:port: the whole term,
         * then all but its last ":IDS", name a host before the first ':' is taken as the split */
        const char *colon = memchr(term, ':', tlen), *last = NULL;
        for (const char *c = term; c < term + tlen; c++)
            if (*c == ':')
                last = c;
        if (colon && find_host(plan, term, tlen) >= 0)
            colon = NULL;
        else if (last && last != colon && find_host(plan, term, (size_t)(last - term)) >= 0)
            colon = last;
        size_t hlen = colon ? (size_t)(colon - term) : tlen;
        int node = find_host(plan, term, hlen);
        if (node < 0) {
            st = ds_error_set(err, DS_ERR_INVALID, "%s term \"%.*s\": host '%.*s' not found in %s", flag,
                              (int)tlen, term, (int)hlen, term,
                              plan->from_hostfile ? "hostfile" : "local mode (only 'localhost')");
            break;
        }
        ds_launch_node *n = &plan->nodes[node];
        if (!colon) {
            bare[node] = true; /* DECISIONS.md: a bare host means all of its slots */
        } else {
            const char *ids = colon + 1, *tend = term + tlen;
            if (memchr(ids, ':', (size_t)(tend - ids))) {
                st = ds_error_set(err, DS_ERR_INVALID,
                                  "%s term \"%.*s\": more than one ':' (expected HOST:ID[,ID...])",
                                  flag, (int)tlen, term);
                break;
            }
            for (const char *id = ids; st == DS_OK;) {
                const char *comma = memchr(id, ',', (size_t)(tend - id));
                const char *idend = comma ? comma : tend;
                long v;
                if (!parse_id(id, (size_t)(idend - id), &v))
                    st = ds_error_set(err, DS_ERR_INVALID,
                                      "%s term \"%.*s\": \"%.*s\" is not a slot id (ids are "
                                      "integers; ranges are not supported)",
                                      flag, (int)tlen, term, (int)(idend - id), id);
                else if (v < 0 || v >= n->slots)
                    st = ds_error_set(err, DS_ERR_INVALID,
                                      "%s term \"%.*s\": no slot '%ld' specified on host '%s' "
                                      "(slots=%d)",
                                      flag, (int)tlen, term, v, n->host, n->slots);
                else
                    named[node][v] = 1, has_ids[node] = true;
                if (!comma)
                    break;
                id = comma + 1;
            }
        }
        if (!end)
            break;
        term = end + 1;
    }
    /* keep[node][id]: include keeps what was named, exclude everything else. */
    char **keep = named;
    for (int i = 0; i < plan->num_nodes && st == DS_OK; i++)
        for (int id = 0; id < plan->nodes[i].slots; id++) {
            bool sel = has_ids[i] ? named[i][id] : bare[i];
            keep[i][id] = inc ? sel : !sel;
        }
    free(bare);
    free(has_ids);
    if (!keep)
        return st;
    /* Apply: ids ascending, hosts left empty dropped, hostfile order kept. */
    int out = 0;
    for (int i = 0; i < plan->num_nodes; i++) {
        ds_launch_node *n = &plan->nodes[i];
        if (st == DS_OK) {
            n->num_ids = 0;
            for (int id = 0; id < n->slots; id++)
                if (keep[i][id])
                    n->slot_ids[n->num_ids++] = id;
        }
        free(keep[i]);
        if (st == DS_OK) {
            if (n->num_ids == 0) {
                free(n->host);
                free(n->slot_ids);
            } else {
                plan->nodes[out++] = *n;
            }
        }
    }
    free(keep);
    if (st == DS_OK)
        plan->num_nodes = out;
    return st;
}

ds_status ds_launch_plan_limit(ds_launch_plan *plan, int num_nodes, int num_gpus, bool filtered,
                               ds_error *err)
{
    /* DeepSpeed: 0 counts as "given" here, though it has no other effect. */
    if (filtered && (num_nodes >= 0 || num_gpus >= 0))
        return ds_error_set(err, DS_ERR_INVALID,
                            "--num_nodes/--num_gpus cannot be used with --include/--exclude");
    if (!plan->from_hostfile) {
        if (num_nodes > 1)
            return ds_error_set(err, DS_ERR_INVALID,
                                "--num_nodes %d: there is no hostfile, so only one node (this one)",
                                num_nodes);
        if (!plan->local_devices || num_gpus <= 0)
            return DS_OK; /* --num_gpus sized the node */
        if (num_gpus > plan->nodes[0].slots) /* the first num_gpus listed devices */
            return ds_error_set(err, DS_ERR_INVALID,
                                "--num_gpus %d: CUDA_VISIBLE_DEVICES lists only %d device(s)", num_gpus,
                                plan->nodes[0].slots);
        plan->nodes[0].num_ids = num_gpus;
        return DS_OK;
    }
    if (num_nodes > 0 && num_nodes < plan->num_nodes) {
        for (int i = num_nodes; i < plan->num_nodes; i++) {
            free(plan->nodes[i].host);
            free(plan->nodes[i].slot_ids);
        }
        plan->num_nodes = num_nodes;
    }
    if (num_gpus > 0) {
        for (int i = 0; i < plan->num_nodes; i++)
            if (num_gpus > plan->nodes[i].slots)
                return ds_error_set(err, DS_ERR_INVALID, "--num_gpus %d: host '%s' has only slots=%d",
                                    num_gpus, plan->nodes[i].host, plan->nodes[i].slots);
        for (int i = 0; i < plan->num_nodes; i++) {
            plan->nodes[i].num_ids = num_gpus;
            for (int id = 0; id < num_gpus; id++)
                plan->nodes[i].slot_ids[id] = id;
        }
    }
    return DS_OK;
}

ds_status ds_launch_plan_finish(ds_launch_plan *plan, ds_error *err)
{
    int rank = 0;
    for (int i = 0; i < plan->num_nodes; i++) {
        plan->nodes[i].first_rank = rank;
        rank += plan->nodes[i].num_ids;
    }
    plan->world_size = rank;
    if (rank == 0)
        return ds_error_set(err, DS_ERR_INVALID,
                            "no ranks to run: every host has 0 slots or was filtered out");
    return DS_OK;
}

/* ---- environment ---------------------------------------------------------------------- */

void ds_launch_env_free(ds_launch_env *env)
{
    if (!env)
        return;
    for (int i = 0; i < env->count; i++)
        free(env->vars[i].value);
    free(env->vars);
    env->vars = NULL;
    env->count = 0;
}

static bool valid_name(const char *s, size_t len)
{
    if (len == 0 || len >= sizeof ((ds_launch_var *)0)->name || isdigit((unsigned char)s[0]))
        return false;
    for (size_t i = 0; i < len; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

ds_status ds_launch_env_set(ds_launch_env *env, const char *name, const char *value, ds_error *err)
{
    if (!valid_name(name, strlen(name)))
        return ds_error_set(err, DS_ERR_INVALID, "\"%s\" is not a valid environment variable name",
                            name);
    char *v = strdup(value);
    if (!v)
        return nomem(err);
    for (int i = 0; i < env->count; i++)
        if (strcmp(env->vars[i].name, name) == 0) {
            free(env->vars[i].value);
            env->vars[i].value = v;
            return DS_OK;
        }
    ds_launch_var *vars = realloc(env->vars, (size_t)(env->count + 1) * sizeof *vars);
    if (!vars) {
        free(v);
        return nomem(err);
    }
    env->vars = vars;
    snprintf(vars[env->count].name, sizeof vars[env->count].name, "%s", name);
    vars[env->count].value = v;
    env->count++;
    return DS_OK;
}

static ds_status env_setf(ds_launch_env *env, const char *name, ds_error *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static ds_status env_setf(ds_launch_env *env, const char *name, ds_error *err, const char *fmt, ...)
{
    char *v = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&v, fmt, ap);
    va_end(ap);
    if (n < 0)
        return nomem(err);
    ds_status st = ds_launch_env_set(env, name, v, err);
    free(v);
    return st;
}

ds_status ds_launch_rank_env(const ds_launch_plan *plan, int node, int local,
                             const char *master_addr, int master_port, int cores,
                             bool omp_user_set, ds_launch_env *out, ds_error *err)
{
    memset(out, 0, sizeof *out);
    if (node < 0 || node >= plan->num_nodes || local < 0 || local >= plan->nodes[node].num_ids)
        return ds_error_set(err, DS_ERR_INTERNAL, "rank env: node %d local rank %d out of range", node,
                            local);
    const ds_launch_node *n = &plan->nodes[node];
    /* CUDA_VISIBLE_DEVICES: this node's ids joined by ',' (DeepSpeed's launch.py); in local
     * mode from CUDA_VISIBLE_DEVICES, the listed devices of those slots */
    size_t cap = (size_t)n->num_ids * 12 + 1;
    for (int i = 0; plan->local_devices && i < n->num_ids; i++)
        cap += strlen(plan->local_devices[n->slot_ids[i]]) + 1;
    char *devices = malloc(cap);
    if (!devices)
        return nomem(err);
    size_t len = 0;
    for (int i = 0; i < n->num_ids; i++)
        if (plan->local_devices && n->slot_ids[i] < plan->num_local_devices)
            len += (size_t)sprintf(devices + len, "%s%s", i ? "," : "", plan->local_devices[n->slot_ids[i]]);
        else
            len += (size_t)sprintf(devices + len, "%s%d", i ? "," : "", n->slot_ids[i]);
    devices[len] = '\0';
    ds_status st = env_setf(out, "RANK", err, "%d", n->first_rank + local);
    /* DECISIONS.md: LOCAL_RANK is the position within the node, not RANK mod LOCAL_SIZE. */
    if (st == DS_OK)
        st = env_setf(out, "LOCAL_RANK", err, "%d", local);
    if (st == DS_OK)
        st = env_setf(out, "WORLD_SIZE", err, "%d", plan->world_size);
    if (st == DS_OK)
        st = env_setf(out, "LOCAL_SIZE", err, "%d", n->num_ids);
    if (st == DS_OK)
        st = env_setf(out, "CROSS_RANK", err, "%d", node);
    if (st == DS_OK)
        st = env_setf(out, "CROSS_SIZE", err, "%d", plan->num_nodes);
    if (st == DS_OK)
        st = ds_launch_env_set(out, "MASTER_ADDR", master_addr, err);
    if (st == DS_OK)
        st = env_setf(out, "MASTER_PORT", err, "%d", master_port);
    if (st == DS_OK)
        st = ds_launch_env_set(out, "CUDA_VISIBLE_DEVICES", devices, err);
    if (st == DS_OK && !omp_user_set) {
        int threads = cores / n->num_ids;
        st = env_setf(out, "OMP_NUM_THREADS", err, "%d", threads > 0 ? threads : 1);
    }
    free(devices);
    if (st != DS_OK)
        ds_launch_env_free(out);
    return st;
}

ds_status ds_launch_envfile_parse_text(ds_launch_env *env, const char *name, const char *text,
                                       ds_error *err)
{
    int lineno = 0;
    if (!strncmp(text, "\xef\xbb\xbf", 3)) /* a UTF-8 byte-order mark */
        text += 3;
    for (const char *p = text; *p;) {
        const char *end = strchr(p, '\n');
        if (!end)
            end = p + strlen(p);
        lineno++;
        const char *a = p, *b = end;
        p = *end ? end + 1 : end;
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        if (a == b || *a == '#')
            continue;
        const char *eq = memchr(a, '=', (size_t)(b - a));
        const char *ne = eq;
        while (ne && ne > a && isspace((unsigned char)ne[-1]))
            ne--;
        if (!eq || ne == a)
            return ds_error_set(err, DS_ERR_INVALID, "%s:%d: expected NAME=VALUE, found \"%.*s\"", name,
                                lineno, (int)(b - a), a);
        if (!valid_name(a, (size_t)(ne - a)))
            return ds_error_set(err, DS_ERR_INVALID, "%s:%d: \"%.*s\" is not a variable name a shell exports "
                                "(1 to 255 letters, digits and _, not starting with a digit)", name, lineno,
                                (int)(ne - a), a);
        char key[sizeof ((ds_launch_var *)0)->name];
        memcpy(key, a, (size_t)(ne - a));
        key[ne - a] = '\0';
        const char *v = eq + 1;
        while (v < b && isspace((unsigned char)*v))
            v++;
        char *value = strndup(v, (size_t)(b - v));
        if (!value)
            return nomem(err);
        ds_status st = ds_launch_env_set(env, key, value, err);
        free(value);
        if (st != DS_OK)
            return st;
    }
    return DS_OK;
}

ds_status ds_launch_envfile_load(ds_launch_env *env, const char *path, ds_error *err)
{
    char *text;
    ds_status st = read_file(path, &text, err);
    if (st != DS_OK)
        return st;
    st = ds_launch_envfile_parse_text(env, path, text, err);
    free(text);
    return st;
}
