/* Run by bpsh on a node: bproc_vrfork to the nodes named on the command line, plus its own
 * node (a local fork) and the front end (refused from a node). Each child says where it
 * runs, stays 2 s (so the test can see its ghost) and exits 10 + its index; the parent
 * waits for every child with waitpid (a remote child's stand-in here ends as it does) and
 * exits 42 when all went as it should. Usage: node_rfork NODE... */
#include <sys/bproc.h>
#include <sys/wait.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int n = 0, nodes[16], pids[16], bad = 0;
    for (int i = 1; i < argc && n < 14; i++) nodes[n++] = atoi(argv[i]);
    int here = bproc_currnode();
    nodes[n++] = here;
    nodes[n++] = BPROC_NODE_MASTER;
    int r = bproc_vrfork(n, nodes, pids);
    if (r < 0) {
        printf("vrfork failed: %s\n", bproc_strerror(errno));
        return 11;
    }
    if (r < n) {
        printf("child %d on node %d\n", r, bproc_currnode());
        fflush(stdout);
        fprintf(stderr, "child %d stderr\n", r);
        sleep(2);
        _exit(bproc_currnode() == nodes[r] ? 10 + r : 99);
    }
    if (pids[n - 1] != -EOPNOTSUPP) {
        printf("front-end child: %d\n", pids[n - 1]);
        bad = 1;
    }
    for (int i = 0; i < n - 1; i++) {
        int st;
        if (pids[i] <= 0) {
            printf("child %d: %s\n", i, bproc_strerror(pids[i]));
            bad = 1;
        } else if (waitpid(pids[i], &st, 0) != pids[i]) {
            printf("waitpid for child %d: %s\n", i, bproc_strerror(errno));
            bad = 1;
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 10 + i) {
            printf("child %d ended with %#x\n", i, st);
            bad = 1;
        }
    }
    printf("parent done\n");
    return bad ? 1 : 42;
}
