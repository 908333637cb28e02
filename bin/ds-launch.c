/* ds-launch: DeepSpeed's launcher for native programs. Resolves the plan (libds,
 * <ds/launch.h>), then forks one process group per rank, streams their output, and tears the
 * whole job down when a rank fails or ds-launch is signalled. With a remote host in the plan,
 * every node is reached over libssh and runs `ds-launch --node-agent`, which does the same
 * for its ranks (plan as JSON on stdin; its stdin closing tears them down). */
#define _GNU_SOURCE
#include <ds/ds.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <libssh/libssh.h>
#include <pthread.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXIT_USAGE 2

static const char usage_text[] =
    "usage: ds-launch [options] PROGRAM [ARGS...]\n"
    "\n"
    "Run PROGRAM as the ranks of one job, with DeepSpeed's rank environment (RANK, LOCAL_RANK,\n"
    "WORLD_SIZE, ...). Everything after PROGRAM is passed to it untouched. See ds-launch(1).\n"
    "\n"
    "  -H, --hostfile FILE         MPI-style hostfile (\"<host> slots=<n>\"; default /job/hostfile\n"
    "                              if it exists); without one: local mode\n"
    "  -i, --include SPEC          only these hosts/slots: host1:0,1@host2\n"
    "  -e, --exclude SPEC          all but these hosts/slots\n"
    "  --num_nodes N               the first N hosts of the hostfile\n"
    "  --num_gpus, --num_accelerators N\n"
    "                              slots 0..N-1 on every host; local mode: N ranks (default 1),\n"
    "                              or the first N devices CUDA_VISIBLE_DEVICES lists (default all)\n"
    "  --master_addr ADDR          rank 0's address (default 127.0.0.1)\n"
    "  --master_port PORT          default 29500; 0 picks a free port and says which\n"
    "  --enable_each_rank_log DIR  write each rank's output to DIR/<time>_rank<N>.log\n"
    "  --kill_grace SECONDS        SIGTERM to SIGKILL delay when tearing a job down (default 30)\n"
    "  --ssh_port PORT             ssh port of the remote nodes (default: ~/.ssh/config, else 22)\n"
    "  --ssh_timeout SECONDS       time to connect to a remote node (default 10)\n"
    "  --export VAR[=VAL]          pass VAR (from this environment, or set to VAL) to every rank\n"
    "  --dry-run                   print the resolved plan as JSON and start nothing\n"
    "  --no_ssh --node_rank N      start only node N's ranks, here, without ssh (one ds-launch\n"
    "                              per node; share DS_JOB_SECRET and give --master_addr)\n"
    "  --no_python, --no_local_rank, --no_ssh_check\n"
    "                              accepted for DeepSpeed's command lines; nothing to change\n"
    "  -h, --help                  this text\n"
    "Also accepted: --num-gpus, --num-nodes, --master-addr, --master-port, --kill-grace, --ssh-port,\n"
    "--ssh-timeout, --no-ssh, --node-rank, --dry_run; --opt=value as well as --opt value.\n";

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ds-launch: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(ds-launch --help for the options)\n", stderr);
    exit(EXIT_USAGE);
}

typedef struct options {
    const char *hostfile;
    bool hostfile_given;
    const char *include, *exclude;
    int num_nodes, num_gpus;
    const char *master_addr;
    int master_port;
    const char *rank_log_dir;
    int kill_grace;
    int ssh_port;    /* 0: ssh's own (~/.ssh/config, else 22) */
    int ssh_timeout; /* seconds to connect to a node */
    const char **exports;
    int num_exports;
    bool dry_run;
    bool no_ssh;    /* run only node node_rank's ranks here (each node runs its own ds-launch) */
    bool agent;     /* this is a node agent (--node-agent): say a rank's failure to the launcher */
    const char *stop_token; /* the agent's: for AGENT_STOP_FMT */
    int node_rank;
    char **program; /* argv of the ranks, NULL-terminated */
    int program_argc;
} options;

static int parse_int(const char *flag, const char *s, int lo, int hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi)
        usage_error("%s: expected an integer from %d to %d, got \"%s\"", flag, lo, hi, s);
    return (int)v;
}

/* Flags DeepSpeed has that are not built (yet), with the reason. */
static const struct {
    const char *flag;
    bool takes_value;
    const char *why;
} refused[] = {
    {"--force_multi", false, "not built yet (ds-launch starts remote nodes itself, over libssh)"},
    {"--launcher", true, "not built yet (ds-launch starts remote nodes itself, over libssh)"},
    {"--launcher_args", true, "not built yet (ds-launch starts remote nodes itself, over libssh)"},
    {"--venv_script", true, "not built yet (ds-launch starts remote nodes itself, over libssh)"},
    {"--save_pid", false, "not built yet"},
    {"--bind_cores_to_rank", false, "not built yet"},
    {"--bind_core_list", true, "not built yet"},
    {"--module", false, "ds-launch runs native programs directly, not Python modules"},
    {"--autotuning", true, "the autotuner is out of scope for ds-launch"},
    {"--elastic_training", false, "elastic training is out of scope for ds-launch"},
    {"--min_elastic_nodes", true, "elastic training is out of scope for ds-launch"},
    {"--max_elastic_nodes", true, "elastic training is out of scope for ds-launch"},
};

static void parse_args(options *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->hostfile = "/job/hostfile";
    o->num_nodes = -1;
    o->num_gpus = -1;
    o->master_port = 29500;
    o->kill_grace = 30;
    o->ssh_timeout = 10;
    o->node_rank = -1;
    o->exports = calloc((size_t)argc, sizeof *o->exports);
    int i = 1;
    for (; i < argc; i++) {
        char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (a[0] != '-' || a[1] == '\0')
            break; /* the program: everything from here on is its own */
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage_text, stdout);
            exit(0);
        }
        /* --flag=value, --flag value, -X value, -Xvalue */
        char name[64];
        const char *inline_value = NULL;
        if (a[1] == '-') {
            const char *eq = strchr(a, '=');
            size_t n = eq ? (size_t)(eq - a) : strlen(a);
            if (n >= sizeof name)
                usage_error("unrecognized option %s", a);
            memcpy(name, a, n);
            name[n] = '\0';
            if (eq)
                inline_value = eq + 1;
        } else {
            snprintf(name, sizeof name, "-%c", a[1]);
            if (a[2])
                inline_value = a + 2;
        }
#define VALUE()                                                                                    \
    (inline_value ? inline_value                                                                   \
                  : (i + 1 < argc ? argv[++i] : (usage_error("%s needs a value", name), "")))
#define NOVALUE() /* a switch: --dry-run=no would read as --dry-run */                               \
    do {                                                                                           \
        if (inline_value)                                                                          \
            usage_error("option %s takes no value", name);                                        \
    } while (0)
        if (strcmp(name, "-H") == 0 || strcmp(name, "--hostfile") == 0) {
            o->hostfile = VALUE();
            o->hostfile_given = true;
        } else if (strcmp(name, "-i") == 0 || strcmp(name, "--include") == 0) {
            o->include = VALUE();
        } else if (strcmp(name, "-e") == 0 || strcmp(name, "--exclude") == 0) {
            o->exclude = VALUE();
        } else if (strcmp(name, "--num_nodes") == 0 || strcmp(name, "--num-nodes") == 0) {
            o->num_nodes = parse_int(name, VALUE(), -1, INT_MAX);
        } else if (strcmp(name, "--num_gpus") == 0 || strcmp(name, "--num-gpus") == 0 ||
                   strcmp(name, "--num_accelerators") == 0) {
            o->num_gpus = parse_int(name, VALUE(), -1, 65536);
        } else if (strcmp(name, "--master_addr") == 0 || strcmp(name, "--master-addr") == 0) {
            o->master_addr = VALUE();
            if (!*o->master_addr)
                usage_error("--master_addr: empty address");
        } else if (strcmp(name, "--master_port") == 0 || strcmp(name, "--master-port") == 0) {
            o->master_port = parse_int(name, VALUE(), 0, 65535);
        } else if (strcmp(name, "--enable_each_rank_log") == 0) {
            o->rank_log_dir = VALUE();
            if (strcmp(o->rank_log_dir, "None") == 0) /* DeepSpeed's "off" */
                o->rank_log_dir = NULL;
        } else if (strcmp(name, "--kill_grace") == 0 || strcmp(name, "--kill-grace") == 0) {
            o->kill_grace = parse_int(name, VALUE(), 0, 86400);
        } else if (strcmp(name, "--ssh_port") == 0 || strcmp(name, "--ssh-port") == 0) {
            o->ssh_port = parse_int(name, VALUE(), 1, 65535);
        } else if (strcmp(name, "--ssh_timeout") == 0 || strcmp(name, "--ssh-timeout") == 0) {
            o->ssh_timeout = parse_int(name, VALUE(), 1, 3600);
        } else if (strcmp(name, "--no_ssh") == 0 || strcmp(name, "--no-ssh") == 0) {
            NOVALUE();
            o->no_ssh = true;
        } else if (strcmp(name, "--node_rank") == 0 || strcmp(name, "--node-rank") == 0) {
            o->node_rank = parse_int(name, VALUE(), 0, 1 << 20);
        } else if (strcmp(name, "--export") == 0) {
            o->exports[o->num_exports++] = VALUE();
        } else if (strcmp(name, "--dry-run") == 0 || strcmp(name, "--dry_run") == 0) {
            NOVALUE();
            o->dry_run = true;
        } else if (strcmp(name, "--no_python") == 0 || strcmp(name, "--no_local_rank") == 0 ||
                   strcmp(name, "--no_ssh_check") == 0) {
            NOVALUE();
            /* what ds-launch always does: run the program directly, no --local_rank, no ssh */
        } else {
            size_t k = 0;
            for (; k < sizeof refused / sizeof refused[0]; k++)
                if (strcmp(name, refused[k].flag) == 0)
                    break;
            if (k == sizeof refused / sizeof refused[0])
                usage_error("unrecognized option %s", a);
            fprintf(stderr, "ds-launch: %s: %s\n", name, refused[k].why);
            exit(EXIT_USAGE);
        }
