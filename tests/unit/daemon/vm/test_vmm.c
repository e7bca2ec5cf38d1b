/* Unit tests for the VM manager's pure helpers (names, sizes, formatting)
 * and its schema migration. The lifecycle itself is tested end to end with
 * real QEMU in tests/e2e/test_vm_lifecycle.py. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "daemon/base/store.h"
#include "daemon/vm/manager.h"
#include "lib/err.h"
#include "nbtest.h"

static void test_names(void)
{
    NB_CHECK(nb_vm_valid_name("a"));
    NB_CHECK(nb_vm_valid_name("default"));
    NB_CHECK(nb_vm_valid_name("web-1"));
    NB_CHECK(nb_vm_valid_name("a2345678901234567890123456789012"));   /* 32 */
    NB_CHECK(!nb_vm_valid_name("a23456789012345678901234567890123")); /* 33 */
    NB_CHECK(!nb_vm_valid_name(""));
    NB_CHECK(!nb_vm_valid_name(NULL));
    NB_CHECK(!nb_vm_valid_name("1abc"));
    NB_CHECK(!nb_vm_valid_name("-abc"));
    NB_CHECK(!nb_vm_valid_name("Abc"));
    NB_CHECK(!nb_vm_valid_name("a_b"));
    NB_CHECK(!nb_vm_valid_name("a.b"));
    NB_CHECK(!nb_vm_valid_name("a/b"));
    NB_CHECK(!nb_vm_valid_name("a b"));
    NB_CHECK(!nb_vm_valid_name("\xc3\xa9t\xc3\xa9"));

    NB_CHECK(nb_vm_valid_snapshot("s1"));
    NB_CHECK(nb_vm_valid_snapshot("before-upgrade_2.0"));
    NB_CHECK(!nb_vm_valid_snapshot("12")); /* qemu-img would take it for an id */
    NB_CHECK(!nb_vm_valid_snapshot(""));
    NB_CHECK(!nb_vm_valid_snapshot(".hidden"));
    NB_CHECK(!nb_vm_valid_snapshot("-x"));
    NB_CHECK(!nb_vm_valid_snapshot("a/b"));
    NB_CHECK(!nb_vm_valid_snapshot("a b"));
    NB_CHECK(!nb_vm_valid_snapshot("123456789012345678901234567890abc")); /* 33 */

    NB_CHECK_STR(nb_vm_state_name(NB_VM_RUNNING), "running");
    NB_CHECK_STR(nb_vm_state_name(NB_VM_CRASHED), "crashed");
    NB_CHECK_STR(nb_vm_state_name((nb_vm_state_t)99), "unknown");
}

static void test_sizes(void)
{
    uint64_t v = 0;
    NB_CHECK_EQ_INT(nb_vm_parse_size("1048576", &v), 0);
    NB_CHECK_EQ_INT(v, 1048576);
    NB_CHECK_EQ_INT(nb_vm_parse_size("2G", &v), 0);
    NB_CHECK_EQ_INT(v, 2ull << 30);
    NB_CHECK_EQ_INT(nb_vm_parse_size("512M", &v), 0);
    NB_CHECK_EQ_INT(v, 512ull << 20);
    NB_CHECK_EQ_INT(nb_vm_parse_size("4GiB", &v), 0);
    NB_CHECK_EQ_INT(v, 4ull << 30);
    NB_CHECK_EQ_INT(nb_vm_parse_size("1t", &v), 0);
    NB_CHECK_EQ_INT(v, 1ull << 40);
    NB_CHECK_EQ_INT(nb_vm_parse_size("64k", &v), 0);
    NB_CHECK_EQ_INT(v, 65536);
    NB_CHECK_EQ_INT(nb_vm_parse_size("", &v), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_vm_parse_size("G", &v), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_vm_parse_size("-1G", &v), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_vm_parse_size("1X", &v), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_vm_parse_size("1GG", &v), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_vm_parse_size("99999999999999999999", &v), NB_EINVAL);
    NB_CHECK_EQ_INT(nb_vm_parse_size("17179869184T", &v), NB_EINVAL); /* 2^64 */
    NB_CHECK_EQ_INT(nb_vm_parse_size(NULL, &v), NB_EINVAL);
}

