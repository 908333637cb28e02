/* Output path checks for the binaries (outcheck.h). */
#define _GNU_SOURCE /* renameat2 */
#include "outcheck.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int outcheck_folder(const char *path, char *why, size_t n)
{
    char dir[4096], probe[4200];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + (slash == path) : 1, slash ? path : ".");
    snprintf(probe, sizeof probe, "%s/.ds-probe.XXXXXX", dir); /* mkstemp's template */
    int fd = mkstemp(probe);
    if (fd < 0) {
        snprintf(why, n, "cannot write there (%s: %s)", dir, strerror(errno));
        return -1;
    }
    close(fd);
    unlink(probe);
    return 0;
}

int outcheck_file(const char *path, int force, int stream, char *why, size_t n)
{
    struct stat sb;
    if (!*path) {
        snprintf(why, n, "expected a file name, found \"\"");
        return -1;
    }
    if (stat(path, &sb) == 0) {
        if (stream && (S_ISCHR(sb.st_mode) || S_ISFIFO(sb.st_mode)))
            return 0;
        if (!S_ISREG(sb.st_mode)) {
            snprintf(why, n, "%s; not replacing it",
                     S_ISDIR(sb.st_mode) ? "is a directory" : "exists and is not a regular file");
            return -1;
        }
        if (!force) {
            snprintf(why, n, "the file exists; not overwriting it (use --force)");
            return -1;
        }
    }
    return outcheck_folder(path, why, n);
}

int outcheck_publish(const char *tmp, const char *path, int force, char *why, size_t n)
{
    if (force) {
        if (rename(tmp, path) == 0)
            return 0;
        snprintf(why, n, "cannot rename %s to it: %s", tmp, strerror(errno));
        return -1;
    }
    int r = renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE);
    if (r != 0 && (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP)) { /* not on this file system */
        r = link(tmp, path);
        if (r == 0) {
            unlink(tmp);
        } else if (errno == EPERM || errno == ENOTSUP || errno == EOPNOTSUPP || errno == ENOSYS) {
            /* no hard links either (CIFS, some FUSE): a look, then a plain rename; only a file
             * made in between these two steps could still be replaced */
            struct stat sb;
            if (lstat(path, &sb) == 0)
                errno = EEXIST, r = -1;
            else
                r = rename(tmp, path);
        }
    }
    if (r == 0)
        return 0;
    if (errno == EEXIST)
        snprintf(why, n, "the file appeared while this run went on; not overwriting it (use --force)");
    else
        snprintf(why, n, "cannot rename %s to it: %s", tmp, strerror(errno));
    return -1;
}
