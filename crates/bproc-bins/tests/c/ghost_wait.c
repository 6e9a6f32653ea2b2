/* Starts a remote child with libbproc and waits for it as for any child: the ghost test's
 * C program. Usage: ghost_wait NODE MODE [FILE]
 *   exit    the child exits with 42
 *   signal  the child kills itself with SIGSEGV
 *   wait    the child waits for signals (the test sends them to the printed pid): it writes
 *           "ready" to FILE once its handler is set; USR1 makes it write "usr1" to FILE and
 *           exit 3; TERM ends it
 *   pid     the child writes its own pid ($$) to FILE and exits 0
 *   exec    a forked child calls bproc_execmove and becomes the ghost; exits 5
 *   down    vexecmove to NODE, which is down: prints the per-node code
 *   stop    the child loops; the program sends its ghost SIGTSTP and prints the stop signal
 *           waitpid(WUNTRACED) reports, then continues it and ends it with SIGTERM
 * Prints "pid P" (P > 0 is the ghost) as soon as the child runs (in wait mode then
 * "node N (pid Q: -1)": bproc_pidnode of the child and of itself), then how it ended. */
#include <sys/bproc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: ghost_wait NODE MODE [FILE]\n");
        return 2;
    }
    int node = atoi(argv[1]);
    const char *mode = argv[2];
    const char *file = argc > 3 ? argv[3] : "/dev/null";
    char script[512];
    struct rlimit nocore = {0, 0};
    setrlimit(RLIMIT_CORE, &nocore);
    if (!strcmp(mode, "exit"))
        snprintf(script, sizeof script, "exit 42");
    else if (!strcmp(mode, "signal"))
        snprintf(script, sizeof script, "kill -SEGV $$");
    else if (!strcmp(mode, "wait"))
        snprintf(script, sizeof script,
                 "trap 'echo usr1 > %s; exit 3' USR1; echo ready > %s; while :; do sleep 0.05; done",
                 file, file);
    else if (!strcmp(mode, "pid"))
        snprintf(script, sizeof script, "echo $$ > %s", file);
    else if (!strcmp(mode, "stop"))
        snprintf(script, sizeof script, "while :; do sleep 0.05; done");
    else if (!strcmp(mode, "exec") || !strcmp(mode, "down"))
        snprintf(script, sizeof script, "exit 5");
    else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    char *args[] = {"sh", "-c", script, NULL};
    int pid;
    if (!strcmp(mode, "exec")) {
        pid = fork();
        if (pid == 0) {
            bproc_execmove(node, "/bin/sh", args, environ);
            printf("execmove: %s\n", bproc_strerror(errno));
            _exit(100);
        }
    } else {
        int r = bproc_vexecmove(1, &node, &pid, "/bin/sh", args, environ);
        if (r != 1) {
            printf("vexecmove: %s\n", bproc_strerror(errno));
            return 1;
        }
        if (pid <= 0) {
            printf("pids[0] = %d (%s)\n", pid, bproc_strerror(pid));
            return 0;
        }
    }
    printf("pid %d\n", pid);
    if (!strcmp(mode, "wait")) /* it runs until signalled: its node is known meanwhile */
        printf("node %d (pid %d: %d)\n", bproc_pidnode(pid), getpid(), bproc_pidnode(getpid()));
    fflush(stdout);
    int status;
    if (!strcmp(mode, "stop")) {
        kill(pid, SIGTSTP);
        if (waitpid(pid, &status, WUNTRACED) != pid || !WIFSTOPPED(status)) {
            printf("not stopped\n");
            return 1;
        }
        printf("stopped %d\n", WSTOPSIG(status));
        kill(pid, SIGCONT);
        kill(pid, SIGTERM);
    }
    if (waitpid(pid, &status, 0) != pid) {
        perror("waitpid");
        return 1;
    }
    if (WIFEXITED(status))
        printf("exited %d\n", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        printf("signaled %d core %d\n", WTERMSIG(status), WCOREDUMP(status) ? 1 : 0);
    return 0;
}
