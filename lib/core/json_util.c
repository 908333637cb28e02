/* json-c helpers: parsing with positions, duplicate-key detection, type names for messages. */
#include "json_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* json-c keeps the last of duplicate keys silently; DeepSpeed refuses duplicates in files.
 * We scan the text once with a tiny tokenizer that tracks the keys of each open object. The
 * same scan refuses integers outside 64 bits, which json-c clamps to the nearest limit without
 * a word (Python reads them exactly). */
typedef struct key_frame {
    char **keys;
    int n, cap;
    int is_object;
    int expect_key;
} key_frame;

static void frame_free(key_frame *f)
{
    for (int i = 0; i < f->n; i++)
        free(f->keys[i]);
    free(f->keys);
    f->keys = NULL;
    f->n = f->cap = 0;
}

static ds_status find_duplicate_keys(const char *text, const char *name, ds_error *err)
{
    key_frame stack[128];
    int depth = 0, line = 1;
    ds_status st = DS_OK;
    for (const char *p = text; *p && st == DS_OK; p++) {
        char c = *p;
        if (c == '\n')
            line++;
        if (c == '{' || c == '[') {
            if (depth == 128)
                break; /* absurd nesting: leave it to json-c */
            stack[depth] = (key_frame){0};
            stack[depth].is_object = (c == '{');
            stack[depth].expect_key = (c == '{');
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth > 0)
                frame_free(&stack[--depth]);
        } else if (c == '\'') { /* json-c's strict mode still takes 'single-quoted' strings */
            st = ds_error_set(err, DS_ERR_INVALID, "%s:%d: invalid JSON: a single quote outside a string (JSON "
                              "strings take double quotes)", name, line);
        } else if (c == ',') {
            if (depth > 0 && stack[depth - 1].is_object)
                stack[depth - 1].expect_key = 1;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            const char *start = p;
            int integral = 1;
            while (p[1] == '-' || p[1] == '+' || p[1] == '.' || p[1] == 'e' || p[1] == 'E' ||
                   (p[1] >= '0' && p[1] <= '9')) {
                p++;
                integral &= *p != '.' && *p != 'e' && *p != 'E';
            }
            if (integral) {
                char *end;
                errno = 0;
                if (*start == '-')
                    (void)strtoll(start, &end, 10);
                else
                    (void)strtoull(start, &end, 10);
                if (errno == ERANGE)
                    st = ds_error_set(err, DS_ERR_INVALID, "%s:%d: the integer %.*s%s does not fit in 64 bits "
                                      "(from %s to 18446744073709551615; a float such as 1e21 is read as one)",
                                      name, line, (int)(p + 1 - start > 40 ? 40 : p + 1 - start), start,
                                      p + 1 - start > 40 ? "..." : "", "-9223372036854775808");
            }
        } else if (c == '"') {
            const char *start = ++p;
            while (*p && *p != '"') {
                if (*p == '\\' && p[1])
                    p++;
                p++;
            }
            if (!*p)
                break;
            if (depth > 0 && stack[depth - 1].is_object && stack[depth - 1].expect_key) {
                key_frame *f = &stack[depth - 1];
                size_t len = (size_t)(p - start);
                for (int i = 0; i < f->n; i++)
                    if (strlen(f->keys[i]) == len && memcmp(f->keys[i], start, len) == 0) {
                        st = ds_error_set(err, DS_ERR_INVALID, "%s:%d: duplicate key \"%.*s\"",
                                          name, line, (int)len, start);
                        break;
                    }
                if (f->n == f->cap) {
                    f->cap = f->cap ? 2 * f->cap : 8;
                    f->keys = realloc(f->keys, (size_t)f->cap * sizeof *f->keys);
                }
                f->keys[f->n++] = strndup(start, len);
                f->expect_key = 0;
            }
        }
    }
    while (depth > 0)
        frame_free(&stack[--depth]);
    return st;
}

/* 1-based line and column of byte off of text */
static void text_pos(const char *text, size_t off, int *line, int *col)
{
    *line = 1, *col = 1;
    for (size_t i = 0; i < off && text[i]; i++) {
        if (text[i] == '\n') {
            ++*line;
            *col = 1;
        } else {
            ++*col;
        }
    }
}

