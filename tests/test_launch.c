/* Tests for lib/launch: the hostfile rules of spec/launcher.md §1 (DeepSpeed's accepted oddities
 * and bad lines, with DECISIONS.md's stricter tail), --include/--exclude (§2.1-2.3),
 * --num_nodes/--num_gpus (§2.5), rank numbering, the per-rank environment and .deepspeed_env.
 * Processes are tested from the outside by tests/launch.sh. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ds/launch.h"

/* ---- helpers -------------------------------------------------------------------------- */

static ds_launch_plan parse_ok(const char *text)
{
    ds_launch_plan p;
    ds_error err = {0};
    ds_status st = ds_launch_hostfile_parse_text(&p, "hosts", text, &err);
    cr_assert_eq(st, DS_OK, "\"%s\": %s", text, err.msg);
    return p;
}

static void parse_fails(const char *text, const char *want)
{
    ds_launch_plan p;
    ds_error err = {0};
    ds_status st = ds_launch_hostfile_parse_text(&p, "hosts", text, &err);
    cr_assert_eq(st, DS_ERR_INVALID, "\"%s\" was accepted", text);
    cr_expect_str_eq(err.msg, want, "\"%s\"", text);
}

/* "host:ids;host:ids" of a plan, e.g. "worker-0:0,1,2,3;worker-1:0,2" */
static const char *describe(const ds_launch_plan *p)
{
    static char buf[512];
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < p->num_nodes; i++) {
        len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%s:", i ? ";" : "", p->nodes[i].host);
        for (int k = 0; k < p->nodes[i].num_ids; k++)
            len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%d", k ? "," : "",
                                    p->nodes[i].slot_ids[k]);
    }
    return buf;
}

static const char *two_hosts = "worker-0 slots=4\nworker-1 slots=4\n";

static void filter_gives(const char *hosts, const char *inc, const char *exc, const char *want)
{
    ds_launch_plan p = parse_ok(hosts);
    ds_error err = {0};
    ds_status st = ds_launch_plan_filter(&p, inc, exc, &err);
    cr_assert_eq(st, DS_OK, "include %s exclude %s: %s", inc ? inc : "-", exc ? exc : "-", err.msg);
    cr_expect_str_eq(describe(&p), want, "include %s exclude %s", inc ? inc : "-", exc ? exc : "-");
    ds_launch_plan_free(&p);
}

static void filter_fails(const char *hosts, const char *inc, const char *exc, const char *want)
{
    ds_launch_plan p = parse_ok(hosts);
    ds_error err = {0};
    ds_status st = ds_launch_plan_filter(&p, inc, exc, &err);
    cr_assert_eq(st, DS_ERR_INVALID, "include %s exclude %s accepted", inc ? inc : "-",
                 exc ? exc : "-");
    cr_expect_str_eq(err.msg, want);
    ds_launch_plan_free(&p);
}

static const char *env_get(const ds_launch_env *env, const char *name)
{
    for (int i = 0; i < env->count; i++)
        if (strcmp(env->vars[i].name, name) == 0)
            return env->vars[i].value;
    return NULL;
}

/* ---- hostfile ------------------------------------------------------------------------- */

/* a UTF-8 byte-order mark before the first host is not part of its name */
Test(hostfile, byte_order_mark_is_skipped)
{
    ds_launch_plan p = parse_ok("\xef\xbb\xbflocalhost slots=2\nnode1 slots=1\n");
    cr_expect_str_eq(describe(&p), "localhost:0,1;node1:0");
    ds_launch_plan_free(&p);
}

Test(hostfile, basic_order_comments_blank_crlf)
{
    ds_launch_plan p = parse_ok("# the cluster\n\nworker-1 slots=2\r\n   \n  # indented comment\n"
                                "worker-0 slots=4\n");
    cr_assert_eq(p.num_nodes, 2);
    cr_expect_str_eq(describe(&p), "worker-1:0,1;worker-0:0,1,2,3"); /* file order, not sorted */
    cr_expect_eq(p.nodes[0].slots, 2);
    cr_expect_eq(p.num_warnings, 0);
    cr_expect(p.from_hostfile);
    ds_launch_plan_free(&p);
}

