/* ds-ckpt: look into, check and transform checkpoints (ds-ckpt(1), ds-checkpoint(5)): inspect,
 * verify, merge, convert, reshard. Argument parsing and printing only; the work is libds's
 * (ds/ckpt.h). */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cliarg.h"
#include "ds/ds.h"

static const char *usage_text =
    "usage: ds-ckpt inspect DIR [--tag T]\n"
    "       ds-ckpt verify DIR [--tag T]\n"
    "       ds-ckpt merge DIR OUT.safetensors [--tag T] [--optimizer] [--force]\n"
    "       ds-ckpt convert DIR OUT.safetensors [--tag T] [--dtype fp32|fp16|bf16] [--force]\n"
    "       ds-ckpt reshard DIR OUT --dp N [--tag T] [--force]\n"
    "\n"
    "DIR holds checkpoints saved by ds-train --save or ds_engine_save_checkpoint: DIR/latest and\n"
    "one directory per tag (see ds-checkpoint(5)). Without --tag: the tag DIR/latest names\n"
    "(verify: every tag).\n"
    "\n"
    "  inspect   tags, steps, world sizes, ZeRO stage, precision, files and the tensor table\n"
    "  verify    completeness and the SHA-256 of every file; exit 0 only if all are sound\n"
    "  merge     the partitions as one safetensors file of the full fp32 weights by name;\n"
    "            --optimizer adds the full optimizer state (optimizer.<state>.<param>)\n"
    "  convert   the weights as one safetensors file PyTorch loads by name (--dtype, default fp32)\n"
    "  reshard   a copy of the checkpoint with its state partitioned for N data-parallel ranks\n"
    "  --force   replace OUT if it exists\n"
    "  -h, --help  this text;  --version  the version\n";

static int usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, "ds-ckpt: ");
    fprintf(stderr, msg, arg);
    fprintf(stderr, "\n(see ds-ckpt --help)\n");
    return 2;
}

static void human(double bytes, char *buf, size_t n)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (bytes >= 1024 && i < 4)
        bytes /= 1024, i++;
    snprintf(buf, n, i ? "%.1f %s" : "%.0f %s", bytes, u[i]);
}

static double peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

/* The tag ds-train --load takes without --tag where it is not the one latest names (a save stopped
 * between renaming its tag into place and rewriting latest), else NULL (freed by the caller).
 * *damaged: latest names a tag without a manifest; then nothing is taken in its place. */
static char *newer_than_latest(const char *dir, const char *latest, int *damaged)
{
    char *newest = NULL, m[4200];
    ds_error ignore = {0};
    struct stat sb;
    *damaged = 0;
    if (!latest || ds_ckpt_newest(dir, &newest, &ignore) != DS_OK || !newest || !strcmp(newest, latest)) {
        free(newest);
        return NULL;
    }
    snprintf(m, sizeof m, "%s/%s/manifest.json", dir, latest);
    if (stat(m, &sb) != 0) {
        *damaged = 1;
        free(newest);
        return NULL;
    }
    return newest;
}