ds_status ds_json_parse(const char *text, const char *name, json_object **out, ds_error *err)
{
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", name);
    size_t len = strlen(text);
    if (len >= 3 && (unsigned char)text[0] == 0xEF && (unsigned char)text[1] == 0xBB && (unsigned char)text[2] == 0xBF) {
        json_tokener_free(tok);
        return ds_error_set(err, DS_ERR_INVALID, "%s:1:1: invalid JSON: a UTF-8 byte-order mark (EF BB BF) before the "
                            "value; save the file without it", name);
    }
    /* strict JSON, as Python's json module that DeepSpeed reads configs with: no comments,
     * trailing commas or single quotes */
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    json_object *obj = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    if (!obj || jerr != json_tokener_success) {
        size_t off = json_tokener_get_parse_end(tok);
        int line, col;
        text_pos(text, off, &line, &col);
        const char *why = jerr == json_tokener_continue ? "unexpected end of file"
                                                         : json_tokener_error_desc(jerr);
        json_tokener_free(tok);
        if (obj)
            json_object_put(obj);
        /* a whole value with more text after it (strict mode stops at that text) */
        json_tokener *loose = json_tokener_new();
        json_object *o2 = loose ? json_tokener_parse_ex(loose, text, (int)len) : NULL;
        if (o2 && json_tokener_get_error(loose) == json_tokener_success) {
            size_t e2 = json_tokener_get_parse_end(loose);
            while (e2 < len && (text[e2] == ' ' || text[e2] == '\n' || text[e2] == '\r' || text[e2] == '\t'))
                e2++;
            if (e2 < len && e2 >= off) {
                text_pos(text, e2, &line, &col);
                why = "text after the end of the value";
            }
        }
        if (o2)
            json_object_put(o2);
        if (loose)
            json_tokener_free(loose);
        return ds_error_set(err, DS_ERR_INVALID, "%s:%d:%d: invalid JSON: %s", name, line, col,
                            why);
    }
    /* trailing garbage after the value */
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    for (size_t i = end; i < len; i++)
        if (text[i] != ' ' && text[i] != '\n' && text[i] != '\r' && text[i] != '\t') {
            int line, col;
            text_pos(text, i, &line, &col);
            json_object_put(obj);
            return ds_error_set(err, DS_ERR_INVALID, "%s:%d:%d: invalid JSON: text after the end of the value",
                                name, line, col);
        }
    ds_status st = find_duplicate_keys(text, name, err);
    if (st != DS_OK) {
        json_object_put(obj);
        return st;
    }
    *out = obj;
    return DS_OK;
}

ds_status ds_json_parse_file(const char *path, json_object **out, char **text_out, ds_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return ds_error_set(err, DS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb; /* a pipe is fine (process substitution), a directory is not */
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        return ds_error_set(err, DS_ERR_IO, "%s: is a directory, expected a JSON file", path);
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            return ds_error_set(err, DS_ERR_NOMEM, "%s: out of memory", path);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (n < cap - 1)
            break;
        cap *= 2;
        buf = realloc(buf, cap);
    }
    int rerr = ferror(f);
    fclose(f);
    if (rerr) {
        free(buf);
        return ds_error_set(err, DS_ERR_IO, "%s: read error", path);
    }
    buf[n] = '\0';
    if (strlen(buf) != n) {
        free(buf);
        return ds_error_set(err, DS_ERR_INVALID, "%s: not a JSON text file (contains a NUL byte)", path);
    }
    ds_status st = ds_json_parse(buf, path, out, err);
    if (st == DS_OK && text_out)
        *text_out = buf;
    else
        free(buf);
    return st;
}

const char *ds_json_type_name(json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_null: return "null";
    case json_type_boolean: return "a boolean";
    case json_type_double: return "a number";
    case json_type_int: return "an integer";
    case json_type_object: return "an object";
    case json_type_array: return "an array";
    case json_type_string: return "a string";
    }
    return "a value";
}

void ds_json_render(json_object *v, char *buf, size_t size)
{
    const char *s = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    if (!s)
        s = "?";
    if (strlen(s) < size && strlen(s) <= 60) {
        snprintf(buf, size, "%s", s);
    } else {
        snprintf(buf, size, "%.57s...", s);
    }
}

int ds_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 99;
    int d[65][65];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            int m = sub < del ? sub : del;
            d[i][j] = m < ins ? m : ins;
        }
    return d[la][lb];
}
