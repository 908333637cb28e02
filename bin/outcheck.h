/* Checks of an output path before any work is done, shared by the binaries that write files
 * (ds-train, ds-lrrt). Each returns 0 when the path may be written, else -1 with the reason
 * in why (the caller prints it after the flag and the path). */
#ifndef DS_BIN_OUTCHECK_H
#define DS_BIN_OUTCHECK_H

#include <stddef.h>

/* The folder path goes in exists and takes a new file: checked by making one and removing it
 * (access() says yes to root on /proc or a read-only file system). */
int outcheck_folder(const char *path, char *why, size_t n);

/* An output that would clobber a file without force, or replace what is not a regular file, is
 * refused; stream: an existing character device or pipe (/dev/stdout) is written as it is,
 * without force. Then outcheck_folder. */
int outcheck_file(const char *path, int force, int stream, char *why, size_t n);

/* A finished output tmp moved to path: with force over what is there (rename), else only where
 * path still does not exist (it may have appeared since outcheck_file): renameat2's
 * RENAME_NOREPLACE, or link and unlink where the file system lacks it. -1 with the reason in
 * why, tmp left as it is (the caller says where the results are). */
int outcheck_publish(const char *tmp, const char *path, int force, char *why, size_t n);

#endif
