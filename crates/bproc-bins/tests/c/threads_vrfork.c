/* bproc_vrfork of a process with four more threads to N children on nodes 0 and 1; each
 * child ends at once, its threads with it. The parent waits for every child, giving up after
 * 20 s, and prints how many ended. Usage: threads_vrfork N */
#include <sys/bproc.h>
#include <sys/wait.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define THREADS 4

static void on_alarm(int sig) { (void)sig; }

static void *idle(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

int main(int argc, char **argv) {
    closefrom(3); /* what the test harness leaves open would not move */
    int n = argc > 1 ? atoi(argv[1]) : 0;
    if (n < 1 || n > 1000) {
        fprintf(stderr, "usage: threads_vrfork N\n");
        return 2;
    }
    pthread_t t;
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&t, NULL, idle, NULL) != 0) return 3;
    int *nodes = calloc(n, sizeof(int)), *pids = calloc(n, sizeof(int));
    for (int i = 0; i < n; i++) nodes[i] = i % 2;
    int r = bproc_vrfork(n, nodes, pids);
    if (r < 0) {
        printf("vrfork failed: %s\n", bproc_strerror(errno));
        return 11;
    }
    if (r < n) _exit(0);
    struct sigaction sa = {.sa_handler = on_alarm}; /* no SA_RESTART: the wait ends */
    sigaction(SIGALRM, &sa, NULL);
    alarm(20);
    int ended = 0;
    for (int i = 0; i < n; i++) {
        int st;
        if (pids[i] > 0 && waitpid(pids[i], &st, 0) == pids[i]) ended++;
        else if (errno == EINTR) break;
    }
    printf("%d of %d ended\n", ended, n);
    return 0;
}
