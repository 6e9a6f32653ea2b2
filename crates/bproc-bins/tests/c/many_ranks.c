/* Starts N ranks of a program on node 0 with bproc_vexecmove and says how that went:
 * "started" and then waits for every rank, or "vexecmove: ERRNO-NAME" and exits 2. Build
 * with cc many_ranks.c -lbproc; run as many_ranks N PROGRAM ARGS... */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <sys/bproc.h>

extern char **environ;

int main(int argc, char **argv) {
    int i, n, *nodes, *pids, status;

    if (argc < 3) {
        fprintf(stderr, "usage: many_ranks N PROGRAM ARGS...\n");
        return 1;
    }
    n = atoi(argv[1]);
    nodes = calloc(n, sizeof(int));
    pids = calloc(n, sizeof(int));
    if (bproc_vexecmove(n, nodes, pids, argv[2], argv + 2, environ) < 0) {
        printf("vexecmove: %s\n", errno == EINTR ? "EINTR" : strerror(errno));
        return 2;
    }
    printf("started\n");
    fflush(stdout);
    for (i = 0; i < n; i++)
        if (pids[i] > 0)
            waitpid(pids[i], &status, 0);
    free(nodes);
    free(pids);
    return 0;
}
