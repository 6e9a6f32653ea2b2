/* Four threads count while the main thread moves the process to node N and back to the
 * front end: after each move every counter still advances, each thread still has its id,
 * its thread-local variable and a floating-point sum, and the process its pid. Exits 42 when
 * all is well. Usage: threads N */
#define _GNU_SOURCE
#include <sys/bproc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define THREADS 4

static volatile long counters[THREADS];
static pid_t tids[THREADS];
static volatile int wrong[THREADS];
static __thread int mine = -1;

static void *count(void *arg) {
    int i = (int)(long)arg;
    mine = i;
    tids[i] = gettid();
    double sum = 0;
    for (long n = 1;; n++) {
        sum += 0.5;
        if (sum != 0.5 * (double)n || mine != i || gettid() != tids[i]) wrong[i] = 1;
        counters[i] = n;
        if (n % 1000 == 0) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

/* Whether every counter advances within a second. */
static int advancing(void) {
    long before[THREADS];
    for (int i = 0; i < THREADS; i++) before[i] = counters[i];
    for (int tries = 0; tries < 100; tries++) {
        usleep(10000);
        int all = 1;
        for (int i = 0; i < THREADS; i++) all &= counters[i] > before[i];
        if (all) return 1;
    }
    return 0;
}

static void report(const char *when, pid_t pid) {
    int bad = 0;
    for (int i = 0; i < THREADS; i++) bad |= wrong[i];
    printf("%s: node %d, pid %s, %d threads %s, ids and state %s\n", when, bproc_currnode(),
           getpid() == pid ? "same" : "other", THREADS, advancing() ? "counting" : "stuck",
           bad ? "wrong" : "kept");
    fflush(stdout);
}

int main(int argc, char **argv) {
    closefrom(3);
    if (argc != 2) return 2;
    int node = atoi(argv[1]);
    pid_t pid = getpid();
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, count, (void *)i) != 0) return 3;
    report("before", pid);
    int path[2] = {node, BPROC_NODE_MASTER};
    for (int i = 0; i < 2; i++) {
        if (bproc_move(path[i]) != 0) {
            printf("move to %d failed: %s\n", path[i], bproc_lasterror());
            return 10 + i;
        }
        report("after", pid);
    }
    return 42;
}
