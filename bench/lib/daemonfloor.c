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
 *   daemonfloor ghosts SOCKET                   the same launch, each rank with a ghost: the
 *                                               client first makes one process per daemon,
 *                                               and each daemon's answer ends its process
 *   daemonfloor down SOCKET                     stop the master and its daemons
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
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
        /* With ghosts: the client learns how many to make, makes them and says go; then
         * each answer goes on to it at once, as the rank's index (top bit: failed). */
        int ghosts = req == 'g';
        uint32_t count = (uint32_t)n, *ends = ghosts ? calloc(n, sizeof *ends) : NULL;
        char go;
        if (ghosts && (write(c, &count, sizeof count) != sizeof count || read(c, &go, 1) != 1)) {
            free(ends);
            close(c);
            continue;
        }
        char one = 0, failed = 0;
        for (long i = 0; i < n; i++)
            if (write(link[i], &one, 1) != 1)
                failed = 1;
        for (long left = n; left > 0;) {
            if (poll(fds, n, -1) < 0)
                break;
            long k = 0;
            for (long i = 0; i < n; i++) {
                if (!(fds[i].revents & (POLLIN | POLLHUP)))
                    continue;
                char r;
                int bad = read(link[i], &r, 1) != 1 || r != 0;
                failed |= bad;
                if (ghosts)
                    ends[k++] = (uint32_t)i | (uint32_t)bad << 31;
                left--;
            }
            if (ghosts && k > 0 && write(c, ends, k * sizeof *ends) != (ssize_t)(k * sizeof *ends))
                failed = 1;
        }
        free(ends);
        if (!ghosts && write(c, &failed, 1) != 1)
            perror("daemonfloor: answer");
        close(c);
    }
}

/* A connection to the master at `path`; -1 (said on stderr) when there is none. */
static int connect_to(const char *path) {
    struct sockaddr_un a;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || unix_addr(path, &a) != 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("daemonfloor: connect");
        return -1;
    }
    return s;
}

static int ask(const char *path, char req) {
    int s = connect_to(path);
    char r = 1;
    if (s < 0)
        return 1;
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

/* A ghost: a process of its own that shares the client's memory (as bpsh's light ghosts do)
 * and waits on its word until its rank's end is known, then exits with the rank's status.
 * Direct system calls only: it shares the client's C library state. */
static long sys4(long nr, long a, long b, long c, long d) {
#ifdef __x86_64__
    long r;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall"
                     : "=a"(r)
                     : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return r;
#else
    return syscall(nr, a, b, c, d); /* may set the client's errno: harmless here */
#endif
}

static int ghost(void *arg) {
    int *word = arg, v;
    while ((v = __atomic_load_n(word, __ATOMIC_ACQUIRE)) == 0)
        sys4(SYS_futex, (long)word, FUTEX_WAIT, 0, 0);
    return v - 1;
}

enum { GHOST_STACK = 16384 };
static int *words;
static char *stacks;

/* Makes ghosts lo..hi-1 as children of the client (CLONE_PARENT from a second maker). */
static void make_ghosts(long lo, long hi, int flags) {
    for (long i = lo; i < hi; i++)
        if (clone(ghost, stacks + (i + 1) * GHOST_STACK, CLONE_VM | flags | SIGCHLD, &words[i]) < 0)
            perror("daemonfloor: clone");
}

static long second_half[2];
static int second_maker(void *arg) {
    (void)arg;
    make_ghosts(second_half[0], second_half[1], CLONE_PARENT);
    return 0;
}

/* A launch with a ghost per rank: the ghosts are made before the launch (from 128 on by two
 * makers at once, one a core, as bpsh's are), each ends as its rank's answer comes, and all
 * are reaped. */
static int ghosts(const char *path) {
    int s = connect_to(path);
    uint32_t n;
    if (s < 0 || write(s, "g", 1) != 1 || read(s, &n, sizeof n) != sizeof n)
        return 1;
    words = calloc(n, sizeof *words);
    stacks = mmap(NULL, (size_t)(n + 1) * GHOST_STACK, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (words == NULL || stacks == MAP_FAILED) {
        perror("daemonfloor: ghosts");
        return 1;
    }
    uint32_t mine = n >= 128 ? n / 2 : n;
    second_half[0] = mine;
    second_half[1] = n;
    pid_t maker = mine < n ? clone(second_maker, stacks + (n + 1) * (size_t)GHOST_STACK,
                                   CLONE_VM | SIGCHLD, NULL)
                           : 0;
    make_ghosts(0, mine, 0);
    int st, bad = 0;
    if (maker > 0)
        waitpid(maker, &st, 0);
    if (write(s, "G", 1) != 1)
        return 1;
    /* The answers, 4 bytes each; a read may end inside one, whose bytes wait for the next. */
    uint32_t ends[1024];
    size_t have = 0;
    for (uint32_t got = 0; got < n;) {
        ssize_t k = read(s, (char *)ends + have, sizeof ends - have);
        if (k <= 0)
            return 1;
        have += (size_t)k;
        size_t whole = have / sizeof *ends;
        for (size_t j = 0; j < whole; j++, got++) {
            uint32_t i = ends[j] & 0x7fffffff;
            if (i >= n)
                return 1;
            __atomic_store_n(&words[i], 1 + (int)(ends[j] >> 31), __ATOMIC_RELEASE);
            sys4(SYS_futex, (long)&words[i], FUTEX_WAKE, 1, 0);
        }
        have -= whole * sizeof *ends;
        memmove(ends, ends + whole, have);
    }
    for (uint32_t i = 0; i < n; i++)
        if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            bad = 1;
    if (bad)
        fprintf(stderr, "daemonfloor: a launch failed\n");
    return bad;
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
    if (argc == 3 && strcmp(argv[1], "ghosts") == 0)
        return ghosts(argv[2]);
    if (argc == 3 && strcmp(argv[1], "down") == 0)
        return ask(argv[2], 'q');
    fprintf(stderr, "usage: daemonfloor up N SOCKET PROGRAM [ARGS...] | launch SOCKET | ghosts SOCKET | down SOCKET\n");
    return 2;
}
