/* Run by bpsh on a node: bproc_vrfork to the nodes named on the command line, plus its own
 * node (a local fork) and the front end (refused from a node). Each child says where it
 * runs, stays 2 s (so the test can see its ghost) and exits 10 + its index, or 20 + its
 * index if SIGUSR1 came (sent to child 0's stand-in here, which passes it on); the parent
 * waits for every child with waitpid (a remote child's stand-in here ends as it does) and
 * exits 42 when all went as it should. Usage: node_rfork NODE... */
#include <sys/bproc.h>
#include <sys/wait.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t poked;
static void poke(int sig) { (void)sig; poked = 1; }

int main(int argc, char **argv) {
    int n = 0, nodes[16], pids[16], bad = 0;
    for (int i = 1; i < argc && n < 14; i++) nodes[n++] = atoi(argv[i]);
    int here = bproc_currnode();
    nodes[n++] = here;
    nodes[n++] = BPROC_NODE_MASTER;
    signal(SIGUSR1, poke); /* the children have it too */
    int r = bproc_vrfork(n, nodes, pids);
    if (r < 0) {
        printf("vrfork failed: %s\n", bproc_strerror(errno));
        return 11;
    }
    if (r < n) {
        printf("child %d on node %d\n", r, bproc_currnode());
        fflush(stdout);
        fprintf(stderr, "child %d stderr\n", r);
        for (int i = 0; i < 20; i++) usleep(100000);
        _exit(bproc_currnode() != nodes[r] ? 99 : poked ? 20 + r : 10 + r);
    }
    /* A signal to child 0's stand-in reaches child 0, which then exits 20. */
    if (pids[0] > 0) kill(pids[0], SIGUSR1);
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
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != (i == 0 ? 20 : 10 + i)) {
            printf("child %d ended with %#x\n", i, st);
            bad = 1;
        }
    }
    printf("parent done\n");
    return bad ? 1 : 42;
}