Test(hostfile, accepted_oddities)
{
    /* spec §1 "accepted oddities" that DECISIONS.md keeps, plus leading zeros and user@host */
    const char *ok[] = {"w\tslots=4", "w  slots=4", "  w slots=4  ", "w slots=04"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        ds_launch_plan p = parse_ok(ok[i]);
        cr_expect_str_eq(describe(&p), "w:0,1,2,3", "\"%s\"", ok[i]);
        ds_launch_plan_free(&p);
    }
    ds_launch_plan p = parse_ok("user@host slots=1\n10.0.0.1 slots=1\nw#1 slots=1\n");
    cr_expect_str_eq(describe(&p), "user@host:0;10.0.0.1:0;w#1:0");
    ds_launch_plan_free(&p);
}

Test(hostfile, zero_slots_accepted)
{
    ds_launch_plan p = parse_ok("a slots=0\nb slots=2\n");
    cr_assert_eq(p.num_nodes, 2);
    cr_expect_eq(p.nodes[0].num_ids, 0);
    ds_error err = {0};
    cr_assert_eq(ds_launch_plan_finish(&p, &err), DS_OK);
    cr_expect_eq(p.world_size, 2);
    cr_expect_eq(p.nodes[1].first_rank, 0);
    ds_launch_plan_free(&p);
}

Test(hostfile, key_value_tail_is_a_warning)
{
    ds_launch_plan p = parse_ok("w slots=4 max_slots=8\n");
    cr_expect_str_eq(describe(&p), "w:0,1,2,3");
    cr_assert_eq(p.num_warnings, 1);
    cr_expect_str_eq(p.warnings[0], "hosts:1: ignoring \"max_slots=8\" (only slots= is used)");
    ds_launch_plan_free(&p);
}

Test(hostfile, bad_lines)
{
    /* spec §1 "not matching" column, plus the tails DeepSpeed ignores and we refuse */
    const char *bad[] = {"this is bad slots=1", "missingslots", "worker-0",  "w slots= 4",
                         "w slots = 4",         "w SLOTS=4",    "w slots=-1", "w max_slots=4",
                         "w gpus=4 slots=2",    "w slots=4abc", "w slots=",   "w slot=4"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[128], want[256];
        snprintf(text, sizeof text, "ok slots=1\n%s\n", bad[i]);
        snprintf(want, sizeof want, "hosts:2: expected \"<host> slots=<n>\", found \"%s\"", bad[i]);
        parse_fails(text, want);
    }
    /* the example in the house style */
    parse_fails("a slots=1\nb slots=1\n# c\nworker-3 slot=4\n",
                "hosts:4: expected \"<host> slots=<n>\", found \"worker-3 slot=4\"");
    parse_fails("w slots=4 # c\n",
                "hosts:1: unexpected \"# c\" after slots=4 in \"w slots=4 # c\" (only key=value "
                "tokens may follow)");
    parse_fails("w slots=4 extra\n",
                "hosts:1: unexpected \"extra\" after slots=4 in \"w slots=4 extra\" (only key=value "
                "tokens may follow)");
    parse_fails("w slots=99999999999\n", "hosts:1: slots=99999999999 is too large (at most 65536)");
    /* Unicode digits are not digits here (Python's \d would take them) */
    parse_fails("w slots=\xd9\xa3\n", "hosts:1: expected \"<host> slots=<n>\", found \"w slots=\xd9\xa3\"");
}