static int inspect(const char *dir, const char *tag)
{
    ds_error err = {0};
    char **tags, **left;
    int n, nl;
    if (ds_ckpt_list(dir, &tags, &n, &left, &nl, &err) != DS_OK) {
        fprintf(stderr, "ds-ckpt: %s\n", err.msg);
        return 1;
    }
    char *latest = NULL;
    int rc = 0;
    if (ds_ckpt_latest(dir, &latest, &err) != DS_OK) {
        fprintf(stderr, "ds-ckpt: %s\n", err.msg);
        rc = 1;
    }
    if (n == 0) {
        fprintf(stderr, "ds-ckpt: %s: no checkpoint there (no complete global_step* or other tag folder)\n", dir);
        rc = 1;
    }
    printf("%s: %d checkpoint%s, latest %s\n", dir, n, n == 1 ? "" : "s", latest ? latest : "(none)");
    for (int i = 0; i < n; i++) {
        ds_ckpt *c;
        if (ds_ckpt_open(&c, dir, tags[i], &err) != DS_OK) {
            printf("  %-20s  unreadable: %s\n", tags[i], err.msg);
            rc = 1;
            continue;
        }
        printf("  %-20s  step %lld, samples %lld, skipped %lld; dp %d, mp %d, zero stage %d, %s, %s (step %lld)\n",
               tags[i], (long long)c->global_steps, (long long)c->global_samples, (long long)c->skipped_steps,
               c->dp_world_size, c->mp_world_size, c->zero_stage, c->precision, c->optimizer,
               (long long)c->optimizer_step);
        ds_ckpt_close(c);
    }
    for (int i = 0; i < nl; i++)
        printf("  %-20s  leftover of an interrupted save (not a checkpoint)\n", left[i]);
    ds_ckpt_free_list(tags, n);
    ds_ckpt_free_list(left, nl);
    int damaged; /* (the tag the other commands and --load take without --tag) */
    char *newest = tag ? NULL : newer_than_latest(dir, latest, &damaged);
    if (newest)
        printf("note: %s is newer than the %s latest names (a save stopped before it rewrote latest): "
               "ds-train --load and merge/convert/reshard take it\n", newest, latest);
    const char *show = tag ? tag : newest ? newest : latest;
    if (show) {
        ds_ckpt *c;
        if (ds_ckpt_open(&c, dir, show, &err) != DS_OK) {
            fprintf(stderr, "ds-ckpt: %s\n", err.msg);
            free(latest);
            free(newest);
            return 1;
        }
        char hb[32];
        printf("\n%s: %lld elements per flat buffer in %d partition%s (alignment %d)\n", c->path, (long long)c->numel,
               c->partition_world, c->partition_world == 1 ? "" : "s", DS_CKPT_ALIGN);
        printf("  %-4s %12s %12s %10s  %s\n", "part", "begin", "end", "padding", "file");
        for (int r = 0; r < c->partition_world; r++) {
            int64_t b, e, padded = ds_ckpt_partition_range(c->numel, c->partition_world, r, &b, &e);
            printf("  %-4d %12lld %12lld %10lld  %s\n", r, (long long)c->parts[r].begin, (long long)c->parts[r].end,
                   (long long)(padded / c->partition_world - (e - b)), c->parts[r].file);
        }
        printf("\n  %-44s %-6s %-18s %12s %12s\n", "tensor", "dtype", "shape", "offset", "size");
        for (int i = 0; i < c->n_params; i++) {
            char shape[64];
            ds_shape_str(c->params[i].ndim, c->params[i].shape, shape, sizeof shape);
            human((double)c->params[i].numel * 4, hb, sizeof hb);
            printf("  %-44s %-6s %-18s %12lld %12s\n", c->params[i].name, "F32", shape,
                   (long long)c->params[i].offset, hb);
        }
        printf("  optimizer state per element: %d buffer%s", c->n_state, c->n_state == 1 ? "" : "s");
        for (int k = 0; k < c->n_state; k++)
            printf("%s%s", k ? ", " : " (", c->state_names[k]);
        printf("%s\n\n  %-60s %14s\n", c->n_state ? ")" : "", "file", "bytes");
        int64_t total = 0;
        for (int i = 0; i < c->n_files; i++) {
            printf("  %-60s %14lld\n", c->files[i].name, (long long)c->files[i].bytes);
            total += c->files[i].bytes;
        }
        human((double)total, hb, sizeof hb);
        printf("  total %s\n", hb);
        ds_ckpt_close(c);
    }
    free(latest);
    free(newest);
    return rc;
}

static int verify_tag(const char *dir, const char *tag)
{
    ds_error err = {0};
    ds_ckpt *c;
    if (ds_ckpt_open(&c, dir, tag, &err) != DS_OK) {
        printf("FAILED %s/%s: %s\n", dir, tag, err.msg);
        return 1;
    }
    int bad = 0;
    int64_t bytes = 0;
    for (int i = 0; i < c->n_files; i++) {
        if (ds_ckpt_verify_file(c, i, &err) != DS_OK) {
            printf("FAILED %s\n", err.msg);
            bad = 1;
        }
        bytes += c->files[i].bytes;
    }
    if (!bad)
        printf("ok %s (%d files, %lld bytes, SHA-256 verified)\n", c->path, c->n_files, (long long)bytes);
    ds_ckpt_close(c);
    return bad;
}