#undef VALUE
#undef NOVALUE
    }
    if (i >= argc)
        usage_error("no program to run");
    o->program = argv + i;
    o->program_argc = argc - i;
}

/* ---- plan ----------------------------------------------------------------------------- */

/* A host is this machine only if it is "localhost", 127.0.0.1, ::1 or this machine's host
 * name (full or short). Anything else, 127.0.0.2 included, is reached over ssh. */
static bool host_is_local(const char *host)
{
    if (strcmp(host, "localhost") == 0 || strcmp(host, "127.0.0.1") == 0 || strcmp(host, "::1") == 0)
        return true;
    char me[HOST_NAME_MAX + 1] = "";
    if (gethostname(me, sizeof me) != 0)
        return false;
    me[HOST_NAME_MAX] = '\0';
    if (strcmp(host, me) == 0)
        return true;
    size_t short_len = strcspn(me, ".");
    return strlen(host) == short_len && strncmp(host, me, short_len) == 0;
}

static void fail_status(const char *what, const ds_error *err)
{
    if (what)
        fprintf(stderr, "ds-launch: %s: %s\n", what, err->msg);
    else
        fprintf(stderr, "ds-launch: %s\n", err->msg);
    exit(EXIT_USAGE);
}

/* Whether the plan has a remote node: then every node, this one included, runs over ssh. */
static bool make_plan(const options *o, ds_launch_plan *plan)
{
    ds_error err = {0};
    struct stat sb;
    bool have_hostfile = stat(o->hostfile, &sb) == 0 && S_ISREG(sb.st_mode);
    if (!have_hostfile && o->hostfile_given)
        fprintf(stderr, "ds-launch: warning: %s is not a file; running in local mode\n", o->hostfile);
    ds_status st;
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    if (have_hostfile) {
        st = ds_launch_hostfile_load(plan, o->hostfile, &err);
        if (st == DS_OK && visible && *visible)
            fprintf(stderr, "ds-launch: warning: CUDA_VISIBLE_DEVICES=%s is ignored with a hostfile: each "
                            "rank sees the ids of its node's slots\n", visible);
    } else if (visible && *visible) {
        /* Local mode on the listed devices: all of them, or the first --num_gpus */
        st = ds_launch_plan_local_devices(plan, visible, &err);
    } else {
        /* Local mode: --num_gpus ranks on this machine (DeepSpeed counts the devices; on a CPU
         * machine there is nothing to count, so the user says how many). */
        st = ds_launch_plan_local(plan, o->num_gpus > 0 ? o->num_gpus : 1, &err);
    }
    if (st != DS_OK)
        fail_status(NULL, &err);
    for (int k = 0; k < plan->num_warnings; k++)
        fprintf(stderr, "ds-launch: warning: %s\n", plan->warnings[k]);
    bool filtered = (o->include && *o->include) || (o->exclude && *o->exclude);
    st = ds_launch_plan_filter(plan, o->include, o->exclude, &err);
    if (st == DS_OK)
        st = ds_launch_plan_limit(plan, o->num_nodes, o->num_gpus, filtered, &err);
    if (st == DS_OK)
        st = ds_launch_plan_finish(plan, &err);
    if (st != DS_OK)
        fail_status(NULL, &err);
    for (int n = 0; n < plan->num_nodes; n++)
        if (!host_is_local(plan->nodes[n].host))
            return true;
    return false;
}

static int pick_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    socklen_t len = sizeof sa;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static int count_cores(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Variables every rank gets besides the rank's own: .deepspeed_env (home, then the working
 * directory; DS_ENV_FILE names the file), then --export. */
/* DeepSpeed's runner exports every variable of its own environment whose name starts with one
 * of these (runner.py add_export; NCCL is the CUDA accelerator's list), so that remote ranks see
 * them; local ranks inherit the whole environment anyway. */
static const char *const export_prefixes[] = {
    "MLFLOW", "PYTHON", "MV2", "UCX", "NCCL", "DLTS_JOB_ID", "DLTS_NUM_WORKER",
    "NEBULA_PERSISTENT_STORAGE_PATH", "NEBULA_PERSISTENT_TIME_INTERVAL", "AML_RUN_ID",
    "AZUREML_RUN_TOKEN", "AZUREML_WORKSPACE_SCOPE", "AZUREML_EXPERIMENT_SCOPE",
    "AZUREML_RUN_HISTORY_SERVICE_ENDPOINT", "AZUREML_RUN_ID", "NEBULA_MEMORY_BUFFER_SIZE",
    "AZUREML_PARAMETER_ITPJOB_NAME", "FC_TASKROLE_NAME", "FC_TASK_INDEX", "MASTER_HOST",
    "LOCAL_HOST", "AZUREML_BLOB_ACCOUNT_NAME", "AZUREML_BLOB_ACCOUNT_KEY", NULL};

extern char **environ;

static void load_prefix_exports(ds_launch_env *exports)
{
    ds_error err = {0};
    int aisc = getenv("AISC_JOB_NAME") != NULL;
    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        size_t len = (size_t)(eq - *e);
        int match = 0;
        for (int k = 0; export_prefixes[k] && !match; k++)
            match = strncmp(*e, export_prefixes[k], strlen(export_prefixes[k])) == 0;
        if (!match)
            continue;
        char *key = strndup(*e, len);
        /* DeepSpeed: under AISC these two are left to the platform. A name the ranks' shells
         * could not take (PYTHON.X) is passed over with a warning: it is this environment's,
         * not the user's request */
        if (key && !(aisc && (strcmp(key, "NCCL_IB_HCA") == 0 || strcmp(key, "UCX_NET_DEVICES") == 0)) &&
            ds_launch_env_set(exports, key, eq + 1, &err) != DS_OK) {
            if (err.code == DS_ERR_INVALID)
                fprintf(stderr, "ds-launch: warning: not exporting %s: %s\n", key, err.msg);
            else
                fail_status("export", &err);
        }
        free(key);
    }
}

static void load_exports(const options *o, ds_launch_env *exports)
{
    ds_error err = {0};
    load_prefix_exports(exports);
    const char *name = getenv("DS_ENV_FILE");
    const int named = name && *name;
    if (!named)
        name = ".deepspeed_env";
    char *paths[2] = {NULL, NULL};
    const char *home = getenv("HOME");
    if (name[0] == '/') {
        paths[0] = strdup(name);
    } else {
        if (home && *home && asprintf(&paths[0], "%s/%s", home, name) < 0)
            paths[0] = NULL;
        char *cwd = getcwd(NULL, 0);
        if (cwd && asprintf(&paths[1], "%s/%s", cwd, name) < 0)
            paths[1] = NULL;
        if (paths[0] && paths[1] && strcmp(paths[0], paths[1]) == 0) {
            free(paths[1]); /* home is the working directory: read it once */
            paths[1] = NULL;
        }
        free(cwd);
    }
    int found = 0;
    for (int k = 0; k < 2; k++) {
        struct stat sb;
        if (paths[k] && stat(paths[k], &sb) == 0) {
            found = 1;
            if (ds_launch_envfile_load(exports, paths[k], &err) != DS_OK)
                fail_status(NULL, &err);
        }
        free(paths[k]);
    }
    if (named && !found) /* DeepSpeed passes over it silently; a typo would go unseen */
        fprintf(stderr, "ds-launch: warning: DS_ENV_FILE=%s: no such file%s; nothing exported from it\n", name,
                name[0] == '/' ? "" : " in the home or the working directory");
    for (int k = 0; k < o->num_exports; k++) {
        const char *e = o->exports[k], *eq = strchr(e, '=');
        if (eq == e || !*e) {
            fprintf(stderr, "ds-launch: --export \"%s\": expected VAR or VAR=VALUE\n", e);
            exit(EXIT_USAGE);
        }
        char *key = eq ? strndup(e, (size_t)(eq - e)) : strdup(e);
        const char *value = eq ? eq + 1 : getenv(key);
        if (!value) {
            fprintf(stderr, "ds-launch: --export %s: %s is not set in this environment\n", e, key);
            exit(EXIT_USAGE);
        }
        if (ds_launch_env_set(exports, key, value, &err) != DS_OK)
            fail_status("--export", &err);
        free(key);
    }
}

