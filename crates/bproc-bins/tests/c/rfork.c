/* bproc_rfork to each of nodes 0..N-1, one at a time, each child returning its rank through
 * its exit status; then bproc_vrfork to all N at once, each child returning 100 + its index.
 * Every child is the caller's own child (waitpid gets its status) and says where it runs.
 * Exits 42 when all is well. Usage: rfork N */
#include <sys/bproc.h>
#include <sys/wait.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int status_of(int pid) {
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + WTERMSIG(st);
}

int main(int argc, char **argv) {
    closefrom(3); /* what the test harness leaves open would not move */
    int n = argc > 1 ? atoi(argv[1]) : 0;
    if (n <= 0 || n > 64) {
        fprintf(stderr, "usage: rfork N\n");
        return 2;
    }
    int nodes[64], pids[64], bad = 0;
    for (int i = 0; i < n; i++) {
        int pid = bproc_rfork(i);
        if (pid == 0) {
            printf("rfork child %d on node %d\n", i, bproc_currnode());
            fflush(stdout);
            _exit(bproc_currnode() == i ? i : 99);
        }
        if (pid < 0) {
            printf("rfork to %d failed: %s\n", i, bproc_strerror(pid == -1 ? errno : pid));
            return 10;
        }
        pids[i] = pid;
    }
    for (int i = 0; i < n; i++) {
        int st = status_of(pids[i]);
        if (st != i) {
            printf("rfork child %d ended with %d\n", i, st);
            bad = 1;
        }
    }
    for (int i = 0; i < n; i++) nodes[i] = i;
    int r = bproc_vrfork(n, nodes, pids);
    if (r < 0) {
        printf("vrfork failed: %s\n", bproc_strerror(errno));
        return 11;
    }
    if (r < n) {
        printf("vrfork child %d on node %d\n", r, bproc_currnode());
        fflush(stdout);
        _exit(bproc_currnode() == nodes[r] ? 100 + r : 99);
    }
    for (int i = 0; i < n; i++) {
        int st = pids[i] > 0 ? status_of(pids[i]) : pids[i];
        if (st != 100 + i) {
            printf("vrfork child %d ended with %d\n", i, st);
            bad = 1;
        }
    }
    if (wait(NULL) != -1 || errno != ECHILD) {
        printf("a child the caller did not make\n");
        bad = 1;
    }
    return bad ? 1 : 42;
}
