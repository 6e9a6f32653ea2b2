/* Exercises libbproc's C API on a live cluster and prints what it sees, for the test to
 * compare. Written against BProc 4.0's documentation: sys/bproc.h, -1 and errno. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/bproc.h>
#include <sys/wait.h>
#include <unistd.h>

static void fail(const char *what, int r) {
    printf("%s: %d %s\n", what, r, r < 0 ? bproc_strerror(errno) : "ok");
}

int main(int argc, char **argv) {
    char buf[BPROC_STATE_LEN + 1];
    struct bproc_node_info_t info;
    struct bproc_node_set_t all = BPROC_EMPTY_NODESET, some = BPROC_EMPTY_NODESET;
    struct sockaddr_in sin;
    int size = sizeof sin, i;

    if (argc > 1 && strcmp(argv[1], "where") == 0) {
        printf("currnode %d\n", bproc_currnode());
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "libs") == 0) {
        /* The library list: add argv[2], find it listed, delete it twice. */
        char *list = NULL, *p;
        int found = 0, names = 0;
        fail("libadd", bproc_libadd(argv[2]));
        fail("liblist", bproc_liblist(&list));
        for (p = list; p && *p; p += strlen(p) + 1, names++)
            found += strcmp(p, argv[2]) == 0;
        printf("listed %d of %s\n", found, names > 0 ? "some" : "none");
        free(list);
        fail("libdel", bproc_libdel(argv[2]));
        fail("libdel again", bproc_libdel(argv[2]));
        fail("libadd relative", bproc_libadd("libc.so.6"));
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "chmod") == 0) {
        fail("chmod 1", bproc_chmod(1, 0111));
        fail("access 2", bproc_access(2, BPROC_X_OK));
        return 0;
    }
    printf("numnodes %d currnode %d\n", bproc_numnodes(), bproc_currnode());
    fail("nodestatus 1", bproc_nodestatus(1, buf, sizeof buf));
    printf("status %s\n", buf);
    fail("nodestatus 99", bproc_nodestatus(99, buf, sizeof buf));
    fail("nodestatus -1", bproc_nodestatus(-1, buf, sizeof buf));
    fail("nodeinfo 2", bproc_nodeinfo(2, &info));
    printf("info %d %s %o %u %u %s\n", info.node, info.status, info.mode, info.user, info.group,
           inet_ntoa(((struct sockaddr_in *)&info.addr)->sin_addr));
    fail("nodeaddr 0", bproc_nodeaddr(0, (struct sockaddr *)&sin, &size));
    printf("addr %s size %d\n", inet_ntoa(sin.sin_addr), size);
    printf("nodelist %d\n", bproc_nodelist(&all));
    for (i = 0; i < all.size; i++)
        printf(" %d:%s", bproc_node_set_node(&all, i)->node, bproc_node_set_node(&all, i)->status);
    printf("\n");
    fail("nodefilter 1-2,0", bproc_nodefilter(&some, &all, "1-2,0"));
    for (i = 0; i < some.size; i++)
        printf(" %d", some.node[i].node);
    printf("\n");
    fail("nodeset_append", bproc_nodeset_append(&some, &some));
    printf("append %d\n", some.size);
    bproc_nodeset_free(&some);
    fail("nodespec allup", bproc_nodespec(&some, "allup"));
    printf("allup %d\n", some.size);
    bproc_nodeset_free(&some);
    fail("nodespec bad", bproc_nodespec(&some, "1-x"));
    bproc_nodeset_free(&all);
    {
        int fd = bproc_notifier();
        struct pollfd p = {fd, POLLIN, 0};
        printf("notifier %s\n", fd >= 0 ? "ok" : "failed");
        printf("initially readable %d\n", poll(&p, 1, 2000));
        printf("nodelist_ %d\n", bproc_nodelist_(&all, fd));
        bproc_nodeset_free(&all);
        printf("then readable %d\n", poll(&p, 1, 0));
        fail("nodesetstatus 3", bproc_nodesetstatus(3, "maint"));
        printf("after a change readable %d\n", poll(&p, 1, 2000));
    }
    fail("nodestatus 3", bproc_nodestatus(3, buf, sizeof buf));
    printf("status %s\n", buf);
    fail("chmod 3", bproc_chmod(3, 0100));
    fail("access 3", bproc_access(3, BPROC_X_OK));
    fail("chmod bad bits", bproc_chmod(3, 0777));
    printf("strerror %s / %s\n", bproc_strerror(BE_NODEDOWN), bproc_strerror(-ENOENT));
    fail("move -1", bproc_move(BPROC_NODE_MASTER));
    /* A notifier does not follow the process to the node (its thread stops before the move
     * and its fds are closed there, as BProc closed what could not travel), and never reads
     * what the moved process opens next under its old numbers; from the node, an rfork to
     * that node is a local fork (BProc's BE_SAMENODE), whose status waitpid gets. */
    fail("move 1", bproc_move(1));
    int pid = bproc_rfork(1), st = 0;
    if (pid == 0) _exit(7);
    int waited = pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st);
    printf("rfork 1: %s %d\n", waited ? "exited" : "failed", waited ? WEXITSTATUS(st) : pid);
    return 0;
}