static bool env_has(const ds_launch_env *env, const char *name)
{
    for (int k = 0; k < env->count; k++)
        if (strcmp(env->vars[k].name, name) == 0)
            return true;
    return false;
}

/* Everything a rank gets: the exports, then ds-launch's own variables (which win). remote: the
 * rank starts on another host, from sshd's environment, not ours: the user's OMP_NUM_THREADS
 * is passed on explicitly, and without one the node agent divides that host's cores (omp
 * "auto": no value here), not this one's. */
static void rank_env(const ds_launch_plan *plan, int node, int local, const char *addr, int port,
                     int cores, const ds_launch_env *exports, bool remote, ds_launch_env *out)
{
    ds_error err = {0};
    const char *user_omp = getenv("OMP_NUM_THREADS");
    const bool omp_exported = env_has(exports, "OMP_NUM_THREADS"), omp_user_set = user_omp || omp_exported;
    ds_launch_env own;
    if (ds_launch_rank_env(plan, node, local, addr, port, cores, omp_user_set || remote, &own, &err) != DS_OK)
        fail_status(NULL, &err);
    memset(out, 0, sizeof *out);
    if (remote && user_omp && !omp_exported && ds_launch_env_set(out, "OMP_NUM_THREADS", user_omp, &err) != DS_OK)
        fail_status(NULL, &err);
    for (int k = 0; k < exports->count; k++)
        if (ds_launch_env_set(out, exports->vars[k].name, exports->vars[k].value, &err) != DS_OK)
            fail_status(NULL, &err);
    for (int k = 0; k < own.count; k++)
        if (ds_launch_env_set(out, own.vars[k].name, own.vars[k].value, &err) != DS_OK)
            fail_status(NULL, &err);
    ds_launch_env_free(&own);
}

static void print_plan(const options *o, const ds_launch_plan *plan, const char *addr, int port,
                       int cores, const ds_launch_env *exports, bool remote)
{
    json_object *root = json_object_new_object();
    json_object_object_add(root, "world_size", json_object_new_int(plan->world_size));
    json_object_object_add(root, "master_addr", json_object_new_string(addr));
    json_object_object_add(root, "master_port", json_object_new_int(port));
    json_object_object_add(root, "hostfile",
                           plan->from_hostfile ? json_object_new_string(o->hostfile) : NULL);
    json_object *prog = json_object_new_array();
    for (int k = 0; k < o->program_argc; k++)
        json_object_array_add(prog, json_object_new_string(o->program[k]));
    json_object_object_add(root, "program", prog);
    json_object *nodes = json_object_new_array();
    for (int n = 0; n < plan->num_nodes; n++) {
        const ds_launch_node *nd = &plan->nodes[n];
        json_object *jn = json_object_new_object();
        json_object_object_add(jn, "host", json_object_new_string(nd->host));
        json_object_object_add(jn, "node_rank", json_object_new_int(n));
        json_object *ids = json_object_new_array(), *ranks = json_object_new_array();
        json_object *per_rank = json_object_new_array();
        for (int l = 0; l < nd->num_ids; l++) {
            json_object_array_add(ids, json_object_new_int(nd->slot_ids[l]));
            json_object_array_add(ranks, json_object_new_int(nd->first_rank + l));
            ds_launch_env env;
            rank_env(plan, n, l, addr, port, cores, exports, remote, &env);
            json_object *jr = json_object_new_object(), *je = json_object_new_object();
            json_object_object_add(jr, "rank", json_object_new_int(nd->first_rank + l));
            json_object_object_add(jr, "local_rank", json_object_new_int(l));
            for (int k = 0; k < env.count; k++)
                json_object_object_add(je, env.vars[k].name, json_object_new_string(env.vars[k].value));
            json_object_object_add(jr, "env", je);
            json_object_array_add(per_rank, jr);
            ds_launch_env_free(&env);
        }
        json_object_object_add(jn, "slot_ids", ids);
        json_object_object_add(jn, "global_ranks", ranks);
        json_object_object_add(jn, "ranks", per_rank);
        json_object_array_add(nodes, jn);
    }
    json_object_object_add(root, "nodes", nodes);
    puts(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
}

/* ---- running the job ------------------------------------------------------------------ */

typedef struct stream {
    int fd;       /* -1 when closed */
    int out_fd;   /* 1 or 2 */
    char buf[8192];
    size_t len;
} stream;

typedef struct rank_proc {
    int rank, node;
    pid_t pid;    /* also its process group id */
    bool running;
    int status;   /* wait status once reaped */
    stream out, err;
} rank_proc;

static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t r = write(signal_pipe[1], &b, 1);
    (void)r;
    errno = saved;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* our own stdout is gone: keep watching the ranks anyway */
        }
        p += w;
        n -= (size_t)w;
    }
}

/* A node agent's line on stderr that tells the launcher a rank failed there (the launcher
 * drops it and stops the other nodes at once); with the job's stop token, which only the
 * launcher and the agents know (it is in the plan on the agent's stdin, not in any rank's
 * environment), so that a rank printing the line cannot stop the job */
#define AGENT_STOP_FMT "\036ds-launch node agent %s: a rank failed, stop the job\n"

/* Emit complete lines of s with the rank prefix; at eof, also the unterminated tail. Each line
 * goes out with its prefix in one write, so that lines of other ranks (and, over ssh, of other
 * nodes' agents) never land inside it. */
static void emit_line(int fd, const char *prefix, int plen, const char *p, size_t n, bool newline)
{
    char line[sizeof((stream *)0)->buf + 40];
    memcpy(line, prefix, (size_t)plen);
    memcpy(line + plen, p, n);
    if (newline)
        line[plen + n++] = '\n';
    write_all(fd, line, (size_t)plen + n);
}

static void stream_emit(stream *s, int rank, bool eof)
{
    char prefix[32];
    int plen = snprintf(prefix, sizeof prefix, "[rank %d] ", rank);
    size_t start = 0;
    for (size_t k = 0; k < s->len; k++)
        if (s->buf[k] == '\n') {
            emit_line(s->out_fd, prefix, plen, s->buf + start, k + 1 - start, false);
            start = k + 1;
        }
    if ((eof || (start == 0 && s->len == sizeof s->buf)) && start < s->len) {
        emit_line(s->out_fd, prefix, plen, s->buf + start, s->len - start, true);
        start = s->len;
    }
    memmove(s->buf, s->buf + start, s->len - start);
    s->len -= start;
}

/* Read what is there; at end of file the stream is flushed and closed. */
static void stream_read(stream *s, int rank)
{
    ssize_t n = read(s->fd, s->buf + s->len, sizeof s->buf - s->len);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        stream_emit(s, rank, true);
        close(s->fd);
        s->fd = -1;
        return;
    }
    s->len += (size_t)n;
    stream_emit(s, rank, false);
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGHUP: return "SIGHUP";
    }
    return strsignal(sig);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int exit_code_of(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 1;
}

static void describe(int status, char *out, size_t n)
{
    if (WIFSIGNALED(status))
        snprintf(out, n, "was killed by signal %d (%s), status %d", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), 128 + WTERMSIG(status));
    else
        snprintf(out, n, "exited with status %d", exit_code_of(status));
}

/* Signal every rank's process group: the rank and whatever it started. Only these groups,
 * which this ds-launch created, are ever signalled. */
static void signal_job(rank_proc *r, int n, int sig)
{
    for (int k = 0; k < n; k++)
        if (r[k].pid > 0)
            kill(-r[k].pid, sig);
}

/* Signal every process whose parent is this ds-launch (a subreaper: the ranks' orphaned
 * descendants are reparented here, also those that left their rank's process group with
 * setsid). Linux /proc. */
static void signal_children(int sig)
{
    DIR *d = opendir("/proc");
    if (!d)
        return;
    const pid_t me = getpid();
    struct dirent *de;
    while ((de = readdir(d))) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 0 || pid == me)
            continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        const char *rp = strrchr(buf, ')'); /* the name in parentheses may hold spaces */
        long ppid = -1;
        char state;
        if (rp && sscanf(rp + 1, " %c %ld", &state, &ppid) == 2 && ppid == me && state != 'Z')
            kill((pid_t)pid, sig);
    }
    closedir(d);
}