Test(hostfile, duplicates_and_empty)
{
    parse_fails("worker-1 slots=2\nworker-0 slots=1\nworker-1 slots=1\n",
                "hosts:3: multiple entries for worker-1 (first on line 1)");
    /* the first offending line wins: a bad line before the duplicate */
    parse_fails("worker-1 slots=2\nbad\nworker-1 slots=1\n",
                "hosts:2: expected \"<host> slots=<n>\", found \"bad\"");
    const char *empty[] = {"", "  \n\t\n", "# a\n# b\n"};
    for (size_t i = 0; i < 3; i++)
        parse_fails(empty[i], "hosts: no hosts (the file is empty or has only comments)");
}

Test(hostfile, load_from_file)
{
    char path[] = "/tmp/ds-test-hosts-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    const char *text = "localhost slots=2\nlocalhost slots=3\n";
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    ds_launch_plan p;
    ds_error err = {0};
    cr_expect_eq(ds_launch_hostfile_load(&p, path, &err), DS_ERR_INVALID);
    char want[256];
    snprintf(want, sizeof want, "%s:2: multiple entries for localhost (first on line 1)", path);
    cr_expect_str_eq(err.msg, want);
    unlink(path);
    cr_expect_eq(ds_launch_hostfile_load(&p, path, &err), DS_ERR_IO);
    cr_expect(strstr(err.msg, path) == err.msg, "%s", err.msg);
}

/* ---- filters -------------------------------------------------------------------------- */

Test(filter, include)
{
    filter_gives(two_hosts, NULL, NULL, "worker-0:0,1,2,3;worker-1:0,1,2,3");
    filter_gives(two_hosts, "", "", "worker-0:0,1,2,3;worker-1:0,1,2,3");
    filter_gives(two_hosts, "worker-1:0,2", NULL, "worker-1:0,2");
    /* the help text's example: a bare host is all its slots (DeepSpeed drops it, #6671) */
    filter_gives(two_hosts, "worker-0@worker-1:0,2", NULL, "worker-0:0,1,2,3;worker-1:0,2");
    filter_gives(two_hosts, "worker-1", NULL, "worker-1:0,1,2,3");
    /* hostfile order, ids merged, deduplicated and sorted */
    filter_gives(two_hosts, "worker-1:3,1@worker-0:2@worker-1:1", NULL, "worker-0:2;worker-1:1,3");
    /* bare and with ids: those ids only (DeepSpeed's merge) */
    filter_gives(two_hosts, "worker-1:0@worker-1", NULL, "worker-1:0");
    /* Python int(): spaces around an id are fine */
    filter_gives(two_hosts, "worker-0: 1", NULL, "worker-0:1");
}

Test(filter, exclude)
{
    filter_gives(two_hosts, NULL, "worker-1:0", "worker-0:0,1,2,3;worker-1:1,2,3");
    filter_gives(two_hosts, NULL, "worker-0", "worker-1:0,1,2,3");
    filter_gives(two_hosts, NULL, "worker-0:0,1,2,3", "worker-1:0,1,2,3");
    filter_gives(two_hosts, NULL, "worker-0:1@worker-1:2,3", "worker-0:0,2,3;worker-1:0,1");
}

/* hostfile hosts written host:port (an ssh port) are named whole, bare or before :IDS */
Test(filter, hosts_with_a_port)
{
    const char *hosts = "n1:2222 slots=2\nn2:2222 slots=2\n";
    filter_gives(hosts, "n1:2222", NULL, "n1:2222:0,1");
    filter_gives(hosts, "n1:2222:1@n2:2222:0", NULL, "n1:2222:1;n2:2222:0");
    filter_gives(hosts, NULL, "n2:2222", "n1:2222:0,1");
    filter_fails(hosts, "n3:1", NULL, "--include term \"n3:1\": host 'n3' not found in hostfile");
}

Test(filter, zero_slot_hosts_dropped_only_with_a_filter)
{
    const char *hosts = "a slots=0\nb slots=2\n";
    filter_gives(hosts, NULL, NULL, "a:;b:0,1");
    filter_gives(hosts, NULL, "b:0", "b:1");
    filter_gives(hosts, "b", NULL, "b:0,1");
}

