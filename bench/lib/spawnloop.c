/* The spawn floor for launch benchmarks: starts N copies of a program with posix_spawn, at
 * most P at a time (one per core), and waits for each: what N launches cost this machine with
 * nothing but the kernel's process creation in the way.
 *
 *   spawnloop N P PROGRAM [ARGS...]
 */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: spawnloop N P PROGRAM [ARGS...]\n");
        return 2;
    }
    long n = atol(argv[1]), p = atol(argv[2]), running = 0, started = 0;
    while (started < n || running > 0) {
        while (started < n && running < p) {
            pid_t pid;
            if (posix_spawn(&pid, argv[3], NULL, NULL, &argv[3], environ) != 0) {
                perror("posix_spawn");
                return 1;
            }
            started++;
            running++;
        }
        int st;
        if (wait(&st) > 0)
            running--;
    }
    return 0;
}
