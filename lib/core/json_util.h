/* Internal json-c helpers shared by the config and network parsers: parse a file with
 * line/column errors, name JSON types and short renderings of values for messages. */
#ifndef DS_JSON_UTIL_H
#define DS_JSON_UTIL_H

#include <json-c/json.h>

#include "ds/status.h"

/* Parse JSON text; on error the message is "<name>:<line>:<col>: <json-c reason>".
 * Duplicate keys in one object are an error naming the key and its JSON path. */
ds_status ds_json_parse(const char *text, const char *name, json_object **out, ds_error *err);
/* Read and parse a file; *text_out (may be NULL) receives the text (caller frees). */
ds_status ds_json_parse_file(const char *path, json_object **out, char **text_out, ds_error *err);
/* "a string", "a number", "an object", ... */
const char *ds_json_type_name(json_object *v);
/* A short rendering of a value for messages (at most ~60 chars), in a static-free buffer. */
void ds_json_render(json_object *v, char *buf, size_t size);
/* Levenshtein distance, for "did you mean" suggestions. */
int ds_edit_distance(const char *a, const char *b);

#endif
