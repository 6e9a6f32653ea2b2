/* bproc_vrfork to nodes 0..N-1; each child says so, then executes a shell that says it ran
 * after the exec and exits with 100 + the child's index. The children's ghosts relay their
 * output across the exec (a ghost executes itself again when its process does). Exits 42
 * when every child ended as it should; the shell waits a little first, so that it writes after
 * its ghost executed itself again. Usage: vrfork_exec N */
#include <sys/bproc.h>
#include <sys/wait.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    closefrom(3); /* what the test harness leaves open would not move */
    int n = argc > 1 ? atoi(argv[1]) : 0;
    if (n < 1 || n > 64) {
        fprintf(stderr, "usage: vrfork_exec N\n");
        return 2;
    }
    int nodes[64], pids[64], bad = 0;
    for (int i = 0; i < n; i++) nodes[i] = i;
    int r = bproc_vrfork(n, nodes, pids);
    if (r < 0) {
        printf("vrfork failed: %s\n", bproc_strerror(errno));
        return 11;
    }
    if (r < n) {
        char rank[16];
        snprintf(rank, sizeof rank, "%d", r);
        printf("child %d before exec\n", r);
        fflush(stdout);
        const char *script = "sleep 0.5; echo child $0 after exec; exit $((100 + $0))";
        execl("/bin/sh", "sh", "-c", script, rank, (char *)0);
        _exit(99);
    }
    for (int i = 0; i < n; i++) {
        int st;
        if (pids[i] <= 0 || waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) ||
            WEXITSTATUS(st) != 100 + i) {
            printf("child %d did not end with %d\n", i, 100 + i);
            bad = 1;
        }
    }
    return bad ? 1 : 42;
}
