/* bproc_vrfork of N children, all to node 0; each child sleeps 30 s, and the parent waits
 * for them. Usage: many_vrforks N */
#include <sys/bproc.h>
#include <sys/wait.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    closefrom(3); /* what the test harness leaves open would not move */
    int n = argc > 1 ? atoi(argv[1]) : 0;
    if (n < 1 || n > 1000) {
        fprintf(stderr, "usage: many_vrforks N\n");
        return 2;
    }
    int *nodes = calloc(n, sizeof(int)), *pids = calloc(n, sizeof(int));
    int r = bproc_vrfork(n, nodes, pids);
    if (r < 0) {
        printf("vrfork failed: %s\n", bproc_strerror(errno));
        return 11;
    }
    if (r < n) {
        sleep(30);
        _exit(0);
    }
    for (int i = 0; i < n; i++) {
        int st;
        if (pids[i] > 0)
            waitpid(pids[i], &st, 0);
    }
    return 0;
}