Test(filter, errors_name_the_term)
{
    filter_fails(two_hosts, "worker-0", "worker-1", "--include and --exclude are mutually exclusive");
    filter_fails(two_hosts, "worker-9", NULL,
                 "--include term \"worker-9\": host 'worker-9' not found in hostfile");
    filter_fails(two_hosts, NULL, "worker-0@worker-9:1",
                 "--exclude term \"worker-9:1\": host 'worker-9' not found in hostfile");
    filter_fails(two_hosts, "worker-0@", NULL, "--include term \"\": host '' not found in hostfile");
    filter_fails(two_hosts, "worker-0 ", NULL,
                 "--include term \"worker-0 \": host 'worker-0 ' not found in hostfile");
    filter_fails(two_hosts, "worker-1:9", NULL,
                 "--include term \"worker-1:9\": no slot '9' specified on host 'worker-1' (slots=4)");
    filter_fails(two_hosts, "worker-1:-1", NULL,
                 "--include term \"worker-1:-1\": no slot '-1' specified on host 'worker-1' (slots=4)");
    filter_fails(two_hosts, NULL, "worker-1:4",
                 "--exclude term \"worker-1:4\": no slot '4' specified on host 'worker-1' (slots=4)");
    filter_fails(two_hosts, "worker-1:a", NULL,
                 "--include term \"worker-1:a\": \"a\" is not a slot id (ids are integers; ranges are "
                 "not supported)");
    filter_fails(two_hosts, "worker-1:", NULL,
                 "--include term \"worker-1:\": \"\" is not a slot id (ids are integers; ranges are "
                 "not supported)");
    filter_fails(two_hosts, "worker-1:0-2", NULL,
                 "--include term \"worker-1:0-2\": \"0-2\" is not a slot id (ids are integers; ranges "
                 "are not supported)");
    filter_fails(two_hosts, "worker-1:0:1", NULL,
                 "--include term \"worker-1:0:1\": more than one ':' (expected HOST:ID[,ID...])");
}

Test(filter, errors_leave_the_plan_unchanged)
{
    ds_launch_plan p = parse_ok(two_hosts);
    ds_error err = {0};
    cr_assert_eq(ds_launch_plan_filter(&p, "worker-0:1@worker-1:7", NULL, &err), DS_ERR_INVALID);
    cr_expect_str_eq(describe(&p), "worker-0:0,1,2,3;worker-1:0,1,2,3");
    ds_launch_plan_free(&p);
}

Test(filter, local_mode)
{
    ds_launch_plan p;
    ds_error err = {0};
    cr_assert_eq(ds_launch_plan_local(&p, 4, &err), DS_OK);
    cr_expect(!p.from_hostfile);
    cr_assert_eq(ds_launch_plan_filter(&p, "localhost:1,3", NULL, &err), DS_OK);
    cr_expect_str_eq(describe(&p), "localhost:1,3");
    cr_assert_eq(ds_launch_plan_filter(&p, "worker-0", NULL, &err), DS_ERR_INVALID);
    cr_expect_str_eq(err.msg, "--include term \"worker-0\": host 'worker-0' not found in local mode "
                              "(only 'localhost')");
    ds_launch_plan_free(&p);
    cr_expect_eq(ds_launch_plan_local(&p, 0, &err), DS_ERR_INVALID);
}

/* ---- --num_nodes / --num_gpus --------------------------------------------------------- */

static void limit_gives(const char *hosts, int nn, int ng, const char *want)
{
    ds_launch_plan p = parse_ok(hosts);
    ds_error err = {0};
    cr_assert_eq(ds_launch_plan_limit(&p, nn, ng, false, &err), DS_OK, "%s", err.msg);
    cr_expect_str_eq(describe(&p), want, "num_nodes %d num_gpus %d", nn, ng);
    ds_launch_plan_free(&p);
}

