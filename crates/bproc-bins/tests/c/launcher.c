/* A BProc-era launcher, written from BProc 4.0's documentation: start a program on every up
 * node with bproc_vexecmove, each child finding its index in BPROC_RANK, then wait for all of
 * them. With no I/O list the children's output comes to the launcher's stdout (BProc's weak
 * forwarding). Build with cc launcher.c -lbproc. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <errno.h>
#include <sys/bproc.h>

int main(void) {
    struct bproc_node_set_t ns = BPROC_EMPTY_NODESET;
    int i, n, *nodes, *pids, status;
    /* Each child says its rank and exits with 10 + its rank ("1" keeps the zero-padded rank
     * decimal). */
    char *argv[] = {"sh", "-c",
                    "r=$((1$BPROC_RANK - 10000000)); echo child of rank $r; exit $((r + 10))",
                    NULL};
    char *envp[] = {"BPROC_RANK=XXXXXXX", "PATH=/bin:/usr/bin", NULL};

    if (bproc_nodespec(&ns, "allup") < 0) {
        perror("bproc_nodespec");
        return 1;
    }
    n = ns.size;
    nodes = malloc(n * sizeof(int));
    pids = malloc(n * sizeof(int));
    for (i = 0; i < n; i++)
        nodes[i] = ns.node[i].node;
    if (bproc_vexecmove(n, nodes, pids, "/bin/sh", argv, envp) < 0) {
        fprintf(stderr, "bproc_vexecmove: %s\n", bproc_strerror(errno));
        return 1;
    }
    for (i = 0; i < n; i++) {
        if (pids[i] <= 0) {
            printf("rank %d node %d: %s\n", i, nodes[i], bproc_strerror(pids[i]));
            continue;
        }
        if (waitpid(pids[i], &status, 0) != pids[i] || !WIFEXITED(status)) {
            printf("rank %d node %d: no exit status\n", i, nodes[i]);
            continue;
        }
        printf("rank %d node %d exit %d\n", i, nodes[i], WEXITSTATUS(status));
    }
    bproc_nodeset_free(&ns);
    free(nodes);
    free(pids);
    return 0;
}