static int verify(const char *dir, const char *tag)
{
    if (tag)
        return verify_tag(dir, tag);
    ds_error err = {0};
    char **tags, **left, *latest = NULL;
    int n, nl, bad = 0;
    if (ds_ckpt_list(dir, &tags, &n, &left, &nl, &err) != DS_OK || ds_ckpt_latest(dir, &latest, &err) != DS_OK) {
        printf("FAILED %s\n", err.msg);
        return 1;
    }
    if (!latest) {
        printf("FAILED %s: no %s/latest\n", dir, dir);
        bad = 1;
    }
    int latest_seen = 0;
    for (int i = 0; i < n; i++) {
        bad |= verify_tag(dir, tags[i]);
        latest_seen |= latest && !strcmp(latest, tags[i]);
    }
    if (latest && !latest_seen) {
        printf("FAILED %s/latest names %s, which is not a complete checkpoint (no %s/%s/manifest.json)\n", dir,
               latest, dir, latest);
        bad = 1;
    }
    /* a tag directory holding a checkpoint's files but no manifest: the commit protocol never
     * makes one (the manifest is written before the rename), so it is damage */
    DIR *dd = opendir(dir);
    struct dirent *de;
    while (dd && (de = readdir(dd))) {
        if (de->d_name[0] == '.' || (latest && !latest_seen && !strcmp(de->d_name, latest)))
            continue;
        char p[4096], q[4200], r[4200];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        snprintf(q, sizeof q, "%s/manifest.json", p);
        snprintf(r, sizeof r, "%s/SHA256SUMS", p);
        if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode) && stat(q, &sb) != 0 && stat(r, &sb) == 0) {
            printf("FAILED %s: a checkpoint's files without its manifest.json (damaged)\n", p);
            bad = 1;
        }
    }
    if (dd)
        closedir(dd);
    for (int i = 0; i < nl; i++)
        printf("note: %s/%s: leftover of an interrupted save; not a checkpoint (safe to delete)\n", dir, left[i]);
    int damaged; /* (what ds-train --load and the other commands take) */
    char *newest = bad ? NULL : newer_than_latest(dir, latest, &damaged);
    if (newest)
        printf("note: %s is newer than the %s latest names (a save stopped before it rewrote latest): "
               "ds-train --load and merge/convert/reshard take %s\n", newest, latest, newest);
    free(newest);
    if (!bad)
        printf("%s: sound (%d checkpoint%s, latest %s)\n", dir, n, n == 1 ? "" : "s", latest);
    ds_ckpt_free_list(tags, n);
    ds_ckpt_free_list(left, nl);
    free(latest);
    return bad;
}

/* Open a tag and check every file before anything is read from it. */
static int open_verified(ds_ckpt **c, const char *dir, const char *tag)
{
    ds_error err = {0};
    char *newest = NULL;
    if (!tag) { /* the checkpoint ds-train --load takes: latest's, or a newer complete one whose save
                 * stopped before it rewrote latest (ds-checkpoint(5)) */
        char *latest = NULL;
        if (ds_ckpt_newest(dir, &newest, &err) != DS_OK) {
            fprintf(stderr, "ds-ckpt: %s\n", err.msg);
            return 1;
        }
        if (!newest) {
            fprintf(stderr, "ds-ckpt: %s: no checkpoint (no %s/latest, no tag with manifest.json)\n", dir, dir);
            return 1;
        }
        ds_error ignore = {0};
        int damaged = 0;
        char *newer = ds_ckpt_latest(dir, &latest, &ignore) == DS_OK ? newer_than_latest(dir, latest, &damaged) : NULL;
        if (damaged) /* no silent fallback to an older tag */
            fprintf(stderr, "ds-ckpt: %s/latest names %s, which is not a complete checkpoint (no %s/%s/manifest.json); "
                    "--tag %s takes the newest complete one\n", dir, latest, dir, latest, newest);
        else if (newer)
            fprintf(stderr, "ds-ckpt: note: %s/%s is newer than the %s that %s/latest names (a save stopped before it "
                    "rewrote latest); taking it, as ds-train --load does (--tag %s for the other)\n", dir, newest,
                    latest, dir, latest);
        free(newer);
        free(latest);
        if (damaged) {
            free(newest);
            return 1;
        }
        tag = newest;
    }
    ds_status ost = ds_ckpt_open(c, dir, tag, &err);
    free(newest);
    if (ost != DS_OK) {
        fprintf(stderr, "ds-ckpt: %s\n", err.msg);
        return 1;
    }
    for (int i = 0; i < (*c)->n_files; i++)
        if (ds_ckpt_verify_file(*c, i, &err) != DS_OK) {
            fprintf(stderr, "ds-ckpt: %s\n", err.msg);
            ds_ckpt_close(*c);
            return 1;
        }
    return 0;
}

/* p as an absolute path with its existing part resolved (symbolic links, ".", ".."), the part that
 * does not exist yet appended as written; -1 where it cannot be worked out */
