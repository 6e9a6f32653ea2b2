/* bproc_vrfork to nodes 0..N-1 (N <= 3); each child writes the numbers 0..LINES-1, moves on
 * to the next node and writes 1000000 + the node it is on and the numbers LINES..2*LINES-1,
 * moves back to the front end (into its ghost) at once and writes 2000000 + 1 + the node it
 * is on (-1), then exits with 100 + its index. Each
 * child writes in an alphabet of its own (a digit and separator per child), so that its
 * output can be told from the others' however their writes interleave. Exits 42 when every
 * child ended as it should. Usage: vrfork_journey N LINES */
#include <sys/bproc.h>
#include <sys/wait.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char *digits[3] = {"ABCDEFGHIJ", "KLMNOPQRST", "abcdefghij"};
static const char seps[3] = {'.', ',', ';'};

static void say(int r, int v) {
    char num[16];
    int len = snprintf(num, sizeof num, "%d", v);
    for (int i = 0; i < len; i++) putchar(digits[r][num[i] - '0']);
    putchar(seps[r]);
}

int main(int argc, char **argv) {
    closefrom(3); /* what the test harness leaves open would not move */
    int n = argc > 2 ? atoi(argv[1]) : 0, lines = argc > 2 ? atoi(argv[2]) : 0;
    if (n < 2 || n > 3) {
        fprintf(stderr, "usage: vrfork_journey N LINES\n");
        return 2;
    }
    int nodes[3], pids[3], bad = 0;
    for (int i = 0; i < n; i++) nodes[i] = i;
    int r = bproc_vrfork(n, nodes, pids);
    if (r < 0) {
        printf("vrfork failed: %s\n", bproc_strerror(errno));
        return 11;
    }
    if (r < n) {
        for (int k = 0; k < lines; k++) say(r, k);
        fflush(stdout);
        if (bproc_move((r + 1) % n) != 0) _exit(98);
        say(r, 1000000 + bproc_currnode());
        for (int k = lines; k < 2 * lines; k++) say(r, k);
        fflush(stdout);
        if (bproc_move(BPROC_NODE_MASTER) != 0) _exit(97);
        say(r, 2000001 + bproc_currnode());
        fflush(stdout);
        _exit(100 + r);
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
