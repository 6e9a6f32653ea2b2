/* Moves itself with 64 MiB of data from the front end to node A, then node B, then back,
 * checking after each move what must have come along: memory, TLS, heap growth, stdio,
 * signal handlers, its pid and where it runs. Exits 42 when all is well.
 * Usage: move A B */
#include <sys/bproc.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BIG (64u << 20)

static __thread int moves = 7;
static volatile sig_atomic_t usr1;
static unsigned char *big;

static void on_usr1(int sig) { (void)sig; usr1 = 1; }

static unsigned char pattern(size_t i) { return (unsigned char)(i * 7 + i / 4096); }

static int check(int node, pid_t pid, unsigned long sum0) {
    int bad = 0;
    unsigned long sum = 0;
    for (size_t i = 0; i < BIG; i++) {
        if (big[i] != pattern(i)) { bad |= 1; break; }
        sum += big[i];
    }
    if (!bad && sum != sum0) bad |= 1;
    if (moves != 7 + 1) bad |= 2;
    moves = 7;
    /* The heap grows on the new node. */
    unsigned char *more = malloc(16u << 20);
    if (!more) bad |= 4;
    else {
        memset(more, 0x5a, 16u << 20);
        if (more[(16u << 20) - 1] != 0x5a) bad |= 4;
        free(more);
    }
    usr1 = 0;
    raise(SIGUSR1);
    if (!usr1) bad |= 8;
    if (getpid() != pid) bad |= 16;
    if (bproc_currnode() != node) bad |= 32;
    if (printf("stdout from node %d\n", node) < 0 || fflush(stdout) != 0) bad |= 64;
    if (fprintf(stderr, "stderr from node %d\n", node) < 0) bad |= 64;
    if (bad) printf("node %d: checks failed: %#x\n", node, bad);
    return bad;
}

int main(int argc, char **argv) {
    closefrom(3); /* what the test harness leaves open would not move */
    if (argc != 3) {
        fprintf(stderr, "usage: move A B\n");
        return 2;
    }
    int path[3] = {atoi(argv[1]), atoi(argv[2]), BPROC_NODE_MASTER};
    signal(SIGUSR1, on_usr1);
    big = malloc(BIG);
    if (!big) return 3;
    unsigned long sum0 = 0;
    for (size_t i = 0; i < BIG; i++) {
        big[i] = pattern(i);
        sum0 += big[i];
    }
    pid_t pid = getpid();
    printf("pid %d on node %d\n", (int)pid, bproc_currnode());
    int bad = 0;
    for (int i = 0; i < 3; i++) {
        moves++;
        if (bproc_move(path[i]) != 0) {
            printf("move to %d failed: %s\n", path[i], bproc_strerror(errno));
            return 10 + i;
        }
        bad |= check(path[i], pid, sum0);
    }
    return bad ? 1 : 42;
}