static int abs_path_d(const char *p, char *out, size_t n, int depth)
{
    if (depth > 64) /* (a path of that many missing parts: not worth resolving) */
        return -1;
    char rp[PATH_MAX];
    if (realpath(p, rp))
        return snprintf(out, n, "%s", rp) < (int)n ? 0 : -1;
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s", p) >= (int)sizeof tmp)
        return -1;
    size_t len = strlen(tmp);
    while (len > 1 && tmp[len - 1] == '/') /* "a/b/" is "a/b" */
        tmp[--len] = 0;
    char *slash = strrchr(tmp, '/');
    const char *base = slash ? slash + 1 : tmp;
    char par[PATH_MAX];
    if (slash == tmp)
        snprintf(par, sizeof par, "/");
    else if (slash) {
        *slash = 0;
        if (abs_path_d(tmp, par, sizeof par, depth + 1))
            return -1;
    } else if (!getcwd(par, sizeof par))
        return -1;
    if (!strcmp(base, ".") || !*base)
        return snprintf(out, n, "%s", par) < (int)n ? 0 : -1;
    if (!strcmp(base, "..")) {
        char *s2 = strrchr(par, '/');
        if (s2 && s2 != par)
            *s2 = 0;
        else
            snprintf(par, sizeof par, "/");
        return snprintf(out, n, "%s", par) < (int)n ? 0 : -1;
    }
    return snprintf(out, n, "%s/%s", strcmp(par, "/") ? par : "", base) < (int)n ? 0 : -1;
}

static int abs_path(const char *p, char *out, size_t n) { return abs_path_d(p, out, n, 0); }