static void test_fmt(void)
{
    char b[8];
    NB_CHECK_EQ_INT(nb_vm_fmt(b, sizeof b, "%s", "1234567"), 0);
    NB_CHECK_STR(b, "1234567");
    NB_CHECK_EQ_INT(nb_vm_fmt(b, sizeof b, "%s", "12345678"), NB_ETOOBIG);
    NB_CHECK_STR(b, "1234567");
}

/* Rows of `vms` whose accel is `v`. */
static int accel_rows(nb_store_t *st, const char *v)
{
    sqlite3_stmt *q = NULL;
    int n = -1;
    if (sqlite3_prepare_v2(nb_store_db(st), "SELECT count(*) FROM vms WHERE accel = ?1", -1, &q,
                           NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, v, -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW)
            n = sqlite3_column_int(q, 0);
    }
    sqlite3_finalize(q);
    return n;
}

static void test_migration(void)
{
    char path[] = "/tmp/nb-test-vmm-XXXXXX", db[64], err[256];
    nb_store_t *st = NULL;
    NB_CHECK(mkdtemp(path) != NULL);
    snprintf(db, sizeof db, "%s/state.db", path);
    NB_CHECK_EQ_INT(nb_store_open(db, &st, err, sizeof err), 0);
    if (!st)
        return;
    NB_CHECK_EQ_INT(nb_store_exec(st, "INSERT INTO vms (name, image, cpus, memory_mib, disk_bytes,"
                                      " restart, created_ms) VALUES ('a', 'tiny', 1, 512, 0,"
                                      " 'never', 0)"),
                    0);
    /* Duplicates and unknown restart policies are refused by the schema. */
    NB_CHECK(
        nb_store_exec(st, "INSERT INTO vms (name, image, cpus, memory_mib, disk_bytes,"
                          " restart, created_ms) VALUES ('a', 'tiny', 1, 512, 0, 'never', 0)") < 0);
    NB_CHECK(nb_store_exec(
                 st, "INSERT INTO vms (name, image, cpus, memory_mib, disk_bytes,"
                     " restart, created_ms) VALUES ('b', 'tiny', 1, 512, 0, 'always', 0)") < 0);
    NB_CHECK_EQ_INT(nb_store_count(st, "vms"), 1);
    /* Migration 4: the accelerator setting; '' (the daemon's default) for
     * rows of before, and only the three known values. */
    NB_CHECK_EQ_INT(accel_rows(st, ""), 1);
    NB_CHECK_EQ_INT(nb_store_exec(st, "UPDATE vms SET accel = 'kvm' WHERE name = 'a'"), 0);
    NB_CHECK_EQ_INT(nb_store_exec(st, "UPDATE vms SET accel = 'tcg' WHERE name = 'a'"), 0);
    NB_CHECK_EQ_INT(nb_store_exec(st, "UPDATE vms SET accel = 'auto' WHERE name = 'a'"), 0);
    NB_CHECK(nb_store_exec(st, "UPDATE vms SET accel = 'hvf' WHERE name = 'a'") < 0);
    NB_CHECK(nb_store_exec(st, "UPDATE vms SET accel = NULL WHERE name = 'a'") < 0);
    NB_CHECK_EQ_INT(accel_rows(st, "auto"), 1);
    nb_store_close(st);
    unlink(db);
    char wal[80];
    snprintf(wal, sizeof wal, "%s-wal", db);
    unlink(wal);
    snprintf(wal, sizeof wal, "%s-shm", db);
    unlink(wal);
    rmdir(path);
}

int main(void)
{
    NB_RUN(test_names);
    NB_RUN(test_sizes);
    NB_RUN(test_fmt);
    NB_RUN(test_migration);
    NB_TEST_MAIN_END();
}
