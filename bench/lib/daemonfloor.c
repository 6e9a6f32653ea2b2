/* The daemon floor for launch benchmarks: the least that a launch through node daemons costs
 * when every daemon shares this machine, as on a virtual cluster. A "master" holds one open
 * Unix stream socket to each of N daemon processes (no connection is made per launch, no
 * tree, no output forwarding, no identity, no checks); a launch writes one byte to every
 * daemon, each daemon posix_spawns the program, waits for it and answers one byte, and the
 * launch ends when all have answered.
 *
 *   daemonfloor up N SOCKET PROGRAM [ARGS...]   start the master and N daemons in the
 *                                               background; prints the master's pid once
 *                                               all are ready
 *   daemonfloor launch SOCKET                   one launch on every daemon, timed from outside
 *   daemonfloor down SOCKET                     stop the master and its daemons
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int unix_addr(const char *path, struct sockaddr_un *a) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path) {
        fprintf(stderr, "daemonfloor: socket path too long: %s\n", path);
        return -1;
    }
    strcpy(a->sun_path, path);
    return 0;
}

static void daemon_loop(int s, char **prog) {
    char c;
    while (read(s, &c, 1) == 1) {
        pid_t pid;
        int st;
        if (posix_spawn(&pid, prog[0], NULL, NULL, prog, environ) != 0 ||
            waitpid(pid, &st, 0) != pid)
            c = 1;
        else
            c = 0;
        if (write(s, &c, 1) != 1)
            break;
    }
    _exit(0);
}

static int up(long n, const char *path, char **prog, int ready) {
    int *link = calloc(n, sizeof *link);
    struct pollfd *fds = calloc(n, sizeof *fds);
    for (long i = 0; i < n; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
            perror("socketpair");
            return 1;
        }
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            close(sv[0]);
            daemon_loop(sv[1], prog);
        }
        close(sv[1]);
        link[i] = sv[0];
        fds[i].fd = sv[0];
        fds[i].events = POLLIN;
    }
    struct sockaddr_un a;
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (unix_addr(path, &a) != 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(l, 16) != 0) {
        perror("daemonfloor: listen");
        return 1;
    }
    dprintf(ready, "%d\n", getpid());
    close(ready);
    for (;;) {
        int c = accept(l, NULL, NULL);
        char req;
        if (c < 0 || read(c, &req, 1) != 1) {
            if (c >= 0)
                close(c);
            continue;
        }
        if (req == 'q')
            return 0; /* the daemons get SIGKILL as their parent goes */
        char one = 0, failed = 0;
        for (long i = 0; i < n; i++)
            if (write(link[i], &one, 1) != 1)
                failed = 1;
        for (long left = n; left > 0;) {
            if (poll(fds, n, -1) < 0)
                break;
            for (long i = 0; i < n; i++) {
                if (!(fds[i].revents & (POLLIN | POLLHUP)))
                    continue;
                char r;
                if (read(link[i], &r, 1) != 1 || r != 0)
                    failed = 1;
                left--;
            }
        }
        if (write(c, &failed, 1) != 1)
            perror("daemonfloor: answer");
        close(c);
    }
}

static int ask(const char *path, char req) {
    struct sockaddr_un a;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    char r = 1;
    if (unix_addr(path, &a) != 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("daemonfloor: connect");
        return 1;
    }
    if (write(s, &req, 1) != 1)
        return 1;
    if (req == 'q')
        return 0;
    if (read(s, &r, 1) != 1 || r != 0) {
        fprintf(stderr, "daemonfloor: a launch failed\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && strcmp(argv[1], "up") == 0) {
        int p[2];
        char buf[32];
        if (pipe(p) != 0)
            return 1;
        pid_t pid = fork();
        if (pid == 0) {
            close(p[0]);
            int null = open("/dev/null", O_RDWR);
            dup2(null, 0);
            dup2(null, 1);
            return up(atol(argv[2]), argv[3], &argv[4], p[1]);
        }
        close(p[1]);
        ssize_t k = pid < 0 ? -1 : read(p[0], buf, sizeof buf - 1);
        if (k <= 0) {
            fprintf(stderr, "daemonfloor: the master did not start\n");
            return 1;
        }
        buf[k] = 0;
        fputs(buf, stdout);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "launch") == 0)
        return ask(argv[2], 'l');
    if (argc == 3 && strcmp(argv[1], "down") == 0)
        return ask(argv[2], 'q');
    fprintf(stderr, "usage: daemonfloor up N SOCKET PROGRAM [ARGS...] | launch SOCKET | down SOCKET\n");
    return 2;
}