/* a is b or lies inside it */
static int path_within(const char *a, const char *b)
{
    size_t n = strlen(b);
    if (n == 1 && b[0] == '/')
        return 1;
    return strncmp(a, b, n) == 0 && (a[n] == 0 || a[n] == '/');
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"tag", required_argument, 0, 't'}, {"optimizer", no_argument, 0, 'o'},
        {"force", no_argument, 0, 'f'},     {"dtype", required_argument, 0, 'd'},
        {"dp", required_argument, 0, 'n'},  {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},   {0, 0, 0, 0}};
    const char *tag = NULL, *dtype_s = NULL, *dp_s = NULL;
    int with_opt = 0, force = 0, dp = 0, c;
    opterr = 0; /* our own messages, without the program's path */
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case 't':
            if (tag)
                return usage_error("--tag given twice (\"%s\" and another)", tag);
            tag = optarg;
            break;
        case 'o': with_opt = 1; break;
        case 'f': force = 1; break;
        case 'd':
            if (dtype_s) /* the last would win silently */
                return usage_error("--dtype given twice (\"%s\" and another)", dtype_s);
            dtype_s = optarg;
            break;
        case 'n': {
            if (dp_s)
                return usage_error("--dp given twice (\"%s\" and another)", dp_s);
            dp_s = optarg;
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || *end || v < 1 || v > 65536)
                return usage_error("--dp: expected an integer 1..65536, found \"%s\"", optarg);
            dp = (int)v;
            break;
        }
        case 'h': fputs(usage_text, stdout); return 0;
        case 'V': printf("ds-ckpt (ds) %s\n", DS_VERSION); return 0;
        default: { /* ('?', and ':' for a missing value) */
            char why[400];
            cliarg_bad_option(longopts, argv[optind - 1], optopt, why, sizeof why);
            return usage_error("%s", why);
        }
        }
    }
    int nargs = argc - optind;
    if (nargs < 1)
        return usage_error("%sno command given", "");
    const char *cmd = argv[optind], *dir = nargs > 1 ? argv[optind + 1] : NULL,
               *out = nargs > 2 ? argv[optind + 2] : NULL;
    int want = !strcmp(cmd, "inspect") || !strcmp(cmd, "verify") ? 2
             : !strcmp(cmd, "merge") || !strcmp(cmd, "convert") || !strcmp(cmd, "reshard") ? 3 : 0;
    if (!want)
        return usage_error("unknown command \"%s\" (inspect, verify, merge, convert, reshard)", cmd);
    if (nargs != want)
        return usage_error(want == 2 ? "%s takes one directory" : "%s takes a checkpoint directory and an output", cmd);
    /* options that do nothing for this command are errors, not silently ignored */
    if (with_opt && strcmp(cmd, "merge"))
        return usage_error("--optimizer is for merge (%s writes no optimizer state)", cmd);
    if (force && want == 2)
        return usage_error("--force is for the commands that write (%s writes nothing)", cmd);
    if (dp && strcmp(cmd, "reshard"))
        return usage_error("--dp is for reshard, not %s", cmd);
    if (dtype_s && strcmp(cmd, "convert"))
        return usage_error("--dtype is for convert (%s writes fp32)", cmd);
    if (!*dir)
        return usage_error("%sthe checkpoint directory is an empty string", "");
    if (!strcmp(cmd, "inspect"))
        return inspect(dir, tag);
    if (!strcmp(cmd, "verify"))
        return verify(dir, tag);
    if (!*out)
        return usage_error("%sthe output is an empty string", "");
    /* the output must not be the checkpoint or anything in it, nor hold it: --force would
     * destroy the input */
    char adir[PATH_MAX], aout[PATH_MAX];
    if (abs_path(dir, adir, sizeof adir) != 0 || abs_path(out, aout, sizeof aout) != 0) {
        /* (the check below cannot be made: never write where it might be the input) */
        fprintf(stderr, "ds-ckpt: %s: cannot work out where it is (a path of more than 64 parts that do not exist "
                "yet, or too long), so cannot check it is not inside the input %s; give a shorter one\n", out, dir);
        return 2;
    }
    {
        /* a file directly in DIR (not latest, not a tag folder) cannot touch the checkpoints:
         * merge and convert may write one there */
        const char *rel = aout + strlen(adir) + (strcmp(adir, "/") != 0);
        struct stat rs;
        int harmless = path_within(aout, adir) && strcmp(cmd, "reshard") && strcmp(aout, adir) && !strchr(rel, '/') &&
                       strcmp(rel, "latest") && rel[0] != '.' && !(stat(aout, &rs) == 0 && S_ISDIR(rs.st_mode));
        if (path_within(aout, adir) && !harmless) {
            fprintf(stderr, "ds-ckpt: %s: is the input checkpoint %s, its latest, or inside one of its tags (%s); "
                    "write elsewhere\n", out, dir, aout);
            return 2;
        }
        if (path_within(adir, aout)) {
            fprintf(stderr, "ds-ckpt: %s: holds the input checkpoint %s (%s); write elsewhere\n", out, dir, aout);
            return 2;
        }
    }
    if (!dtype_s)
        dtype_s = "fp32";
    ds_dtype dtype = DS_F32;
    if (!strcmp(dtype_s, "fp16") || !strcmp(dtype_s, "F16"))
        dtype = DS_F16;
    else if (!strcmp(dtype_s, "bf16") || !strcmp(dtype_s, "BF16"))
        dtype = DS_BF16;
    else if (strcmp(dtype_s, "fp32") && strcmp(dtype_s, "F32"))
        return usage_error("--dtype: expected fp32, fp16 or bf16, found \"%s\"", dtype_s);
    if (!strcmp(cmd, "reshard") && !dp)
        return usage_error("%sreshard needs --dp N", "");
    struct stat sb;
    if (!force && stat(out, &sb) == 0) {
        fprintf(stderr, "ds-ckpt: %s: exists; not overwriting it (use --force)\n", out);
        return 2; /* as ds-train, ds-lrrt and ds-prof: an existing output is refused before any work */
    }
    if (!strcmp(cmd, "reshard")) { /* --force replaces a checkpoint, never another directory */
        ds_error oerr = {0};
        if (ds_ckpt_check_output_dir(out, &oerr) != DS_OK) {
            fprintf(stderr, "ds-ckpt: %s\n", oerr.msg);
            return 2;
        }
    }
    ds_ckpt *ck;
    if (open_verified(&ck, dir, tag))
        return 1;
    ds_error err = {0};
    ds_status st = !strcmp(cmd, "reshard") ? ds_ckpt_reshard(ck, out, dp, force, &err)
                 : ds_ckpt_export(ck, out, dtype, !strcmp(cmd, "merge") && with_opt, force, &err);
    if (st != DS_OK) {
        fprintf(stderr, "ds-ckpt: %s\n", err.msg);
        ds_ckpt_close(ck);
        return 1;
    }
    if (!strcmp(cmd, "reshard"))
        printf("%s: %s resharded for %d data-parallel rank%s (peak RSS %.1f MiB)\n", out, ck->path, dp,
               dp == 1 ? "" : "s", peak_rss_mib());
    else
        printf("%s: %d tensors of %s (%s%s) written (peak RSS %.1f MiB)\n", out,
               ck->n_params * (1 + (!strcmp(cmd, "merge") && with_opt ? ck->n_state : 0)), ck->path,
               ds_dtype_name(dtype), !strcmp(cmd, "merge") && with_opt ? " weights + fp32 optimizer state" : "",
               peak_rss_mib());
    ds_ckpt_close(ck);
    return 0;
}
