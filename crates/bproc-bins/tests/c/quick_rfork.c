/* Run by bpsh on a node: bproc_vrfork to the nodes named on the command line, each child
 * exiting at once with 10 + its index, before its stand-in here has asked the master how it
 * ended; the parent waits for every child and exits 42 when each status came through.
 * Usage: quick_rfork NODE... */
#include <sys/bproc.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int n = 0, nodes[16], pids[16], bad = 0;
    for (int i = 1; i < argc && n < 16; i++) nodes[n++] = atoi(argv[i]);
    int r = bproc_vrfork(n, nodes, pids);
    if (r < 0) {
        printf("vrfork failed\n");
        return 11;
    }
    if (r < n) _exit(10 + r);
    for (int i = 0; i < n; i++) {
        int st;
        if (pids[i] <= 0 || waitpid(pids[i], &st, 0) != pids[i]) {
            printf("child %d: no pid or no wait\n", i);
            bad = 1;
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 10 + i) {
            printf("child %d ended with %#x\n", i, st);
            bad = 1;
        }
    }
    return bad ? 1 : 42;
}
