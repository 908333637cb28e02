/* tests/sqlexec DB (SQL | @FILE): run SQL through libsqlite3 on DB (created if missing) and print
 * each result row as values joined by '|' (NULL as empty), like `sqlite3 -list`. The shell
 * tests use it to build fixture databases and to query run databases, so that they need no
 * sqlite3 command-line tool. Exit status 1 on an SQL error (message on stderr). */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>

static int row(void *ctx, int n, char **val, char **name)
{
    (void)ctx;
    (void)name;
    for (int i = 0; i < n; i++)
        printf("%s%s", i ? "|" : "", val[i] ? val[i] : "");
    putchar('\n');
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: sqlexec DB (SQL | @FILE)\n");
        return 2;
    }
    char *sql = argv[2];
    if (sql[0] == '@') {
        FILE *f = fopen(sql + 1, "rb");
        if (!f) {
            perror(sql + 1);
            return 2;
        }
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        rewind(f);
        sql = malloc((size_t)n + 1);
        if (!sql || fread(sql, 1, (size_t)n, f) != (size_t)n) {
            fclose(f);
            return 2;
        }
        sql[n] = 0;
        fclose(f);
    }
    sqlite3 *db;
    if (sqlite3_open(argv[1], &db) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", argv[1], sqlite3_errmsg(db));
        return 1;
    }
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, row, NULL, &msg);
    if (rc != SQLITE_OK)
        fprintf(stderr, "%s: %s\n", argv[1], msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : 1;
}