Test(limit, num_nodes_num_gpus)
{
    const char *h3 = "a slots=4\nb slots=2\nc slots=4\n";
    limit_gives(h3, -1, -1, "a:0,1,2,3;b:0,1;c:0,1,2,3");
    limit_gives(h3, 2, -1, "a:0,1,2,3;b:0,1");
    limit_gives(h3, 9, -1, "a:0,1,2,3;b:0,1;c:0,1,2,3"); /* more than there are: all */
    limit_gives(h3, 0, 0, "a:0,1,2,3;b:0,1;c:0,1,2,3");  /* 0: no effect */
    limit_gives(h3, -1, 2, "a:0,1;b:0,1;c:0,1");
    limit_gives(h3, 1, 3, "a:0,1,2");
}

Test(limit, errors)
{
    ds_launch_plan p = parse_ok("a slots=4\nb slots=2\n");
    ds_error err = {0};
    cr_expect_eq(ds_launch_plan_limit(&p, -1, 4, false, &err), DS_ERR_INVALID);
    cr_expect_str_eq(err.msg, "--num_gpus 4: host 'b' has only slots=2");
    /* DeepSpeed's test_num_plus_parser: any of the two (0 counts) with a filter */
    int combos[][2] = {{0, -1}, {1, -1}, {-1, 0}, {-1, 1}, {1, 1}, {0, 0}};
    for (int i = 0; i < 6; i++) {
        cr_expect_eq(ds_launch_plan_limit(&p, combos[i][0], combos[i][1], true, &err), DS_ERR_INVALID);
        cr_expect_str_eq(err.msg, "--num_nodes/--num_gpus cannot be used with --include/--exclude");
    }
    ds_launch_plan_free(&p);
    cr_assert_eq(ds_launch_plan_local(&p, 2, &err), DS_OK);
    cr_expect_eq(ds_launch_plan_limit(&p, 2, -1, false, &err), DS_ERR_INVALID);
    cr_expect_str_eq(err.msg, "--num_nodes 2: there is no hostfile, so only one node (this one)");
    cr_expect_eq(ds_launch_plan_limit(&p, 1, -1, false, &err), DS_OK);
    ds_launch_plan_free(&p);
}

Test(limit, empty_world_is_an_error)
{
    ds_launch_plan p = parse_ok("a slots=0\n");
    ds_error err = {0};
    cr_expect_eq(ds_launch_plan_finish(&p, &err), DS_ERR_INVALID);
    cr_expect_str_eq(err.msg, "no ranks to run: every host has 0 slots or was filtered out");
    ds_launch_plan_free(&p);
}

/* ---- ranks and environment ------------------------------------------------------------ */

Test(env, uneven_nodes_local_rank_is_position)
{
    /* spec §3.2: world {a:[0,1,2], b:[0,1]}; DeepSpeed gives b LOCAL_RANK 1,0 (RANK mod
     * LOCAL_SIZE), DECISIONS.md the position: 0,1 */
    ds_launch_plan p = parse_ok("a slots=3\nb slots=2\n");
    ds_error err = {0};
    cr_assert_eq(ds_launch_plan_finish(&p, &err), DS_OK);
    cr_expect_eq(p.world_size, 5);
    cr_expect_eq(p.nodes[1].first_rank, 3);
    const char *want[2][3] = {{"3", "0", "3"}, {"4", "1", "4"}};
    for (int l = 0; l < 2; l++) {
        ds_launch_env env;
        cr_assert_eq(ds_launch_rank_env(&p, 1, l, "10.0.0.1", 1234, 16, false, &env, &err), DS_OK);
        cr_expect_str_eq(env_get(&env, "RANK"), want[l][0]);
        cr_expect_str_eq(env_get(&env, "LOCAL_RANK"), want[l][1]);
        cr_expect_str_eq(env_get(&env, "WORLD_SIZE"), "5");
        cr_expect_str_eq(env_get(&env, "LOCAL_SIZE"), "2");
        cr_expect_str_eq(env_get(&env, "CROSS_RANK"), "1");
        cr_expect_str_eq(env_get(&env, "CROSS_SIZE"), "2");
        cr_expect_str_eq(env_get(&env, "MASTER_ADDR"), "10.0.0.1");
        cr_expect_str_eq(env_get(&env, "MASTER_PORT"), "1234");
        cr_expect_str_eq(env_get(&env, "CUDA_VISIBLE_DEVICES"), "0,1");
        cr_expect_str_eq(env_get(&env, "OMP_NUM_THREADS"), "8"); /* 16 cores / 2 local ranks */
        cr_expect_eq(env.count, 10);
        ds_launch_env_free(&env);
    }
    cr_expect_eq(ds_launch_rank_env(&p, 1, 2, "x", 1, 1, false, &(ds_launch_env){0}, &err),
                 DS_ERR_INTERNAL);
    ds_launch_plan_free(&p);
}