static int make_log_dir(const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "ds-launch: --enable_each_rank_log %s: not a directory\n", dir);
            return -1;
        }
        return 0;
    }
    if (mkdir(dir, 0777) != 0) {
        fprintf(stderr, "ds-launch: --enable_each_rank_log %s: cannot create the directory: %s\n",
                dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* The per-job secret the ranks prove to the rendezvous (libds <ds/dist.h>): 32 random bytes
 * in hex, passed in the environment only (never on a command line, never printed). A secret
 * already in DS_JOB_SECRET is kept, so that the launchers of one job on several nodes
 * (--no_ssh) can share one. */
/* hex[2 n + 1]: n random bytes in hex; -1 (said, naming what) when getrandom fails */
static int random_hex(char *hex, size_t n, const char *what)
{
    unsigned char raw[64];
    size_t got = 0;
    if (n > sizeof raw)
        return -1;
    while (got < n) {
        ssize_t r = getrandom(raw + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fprintf(stderr, "ds-launch: cannot make %s: getrandom: %s\n", what, strerror(errno));
            return -1;
        }
        got += (size_t)r;
    }
    for (size_t i = 0; i < n; i++)
        snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    memset(raw, 0, sizeof raw);
    return 0;
}

static int set_job_secret(void)
{
    const char *have = getenv("DS_JOB_SECRET");
    if (have && *have)
        return 0;
    char hex[2 * 32 + 1];
    if (random_hex(hex, 32, "the job secret") != 0)
        return -1;
    int rc = setenv("DS_JOB_SECRET", hex, 1);
    memset(hex, 0, sizeof hex);
    if (rc != 0) {
        fprintf(stderr, "ds-launch: cannot set DS_JOB_SECRET: %s\n", strerror(errno));
        return -1;
    }
    return 0;
}

/* One rank to start: its global rank, its host (for messages) and its whole environment. */
typedef struct job_rank {
    int rank;
    const char *host;
    ds_launch_env env;
} job_rank;

/* Run these ranks on this machine: one process group each, output streamed (prefixed with
 * the rank when `prefix`), torn down on a failure or a signal. watch_fd >= 0 (the node agent's
 * stdin, the ssh channel): when it reaches end of file the ranks are torn down as for a signal.
 * Returns the exit status of the job. */
static int run_ranks(const options *o, job_rank *jr, int world, bool prefix, bool stdin_to_null,
                     int watch_fd)
{
    bool stdin_is_tty = stdin_to_null || isatty(0);
    char stamp[32] = "";
    if (o->rank_log_dir) {
        if (make_log_dir(o->rank_log_dir) != 0)
            return EXIT_USAGE;
        time_t t = time(NULL);
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(stamp, sizeof stamp, "%Y%m%d%H%M%S", &tm); /* DeepSpeed's log name */
    }
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        perror("ds-launch: pipe");
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    const int caught[] = {SIGCHLD, SIGINT, SIGTERM, SIGHUP};
    sigset_t block, old;
    sigemptyset(&block);
    for (size_t k = 0; k < 4; k++) {
        sigaction(caught[k], &sa, NULL);
        sigaddset(&block, caught[k]);
    }
    signal(SIGPIPE, SIG_IGN);
    /* Orphans of the ranks become our children, so they can be reaped and counted. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);

    rank_proc *ranks = calloc((size_t)world, sizeof *ranks);
    if (!ranks) {
        fputs("ds-launch: out of memory\n", stderr);
        return 1;
    }
    int running = 0, exit_code = 0, failed_rank = -1, stop_signal = 0;
    bool tearing_down = false, killed = false;
    double kill_at = 0;

    for (int rk = 0; rk < world; rk++) {
        {
            rank_proc *r = &ranks[rk];
            r->rank = jr[rk].rank;
            r->node = rk;
            r->out.fd = r->err.fd = -1;
            r->out.out_fd = 1;
            r->err.out_fd = 2;
            ds_launch_env env = jr[rk].env;
            int out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, log_fd = -1;
            if (o->rank_log_dir) {
                char path[PATH_MAX];
                snprintf(path, sizeof path, "%s/%s_rank%d.log", o->rank_log_dir, stamp, r->rank);
                log_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                if (log_fd < 0)
                    fprintf(stderr, "ds-launch: %s: %s\n", path, strerror(errno));
            } else if (prefix && (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0)) {
                perror("ds-launch: pipe");
            }
            bool setup_failed = (o->rank_log_dir && log_fd < 0) ||
                                (prefix && (out_pipe[1] < 0 || err_pipe[1] < 0));
            pid_t pid = -1;
            if (!setup_failed && !tearing_down) {
                sigprocmask(SIG_BLOCK, &block, &old);
                const pid_t launcher = getpid();
                pid = fork();
                if (pid == 0) {
                    struct sigaction dfl = {.sa_handler = SIG_DFL};
                    sigemptyset(&dfl.sa_mask);
                    for (size_t k = 0; k < 4; k++)
                        sigaction(caught[k], &dfl, NULL);
                    signal(SIGPIPE, SIG_DFL);
                    sigprocmask(SIG_SETMASK, &old, NULL);
                    setpgid(0, 0);
                    /* ds-launch killed outright (SIGKILL, the OOM killer) takes its ranks along:
                     * it could not tear them down itself (this thread forked them and lives as
                     * long as ds-launch) */
                    prctl(PR_SET_PDEATHSIG, SIGKILL);
                    if (getppid() != launcher)
                        _exit(137); /* it died before the line above */
                    /* A rank in its own process group that read the terminal would be stopped
                     * (SIGTTIN) and hang the job; a terminal is not the ranks' input. */
                    if (stdin_is_tty) {
                        int null_fd = open("/dev/null", O_RDONLY);
                        if (null_fd >= 0 && null_fd != 0) {
                            dup2(null_fd, 0);
                            close(null_fd);
                        }
                    }
                    if (log_fd >= 0) {
                        dup2(log_fd, 1);
                        dup2(log_fd, 2);
                    } else if (prefix) {
                        dup2(out_pipe[1], 1);
                        dup2(err_pipe[1], 2);
                    }
                    for (int k = 0; k < env.count; k++)
                        setenv(env.vars[k].name, env.vars[k].value, 1);
                    execvp(o->program[0], o->program);
                    const int e = errno; /* a bare name is looked up in PATH only (./ds-train, not ds-train) */
                    fprintf(stderr, "ds-launch: rank %d: cannot run %s: %s%s%s%s\n", r->rank, o->program[0], strerror(e),
                            e == ENOENT && !strchr(o->program[0], '/') ? " (not found in PATH; give its path, as ./" : "",
                            e == ENOENT && !strchr(o->program[0], '/') ? o->program[0] : "",
                            e == ENOENT && !strchr(o->program[0], '/') ? ")" : "");
                    _exit(127);
                }
                if (pid > 0)
                    setpgid(pid, pid); /* both sides, so no signal can miss the group */
                else
                    perror("ds-launch: fork");
                sigprocmask(SIG_SETMASK, &old, NULL);
            }
            if (log_fd >= 0)
                close(log_fd);
            if (out_pipe[1] >= 0)
                close(out_pipe[1]);
            if (err_pipe[1] >= 0)
                close(err_pipe[1]);
            r->out.fd = out_pipe[0];
            r->err.fd = err_pipe[0];
            if (pid > 0) {
                r->pid = pid;
                r->running = true;
                running++;
            } else if (!tearing_down) {
                /* Could not start this rank: stop the ones already started. */
                fprintf(stderr, "ds-launch: rank %d could not be started; stopping the job\n", r->rank);
                if (o->agent && o->stop_token)
                    fprintf(stderr, AGENT_STOP_FMT, o->stop_token);
                exit_code = 1;
                failed_rank = rk; /* an index into ranks */
                tearing_down = true;
                signal_job(ranks, world, SIGTERM);
                kill_at = now_s() + o->kill_grace;
            }
        }
    }

    while (running > 0) {
        struct pollfd pfd[2 + 2 * (size_t)world];
        rank_proc *owner[2 + 2 * (size_t)world];
        stream *which[2 + 2 * (size_t)world];
        nfds_t nfd = 0;
        pfd[nfd++] = (struct pollfd){.fd = signal_pipe[0], .events = POLLIN};
        for (int k = 0; k < world; k++) {
            stream *ss[2] = {&ranks[k].out, &ranks[k].err};
            for (int j = 0; j < 2; j++)
                if (ss[j]->fd >= 0) {
                    owner[nfd] = &ranks[k];
                    which[nfd] = ss[j];
                    pfd[nfd++] = (struct pollfd){.fd = ss[j]->fd, .events = POLLIN};
                }
        }
        nfds_t watch_at = 0;
        if (watch_fd >= 0) {
            watch_at = nfd;
            owner[nfd] = NULL;
            which[nfd] = NULL;
            pfd[nfd++] = (struct pollfd){.fd = watch_fd, .events = POLLIN};
        }
        int timeout = -1;
        if (tearing_down && !killed) {
            double left = kill_at - now_s();
            timeout = left > 0 ? (int)(left * 1000) + 1 : 0;
        }
        int ready = poll(pfd, nfd, timeout);
        if (ready < 0 && errno != EINTR) {
            perror("ds-launch: poll");
            break;
        }
        for (nfds_t k = 1; ready > 0 && k < nfd; k++)
            if (pfd[k].revents && which[k])
                stream_read(which[k], owner[k]->rank);
        if (ready > 0 && watch_at > 0 && pfd[watch_at].revents) {
            /* The node agent's stdin is the ssh channel: end of file means the launcher closed
             * it (teardown) or the connection dropped. Either way, the ranks go. */
            char junk[256];
            ssize_t got = read(watch_fd, junk, sizeof junk);
            if (got <= 0 && !(got < 0 && (errno == EINTR || errno == EAGAIN))) {
                watch_fd = -1;
                if (!tearing_down) {
                    fprintf(stderr, "ds-launch: node agent: the launcher's connection closed; "
                                    "stopping %d rank(s)\n", world);
                    stop_signal = SIGHUP;
                    tearing_down = true;
                    signal_job(ranks, world, SIGTERM);
                    kill_at = now_s() + o->kill_grace;
                }
            }
        }
        if (ready > 0 && pfd[0].revents) {
            unsigned char sigs[64];
            ssize_t got = read(signal_pipe[0], sigs, sizeof sigs);
            for (ssize_t k = 0; k < got; k++) {
                int sig = sigs[k];
                if (sig == SIGCHLD)
                    continue;
                if (!tearing_down) {
                    fprintf(stderr, "ds-launch: received %s; stopping all %d ranks\n", signal_name(sig),
                            world);
                    stop_signal = sig;
                    tearing_down = true;
                    signal_job(ranks, world, SIGTERM);
                    kill_at = now_s() + o->kill_grace;
                } else if (!killed) {
                    /* a second signal: do not wait out the grace period */
                    fprintf(stderr, "ds-launch: received %s again; killing all ranks\n",
                            signal_name(sig));
                    signal_job(ranks, world, SIGKILL);
                    killed = true;
                }
            }
        }
        /* Reap whatever has exited (SIGCHLD may be coalesced, so loop). As a subreaper we also
         * get the ranks' orphaned descendants: reaped here, so no zombie outlives the job. */
        for (;;) {
            int status;
            pid_t w = waitpid(-1, &status, WNOHANG);
            if (w <= 0)
                break;
            rank_proc *r = NULL;
            for (int k = 0; k < world && !r; k++)
                if (ranks[k].pid == w && ranks[k].running)
                    r = &ranks[k];
            if (!r)
                continue;
            r->running = false;
            r->status = status;
            running--;
            bool bad = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
            if (bad && !tearing_down) {
                char what[128];
                describe(status, what, sizeof what);
                fprintf(stderr, "ds-launch: rank %d on %s %s; stopping the other ranks\n", r->rank,
                        jr[r->node].host, what);
                if (o->agent && o->stop_token) /* the launcher stops the other nodes now, not after this
                                                  one's grace */
                    fprintf(stderr, AGENT_STOP_FMT, o->stop_token);
                failed_rank = r->node;
                exit_code = exit_code_of(status);
                tearing_down = true;
                signal_job(ranks, world, SIGTERM);
                kill_at = now_s() + o->kill_grace;
            }
        }
        if (tearing_down && !killed && running > 0 && now_s() >= kill_at) {
            fprintf(stderr, "ds-launch: %d rank(s) still running after %d s; sending SIGKILL\n",
                    running, o->kill_grace);
            signal_job(ranks, world, SIGKILL);
            killed = true;
        }
    }
    /* The ranks are gone; take what is left in the pipes without waiting for processes the
     * ranks may have left holding them. */
    for (int k = 0; k < world; k++) {
        stream *ss[2] = {&ranks[k].out, &ranks[k].err};
        for (int j = 0; j < 2; j++)
            if (ss[j]->fd >= 0) {
                fcntl(ss[j]->fd, F_SETFL, O_NONBLOCK);
                while (ss[j]->fd >= 0) {
                    ssize_t n = read(ss[j]->fd, ss[j]->buf + ss[j]->len, sizeof ss[j]->buf - ss[j]->len);
                    if (n > 0) {
                        ss[j]->len += (size_t)n;
                        stream_emit(ss[j], ranks[k].rank, false);
                        continue;
                    }
                    stream_emit(ss[j], ranks[k].rank, true);
                    close(ss[j]->fd);
                    ss[j]->fd = -1;
                }
            }
    }
    /* After a failure, nothing the ranks started may outlive the job: kill their groups and
     * reap what we inherited (bounded: a process that left its group is not ours to wait on). */
    if (tearing_down) {
        signal_job(ranks, world, SIGKILL);
        for (int tries = 0; tries < 100; tries++) {
            pid_t w;
            while ((w = waitpid(-1, NULL, WNOHANG)) > 0)
                ;
            if (w < 0)
                break; /* ECHILD: nothing left */
            /* what is still our child left its rank's group (setsid): it is the job's too */
            signal_children(SIGKILL);
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (failed_rank >= 0) {
        fprintf(stderr, "ds-launch: job failed: rank %d on %s, exit status %d\n",
                ranks[failed_rank].rank, jr[failed_rank].host, exit_code);
    } else if (stop_signal) {
        exit_code = 128 + stop_signal;
    }
    free(ranks);
    return exit_code;
}

/* Local mode: every rank of the plan on this machine, or with --no_ssh only the ranks of node
 * --node_rank (DeepSpeed's --no_ssh: the user starts one ds-launch per node). */
static int run_job(const options *o, const ds_launch_plan *plan, const char *addr, int port,
                   int cores, const ds_launch_env *exports)
{
    int world = plan->world_size;
    job_rank *jr = calloc((size_t)world, sizeof *jr);
    if (!jr) {
        fputs("ds-launch: out of memory\n", stderr);
        return 1;
    }
    int count = 0;
    for (int n = 0; n < plan->num_nodes; n++) {
        if (o->no_ssh && n != o->node_rank)
            continue;
        for (int l = 0; l < plan->nodes[n].num_ids; l++) {
            int rk = plan->nodes[n].first_rank + l;
            jr[count].rank = rk;
            jr[count].host = plan->nodes[n].host;
            rank_env(plan, n, l, addr, port, cores, exports, false, &jr[count].env);
            count++;
        }
    }
    int rc = run_ranks(o, jr, count, world > 1 && !o->rank_log_dir, false, -1);
    for (int k = 0; k < count; k++)
        ds_launch_env_free(&jr[k].env);
    free(jr);
    return rc;
}

/* ---- remote nodes: the per-node agent ------------------------------------------------- */

/* `ds-launch --node-agent`: what the launcher runs on each remote node over ssh. Its plan
 * comes as one line of JSON on stdin (so no value goes through the remote shell): host,
 * prefix, kill_grace, rank_log_dir, cwd, secret, program (argv), ranks ([{rank, env}]).
 * It runs the ranks as local mode does and exits with the job's status; when stdin (the
 * ssh channel) closes, it tears its ranks down. */
static int node_agent(void)
{
    size_t cap = 4096, len = 0;
    char *line = malloc(cap);
    for (;;) {
        if (!line)
            return 1;
        char c;
        ssize_t n = read(0, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || c == '\n')
            break;
        if (len + 1 >= cap) {
            cap *= 2;
            char *bigger = realloc(line, cap);
            if (!bigger) {
                free(line);
                return 1;
            }
            line = bigger;
        }
        line[len++] = c;
    }
    line[len] = '\0';
    json_object *root = json_tokener_parse(line);
    memset(line, 0, len); /* it held the job secret */
    free(line);
    json_object *v, *prog, *rks;
    if (!root || !json_object_object_get_ex(root, "program", &prog) ||
        !json_object_object_get_ex(root, "ranks", &rks) ||
        !json_object_is_type(prog, json_type_array) || !json_object_is_type(rks, json_type_array)) {
        fputs("ds-launch: node agent: no valid plan on stdin\n", stderr);
        return EXIT_USAGE;
    }
    options o;
    memset(&o, 0, sizeof o);
    o.agent = true;
    if (json_object_object_get_ex(root, "stop_token", &v) && json_object_is_type(v, json_type_string))
        o.stop_token = json_object_get_string(v);
    o.kill_grace = json_object_object_get_ex(root, "kill_grace", &v) ? json_object_get_int(v) : 30;
    if (json_object_object_get_ex(root, "rank_log_dir", &v) && json_object_is_type(v, json_type_string))
        o.rank_log_dir = json_object_get_string(v);
    bool prefix = json_object_object_get_ex(root, "prefix", &v) && json_object_get_boolean(v);
    const char *host = json_object_object_get_ex(root, "host", &v) ? json_object_get_string(v) : "?";
    if (json_object_object_get_ex(root, "secret", &v) && json_object_is_type(v, json_type_string))
        setenv("DS_JOB_SECRET", json_object_get_string(v), 1);
    if (json_object_object_get_ex(root, "cwd", &v) && json_object_is_type(v, json_type_string) &&
        chdir(json_object_get_string(v)) != 0)
        fprintf(stderr, "ds-launch: node agent on %s: warning: cannot cd to %s: %s\n", host,
                json_object_get_string(v), strerror(errno));
    size_t argc = json_object_array_length(prog);
    if (argc == 0) {
        fputs("ds-launch: node agent: empty program\n", stderr);
        return EXIT_USAGE;
    }
    o.program = calloc(argc + 1, sizeof *o.program);
    for (size_t k = 0; k < argc; k++)
        o.program[k] = (char *)json_object_get_string(json_object_array_get_idx(prog, k));
    o.program_argc = (int)argc;
    int world = (int)json_object_array_length(rks);
    job_rank *jr = calloc((size_t)world + 1, sizeof *jr);
    ds_error err = {0};
    for (int k = 0; k < world; k++) {
        json_object *r = json_object_array_get_idx(rks, (size_t)k), *env;
        jr[k].rank = json_object_object_get_ex(r, "rank", &v) ? json_object_get_int(v) : k;
        jr[k].host = host;
        if (json_object_object_get_ex(r, "env", &env) && json_object_is_type(env, json_type_object)) {
            json_object_object_foreach(env, name, val)
            {
                if (ds_launch_env_set(&jr[k].env, name, json_object_get_string(val), &err) != DS_OK)
                    fail_status("node agent", &err);
            }
        }
    }
    /* OMP_NUM_THREADS not given (the user set none): this host's cores over its ranks, as the
     * launcher does for its own host */
    const int here = count_cores() / (world > 0 ? world : 1);
    char omp[16];
    snprintf(omp, sizeof omp, "%d", here > 0 ? here : 1);
    for (int k = 0; k < world; k++)
        if (!env_has(&jr[k].env, "OMP_NUM_THREADS") &&
            ds_launch_env_set(&jr[k].env, "OMP_NUM_THREADS", omp, &err) != DS_OK)
            fail_status("node agent", &err);
    int rc = run_ranks(&o, jr, world, prefix, true, 0);
    for (int k = 0; k < world; k++)
        ds_launch_env_free(&jr[k].env);
    free(jr);
    free(o.program);
    json_object_put(root);
    return rc;
}

/* ---- remote nodes: the launcher side (libssh) ------------------------------------------ */

typedef struct node_conn {
    const options *o;
    const char *host;
    char *command;   /* the remote command: the agent's path, shell-quoted, and --node-agent */
    char *plan_json; /* the agent's stdin */
    pthread_t thread;
    int exit_code;
    int index;
    bool started;
} node_conn;

static node_conn *remote_nodes;
static pthread_mutex_t remote_lock = PTHREAD_MUTEX_INITIALIZER;
static bool remote_teardown;  /* under remote_lock */
static int remote_failed = -1; /* the first node that failed */
static int remote_done;
/* DECISIONS.md: every node connects and authenticates before any starts its ranks: a thread
 * that has waits here (remote_ready of remote_total) until all have, or one has failed */
static pthread_cond_t remote_cond = PTHREAD_COND_INITIALIZER;
static int remote_ready, remote_total;
static char stop_token[33]; /* this job's AGENT_STOP_FMT token: 16 random bytes in hex */
static char stop_line[128];  /* AGENT_STOP_FMT with it, as the agents write it */
static size_t stop_line_len;

/* The job goes down (under remote_lock): the first failing node (-1: none, a signal) is kept,
 * and the node threads waiting to start their ranks learn it */
static void begin_teardown(int node)
{
    if (remote_teardown)
        return;
    remote_teardown = true;
    if (node >= 0)
        remote_failed = node;
    pthread_cond_broadcast(&remote_cond);
}
static int wake_pipe[2] = {-1, -1};

static void wake_main(void)
{
    char b = 1;
    ssize_t r = write(wake_pipe[1], &b, 1);
    (void)r;
}

static bool teardown_requested(void)
{
    pthread_mutex_lock(&remote_lock);
    bool t = remote_teardown;
    pthread_mutex_unlock(&remote_lock);
    return t;
}

static void locked_write(int fd, const char *p, size_t n)
{
    pthread_mutex_lock(&remote_lock);
    write_all(fd, p, n);
    pthread_mutex_unlock(&remote_lock);
}

static void node_fail(node_conn *nc, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A node's output, kept until a line is complete (or the buffer full), then written whole */
typedef struct line_buf {
    int fd;
    int node; /* the node's index: its agent's AGENT_STOP line stops the job */
    char buf[16384];
    size_t len;
} line_buf;

/* the lines of buf[0, end) written, less an agent's AGENT_STOP, which starts the teardown */
static void lines_out(line_buf *lb, const char *buf, size_t end)
{
    size_t from = 0;
    for (size_t k = 0; k < end;) {
        const char *nl = memchr(buf + k, '\n', end - k);
        size_t next = nl ? (size_t)(nl - buf) + 1 : end;
        if (lb->fd == 2 && next - k == stop_line_len && memcmp(buf + k, stop_line, stop_line_len) == 0) {
            locked_write(lb->fd, buf + from, k - from);
            from = next;
            pthread_mutex_lock(&remote_lock);
            begin_teardown(lb->node);
            pthread_mutex_unlock(&remote_lock);
            wake_main();
        }
        k = next;
    }
    locked_write(lb->fd, buf + from, end - from);
}

static void lines_write(line_buf *lb, const char *p, size_t n)
{
    while (n) {
        size_t k = sizeof lb->buf - lb->len < n ? sizeof lb->buf - lb->len : n;
        memcpy(lb->buf + lb->len, p, k);
        lb->len += k, p += k, n -= k;
        size_t end = lb->len;
        while (end > 0 && lb->buf[end - 1] != '\n')
            end--;
        if (end == 0 && lb->len == sizeof lb->buf) /* a line longer than the buffer: as it is */
            end = lb->len;
        if (end) {
            lines_out(lb, lb->buf, end);
            memmove(lb->buf, lb->buf + end, lb->len - end);
            lb->len -= end;
        }
    }
}

static void lines_flush(line_buf *lb)
{
    if (lb->len)
        lines_out(lb, lb->buf, lb->len);
    lb->len = 0;
}

static void node_fail(node_conn *nc, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    nc->exit_code = code;
    pthread_mutex_lock(&remote_lock);
    if (msg[0])
        fprintf(stderr, "ds-launch: %s\n", msg);
    begin_teardown(nc->index);
    pthread_mutex_unlock(&remote_lock);
}

static void *node_thread(void *arg)
{
    node_conn *nc = arg;
    const options *o = nc->o;
    ssh_session s = ssh_new();
    ssh_channel ch = NULL;
    char port_text[16] = "22";
    if (!s) {
        node_fail(nc, 1, "%s: cannot make an ssh session", nc->host);
        goto out;
    }
    /* [user@]host[:port]: libssh takes user@host; a hostfile's :port (one colon, digits) is the
     * node's own and wins over --ssh_port and ~/.ssh/config */
    char hostpart[256];
    snprintf(hostpart, sizeof hostpart, "%s", nc->host);
    char *colon = strchr(hostpart, ':');
    unsigned int host_port = 0;
    if (colon && !strchr(colon + 1, ':') && colon[1] && strspn(colon + 1, "0123456789") == strlen(colon + 1)) {
        long hp = strlen(colon + 1) > 5 ? 0 : atol(colon + 1);
        if (hp < 1 || hp > 65535) {
            node_fail(nc, 255, "host %s: port %s: expected 1..65535", nc->host, colon + 1);
            goto out;
        }
        host_port = (unsigned int)hp;
        *colon = '\0';
    }
    ssh_options_set(s, SSH_OPTIONS_HOST, hostpart);
    ssh_options_parse_config(s, NULL); /* ~/.ssh/config: User, Port, IdentityFile, ... */
    if (o->ssh_port > 0)
        ssh_options_set(s, SSH_OPTIONS_PORT, &o->ssh_port);
    if (host_port > 0)
        ssh_options_set(s, SSH_OPTIONS_PORT, &host_port);
    unsigned int port_now = 22;
    if (ssh_options_get_port(s, &port_now) == SSH_OK)
        snprintf(port_text, sizeof port_text, "%u", port_now);
    long timeout = o->ssh_timeout;
    ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &timeout);
    if (ssh_connect(s) != SSH_OK) {
        node_fail(nc, 255, "host %s (port %s): cannot connect over ssh (timeout %d s): %s",
                  nc->host, port_text, o->ssh_timeout, ssh_get_error(s));
        goto out;
    }
    enum ssh_known_hosts_e kh = ssh_session_is_known_server(s);
    if (kh != SSH_KNOWN_HOSTS_OK) {
        const char *why = "";
        switch (kh) {
        case SSH_KNOWN_HOSTS_CHANGED:
            why = "the host key has CHANGED from the one in known_hosts (possible "
                  "man-in-the-middle attack); refusing to connect";
            break;
        case SSH_KNOWN_HOSTS_OTHER:
            why = "known_hosts has a key of another type for this host; refusing to connect";
            break;
        case SSH_KNOWN_HOSTS_NOT_FOUND:
            why = "no known_hosts file (add the host key to ~/.ssh/known_hosts, e.g. with "
                  "ssh-keyscan)";
            break;
        case SSH_KNOWN_HOSTS_UNKNOWN:
            why = "the host key is unknown: not in ~/.ssh/known_hosts (add it, e.g. with "
                  "ssh-keyscan, after checking it)";
            break;
        default:
            why = ssh_get_error(s);
            break;
        }
        node_fail(nc, 255, "host %s (port %s): host key not verified: %s", nc->host, port_text,
                  why);
        goto out;
    }
    int auth = ssh_userauth_publickey_auto(s, NULL, NULL);
    if (auth != SSH_AUTH_SUCCESS) {
        node_fail(nc, 255, "host %s (port %s): key authentication failed (agent and default keys): %s",
                  nc->host, port_text, ssh_get_error(s));
        goto out;
    }
    pthread_mutex_lock(&remote_lock);
    remote_ready++;
    pthread_cond_broadcast(&remote_cond);
    while (remote_ready < remote_total && !remote_teardown)
        pthread_cond_wait(&remote_cond, &remote_lock);
    const bool go = !remote_teardown;
    pthread_mutex_unlock(&remote_lock);
    if (!go) /* another node failed (or a signal came) before any rank started: none starts here */
        goto out;
    ch = ssh_channel_new(s);
    if (!ch || ssh_channel_open_session(ch) != SSH_OK ||
        ssh_channel_request_exec(ch, nc->command) != SSH_OK) {
        node_fail(nc, 255, "host %s: cannot run the node agent: %s", nc->host, ssh_get_error(s));
        goto out;
    }
    nc->started = true;
    size_t jl = strlen(nc->plan_json);
    if (ssh_channel_write(ch, nc->plan_json, (uint32_t)jl) != (int)jl ||
        ssh_channel_write(ch, "\n", 1) != 1) {
        node_fail(nc, 255, "host %s: cannot send the plan to the node agent: %s", nc->host,
                  ssh_get_error(s));
        goto out;
    }
    bool eof_sent = false, lost = false;
    double deadline = 0;
    char buf[16384];
    /* the agent's stdout and stderr, passed on a whole line at a time: chunks of two nodes
     * written as they came mixed their lines */
    line_buf lb_out = {.fd = 1, .node = nc->index}, lb_err = {.fd = 2, .node = nc->index};
    for (;;) {
        if (!eof_sent && teardown_requested()) {
            ssh_channel_send_eof(ch); /* the agent sees end of file: it stops its ranks */
            eof_sent = true;
            deadline = now_s() + o->kill_grace + 15;
        }
        int n = ssh_channel_read_timeout(ch, buf, sizeof buf, 0, 200);
        if (n > 0)
            lines_write(&lb_out, buf, (size_t)n);
        else if (n == 0) { /* 200 ms without output: a partial line (a progress bar) goes out as it is */
            lines_flush(&lb_out);
            lines_flush(&lb_err);
        }
        int e;
        while ((e = ssh_channel_read_nonblocking(ch, buf, sizeof buf, 1)) > 0)
            lines_write(&lb_err, buf, (size_t)e);
        if (e == SSH_EOF)
            e = 0;
        if (n == SSH_EOF)
            n = 0;
        if (n == SSH_ERROR || e == SSH_ERROR) {
            lost = true;
            break;
        }
        if ((ssh_channel_is_eof(ch) || ssh_channel_is_closed(ch)) && n == 0 && e == 0)
            break;
        if (eof_sent && now_s() > deadline) {
            lost = true;
            break;
        }
    }
    lines_flush(&lb_out);
    lines_flush(&lb_err);
    if (lost) {
        node_fail(nc, 255, "host %s: lost the connection to the node agent: %s", nc->host,
                  ssh_get_error(s));
        goto out;
    }
    int st = ssh_channel_get_exit_status(ch);
    if (st < 0) {
        node_fail(nc, 255, "host %s: the node agent ended without an exit status", nc->host);
    } else if (st != 0) {
        bool first = !teardown_requested();
        node_fail(nc, st, first ? "node %s failed with status %d; stopping the other nodes" : "",
                  nc->host, st);
    } else {
        nc->exit_code = 0;
    }
out:
    pthread_mutex_lock(&remote_lock);
    remote_done++;
    pthread_mutex_unlock(&remote_lock);
    if (ch) {
        ssh_channel_close(ch);
        ssh_channel_free(ch);
    }
    if (s) {
        ssh_disconnect(s);
        ssh_free(s);
    }
    wake_main();
    return NULL;
}

/* Quote s for a POSIX shell: '...' with each ' as '\''. */
static char *shell_quote(const char *s)
{
    size_t n = 3;
    for (const char *p = s; *p; p++)
        n += *p == '\'' ? 4 : 1;
    char *q = malloc(n), *w = q;
    if (!q)
        return NULL;
    *w++ = '\'';
    for (const char *p = s; *p; p++) {
        if (*p == '\'') {
            memcpy(w, "'\\''", 4);
            w += 4;
        } else {
            *w++ = *p;
        }
    }
    *w++ = '\'';
    *w = '\0';
    return q;
}

/* Remote mode: one ssh connection per node (opened in parallel), each running the node agent.
 * A node's failure or a signal to ds-launch closes every agent's stdin, which tears its ranks
 * down (SIGTERM, SIGKILL after --kill_grace). */
static int run_remote(const options *o, const ds_launch_plan *plan, const char *addr, int port,
                      int cores, const ds_launch_env *exports)
{
    if (random_hex(stop_token, 16, "the job's stop token") != 0)
        return 1;
    stop_line_len = (size_t)snprintf(stop_line, sizeof stop_line, AGENT_STOP_FMT, stop_token);
    int nn = plan->num_nodes;
    bool prefix = plan->world_size > 1 && !o->rank_log_dir;
    const char *agent = getenv("DS_LAUNCH_AGENT");
    char self[PATH_MAX];
    if (!agent || !*agent) {
        ssize_t l = readlink("/proc/self/exe", self, sizeof self - 1);
        if (l <= 0) {
            perror("ds-launch: /proc/self/exe");
            return 1;
        }
        self[l] = '\0';
        agent = self;
        /* Run from a libtool build tree, this is .libs/[lt-]ds-launch, which cannot find
         * libds.so by itself: use the wrapper script beside .libs instead. */
        char *slash = strrchr(self, '/');
        if (slash && slash - self >= 6 && strncmp(slash - 6, "/.libs", 6) == 0) {
            const char *base = slash + 1;
            if (strncmp(base, "lt-", 3) == 0)
                base += 3;
            static char wrapper[PATH_MAX];
            int wl = snprintf(wrapper, sizeof wrapper, "%.*s/%s", (int)(slash - 6 - self), self, base);
            if (wl > 0 && (size_t)wl < sizeof wrapper && access(wrapper, X_OK) == 0)
                agent = wrapper;
        }
    }
    char *quoted = shell_quote(agent);
    char *cwd = getcwd(NULL, 0);
    remote_nodes = calloc((size_t)nn, sizeof *remote_nodes);
    if (!quoted || !remote_nodes) {
        fputs("ds-launch: out of memory\n", stderr);
        return 1;
    }
    for (int n = 0; n < nn; n++) {
        node_conn *nc = &remote_nodes[n];
        nc->o = o;
        nc->index = n;
        nc->host = plan->nodes[n].host;
        if (asprintf(&nc->command, "exec %s --node-agent", quoted) < 0)
            return 1;
        json_object *root = json_object_new_object();
        json_object_object_add(root, "host", json_object_new_string(nc->host));
        json_object_object_add(root, "prefix", json_object_new_boolean(prefix));
        json_object_object_add(root, "kill_grace", json_object_new_int(o->kill_grace));
        if (o->rank_log_dir)
            json_object_object_add(root, "rank_log_dir", json_object_new_string(o->rank_log_dir));
        if (cwd)
            json_object_object_add(root, "cwd", json_object_new_string(cwd));
        json_object_object_add(root, "secret", json_object_new_string(getenv("DS_JOB_SECRET")));
        json_object_object_add(root, "stop_token", json_object_new_string(stop_token));
        json_object *prog = json_object_new_array();
        for (int k = 0; k < o->program_argc; k++)
            json_object_array_add(prog, json_object_new_string(o->program[k]));
        json_object_object_add(root, "program", prog);
        json_object *rks = json_object_new_array();
        for (int l = 0; l < plan->nodes[n].num_ids; l++) {
            ds_launch_env env;
            rank_env(plan, n, l, addr, port, cores, exports, true, &env);
            json_object *r = json_object_new_object(), *e = json_object_new_object();
            json_object_object_add(r, "rank", json_object_new_int(plan->nodes[n].first_rank + l));
            for (int k = 0; k < env.count; k++)
                json_object_object_add(e, env.vars[k].name, json_object_new_string(env.vars[k].value));
            json_object_object_add(r, "env", e);
            json_object_array_add(rks, r);
            ds_launch_env_free(&env);
        }
        json_object_object_add(root, "ranks", rks);
        nc->plan_json = strdup(json_object_to_json_string_ext(
            root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(root);
    }
    free(quoted);
    free(cwd);
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0 || pipe2(wake_pipe, O_CLOEXEC) != 0) {
        perror("ds-launch: pipe");
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    const int caught[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t k = 0; k < 3; k++)
        sigaction(caught[k], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    ssh_init();
    int started = 0;
    remote_total = nn;
    for (int n = 0; n < nn; n++) {
        if (pthread_create(&remote_nodes[n].thread, NULL, node_thread, &remote_nodes[n]) != 0) {
            fprintf(stderr, "ds-launch: cannot start a thread for host %s\n", remote_nodes[n].host);
            pthread_mutex_lock(&remote_lock);
            begin_teardown(-1);
            pthread_mutex_unlock(&remote_lock);
            break;
        }
        started++;
    }
    int stop_signal = 0;
    for (;;) {
        pthread_mutex_lock(&remote_lock);
        bool all_done = remote_done >= started;
        pthread_mutex_unlock(&remote_lock);
        if (all_done)
            break;
        struct pollfd pfd[2] = {{.fd = signal_pipe[0], .events = POLLIN},
                                {.fd = wake_pipe[0], .events = POLLIN}};
        if (poll(pfd, 2, 1000) < 0 && errno != EINTR)
            break;
        char junk[64];
        if (pfd[1].revents && read(wake_pipe[0], junk, sizeof junk) < 0)
            continue;
        if (pfd[0].revents) {
            ssize_t got = read(signal_pipe[0], junk, sizeof junk);
            if (got > 0) {
                pthread_mutex_lock(&remote_lock);
                if (!remote_teardown && !stop_signal) {
                    stop_signal = (unsigned char)junk[0];
                    begin_teardown(-1);
                    fprintf(stderr, "ds-launch: received %s; stopping all %d ranks on %d nodes\n",
                            signal_name(stop_signal), plan->world_size, nn);
                }
                pthread_mutex_unlock(&remote_lock);
            }
        }
    }
    for (int n = 0; n < started; n++)
        pthread_join(remote_nodes[n].thread, NULL);
    int rc = 0;
    if (remote_failed >= 0 && remote_failed < nn) {
        rc = remote_nodes[remote_failed].exit_code;
        fprintf(stderr, "ds-launch: job failed: node %s, exit status %d\n",
                remote_nodes[remote_failed].host, rc);
    } else if (stop_signal) {
        rc = 128 + stop_signal;
    } else {
        for (int n = 0; n < nn && !rc; n++)
            rc = remote_nodes[n].exit_code;
        if (started < nn)
            rc = 1;
    }
    for (int n = 0; n < nn; n++) {
        free(remote_nodes[n].command);
        if (remote_nodes[n].plan_json) {
            memset(remote_nodes[n].plan_json, 0, strlen(remote_nodes[n].plan_json));
            free(remote_nodes[n].plan_json);
        }
    }
    free(remote_nodes);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--node-agent") == 0)
        return node_agent();
    options o;
    parse_args(&o, argc, argv);
    ds_launch_plan plan;
    bool remote = make_plan(&o, &plan);
    if (o.no_ssh || o.node_rank >= 0) {
        /* DeepSpeed: --no_ssh needs --node_rank; each node runs its own launcher */
        if (!o.no_ssh || o.node_rank < 0) {
            fprintf(stderr, "ds-launch: %s needs %s (each node runs its own ds-launch with --no_ssh --node_rank N)\n",
                    o.no_ssh ? "--no_ssh" : "--node_rank", o.no_ssh ? "--node_rank N" : "--no_ssh");
            ds_launch_plan_free(&plan);
            return 2;
        }
        if (o.node_rank >= plan.num_nodes) {
            fprintf(stderr, "ds-launch: --no_ssh and --node_rank go together, with a node rank from 0 to %d "
                            "(the hostfile's nodes after filtering); got%s%s --node_rank %d\n",
                    plan.num_nodes - 1, o.no_ssh ? " --no_ssh" : "", o.no_ssh ? "," : "", o.node_rank);
            ds_launch_plan_free(&plan);
            return 2;
        }
        const char *sec = getenv("DS_JOB_SECRET");
        if (plan.num_nodes > 1 && !o.dry_run && !(sec && *sec)) {
            fprintf(stderr, "ds-launch: --no_ssh with %d nodes: export the same DS_JOB_SECRET on every node "
                            "(each node's ds-launch would otherwise make its own, and the rendezvous would "
                            "refuse the others)\n", plan.num_nodes);
            ds_launch_plan_free(&plan);
            return 2;
        }
        if (!o.master_addr && plan.num_nodes > 1) {
            fprintf(stderr, "ds-launch: --no_ssh with %d nodes: give --master_addr (node 0's address)\n",
                    plan.num_nodes);
            ds_launch_plan_free(&plan);
            return 2;
        }
        remote = false;
    }
    /* DECISIONS.md: --master_addr is honoured in every mode (DeepSpeed forces 127.0.0.1 locally). */
    /* Remote mode without --master_addr: the first node's name as the hostfile gives it (DeepSpeed
     * asks that host for `hostname -I`); a name that only means "this machine" cannot work there. */
    const char *addr = o.master_addr ? o.master_addr : remote ? plan.nodes[0].host : "127.0.0.1";
    char this_host[256], first[256];
    if (!o.master_addr && remote) {
        /* the hostfile's way to reach the host over ssh, less what only ssh uses: user@, :port */
        const char *at = strrchr(addr, '@');
        snprintf(first, sizeof first, "%s", at ? at + 1 : addr);
        char *colon = strchr(first, ':');
        if (colon && strchr(colon + 1, ':')) {
            fprintf(stderr, "ds-launch: the first host, %s, is an IPv6 address, which the rendezvous (IPv4) cannot "
                    "use: give --master_addr (its IPv4 address or name)\n", plan.nodes[0].host);
            ds_launch_plan_free(&plan);
            return 2;
        }
        if (colon)
            *colon = '\0';
        addr = first;
        /* a name or address that means "this machine" here cannot mean it on the other nodes */
        if ((strcmp(addr, "localhost") == 0 || strncmp(addr, "127.", 4) == 0) &&
            gethostname(this_host, sizeof this_host) == 0) {
            this_host[sizeof this_host - 1] = '\0';
            addr = this_host;
        }
    }
    int port = o.master_port;
    if (port == 0) {
        port = pick_free_port();
        if (port <= 0) {
            fprintf(stderr, "ds-launch: --master_port 0: could not find a free port: %s\n",
                    strerror(errno));
            return 1;
        }
        fprintf(stderr, "ds-launch: --master_port 0: using free port %d\n", port);
    }
    ds_launch_env exports = {0};
    load_exports(&o, &exports);
    int cores = count_cores();
    int rc;
    if (o.dry_run) {
        print_plan(&o, &plan, addr, port, cores, &exports, remote);
        rc = 0;
    } else {
        fflush(stdout);
        if (set_job_secret() != 0)
            rc = 1;
        else if (remote)
            rc = run_remote(&o, &plan, addr, port, cores, &exports);
        else
            rc = run_job(&o, &plan, addr, port, cores, &exports);
    }
    ds_launch_env_free(&exports);
    ds_launch_plan_free(&plan);
    free(o.exports);
    return rc;
}
