/* Forks N pairs of children, each ending at once, under a SIGCHLD handler that does not
 * restart calls: the first child's end often comes while the second fork waits for its
 * ghost, and the kernel then makes that fork again. Reaps each pair, prints "N pairs" and
 * waits for a signal, so that what it left on the front end can be counted meanwhile.
 * A fork that fails with EINTR is tried again (and counted on stderr). Usage: fork_pairs N */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_child(int sig) { (void)sig; }

static pid_t fork_one(int *interrupted) {
    for (;;) {
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid > 0) return pid;
        if (errno != EINTR) {
            perror("fork");
            exit(1);
        }
        ++*interrupted;
    }
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 0;
    if (n < 1 || n > 100000) {
        fprintf(stderr, "usage: fork_pairs N\n");
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_child}; /* no SA_RESTART */
    sigaction(SIGCHLD, &sa, NULL);
    int interrupted = 0;
    for (int i = 0; i < n; i++) {
        pid_t a = fork_one(&interrupted);
        pid_t b = fork_one(&interrupted);
        while (waitpid(a, NULL, 0) < 0 && errno == EINTR) {}
        while (waitpid(b, NULL, 0) < 0 && errno == EINTR) {}
    }
    if (interrupted) fprintf(stderr, "%d forks failed with EINTR and were tried again\n", interrupted);
    printf("%d pairs\n", n);
    fflush(stdout);
    pause();
    return 0;
}