Test(env, devices_follow_the_filter_and_omp)
{
    ds_launch_plan p = parse_ok("a slots=4\nb slots=4\n");
    ds_error err = {0};
    cr_assert_eq(ds_launch_plan_filter(&p, NULL, "a@b:0,2", &err), DS_OK);
    cr_assert_eq(ds_launch_plan_finish(&p, &err), DS_OK);
    cr_expect_eq(p.world_size, 2);
    ds_launch_env env;
    cr_assert_eq(ds_launch_rank_env(&p, 0, 1, "127.0.0.1", 29500, 1, true, &env, &err), DS_OK);
    cr_expect_str_eq(env_get(&env, "CUDA_VISIBLE_DEVICES"), "1,3");
    cr_expect_str_eq(env_get(&env, "RANK"), "1");
    cr_expect_str_eq(env_get(&env, "CROSS_SIZE"), "1");
    cr_expect_null(env_get(&env, "OMP_NUM_THREADS")); /* the user set it */
    ds_launch_env_free(&env);
    cr_assert_eq(ds_launch_rank_env(&p, 0, 0, "127.0.0.1", 29500, 1, false, &env, &err), DS_OK);
    cr_expect_str_eq(env_get(&env, "OMP_NUM_THREADS"), "1"); /* at least one thread */
    ds_launch_env_free(&env);
    ds_launch_plan_free(&p);
}

Test(env, deepspeed_env_file)
{
    ds_launch_env env = {0};
    ds_error err = {0};
    const char *text = "# comment\n\nNCCL_DEBUG=INFO\n  PATHS = /a:/b \nEQ=a=b\nNCCL_DEBUG=WARN\n"
                       "EMPTY=\nSPACE=x y\n";
    cr_assert_eq(ds_launch_envfile_parse_text(&env, "envf", text, &err), DS_OK, "%s", err.msg);
    cr_assert_eq(env.count, 5);
    cr_expect_str_eq(env.vars[0].name, "NCCL_DEBUG"); /* a duplicate keeps its first position */
    cr_expect_str_eq(env.vars[0].value, "WARN");
    cr_expect_str_eq(env_get(&env, "PATHS"), "/a:/b");
    cr_expect_str_eq(env_get(&env, "EQ"), "a=b"); /* split at the first '=' */
    cr_expect_str_eq(env_get(&env, "EMPTY"), "");
    cr_expect_str_eq(env_get(&env, "SPACE"), "x y");
    const char *bad[][2] = {{"A=1\nnoequals\n", "envf:2: expected NAME=VALUE, found \"noequals\""},
                            {"=1\n", "envf:1: expected NAME=VALUE, found \"=1\""},
                            {"\n\nA B=1\n", "envf:3: \"A B\" is not a variable name a shell exports (1 to 255 "
                                          "letters, digits and _, not starting with a digit)"},
                            {"1A=1\n", "envf:1: \"1A\" is not a variable name a shell exports (1 to 255 letters, "
                                      "digits and _, not starting with a digit)"}};
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(ds_launch_envfile_parse_text(&env, "envf", bad[i][0], &err), DS_ERR_INVALID);
        cr_expect_str_eq(err.msg, bad[i][1]);
    }
    ds_launch_env_free(&env);
}
