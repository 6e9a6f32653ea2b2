/* What a move does with what cannot travel, case by case. Each fd kind and shared mapping is
 * first refused under BPROC_MOVE_STRICT, with the reason bproc_lasterror() gives; then all of
 * them together move with a plain bproc_move: on the node the fds are closed (stdio still
 * works), read-only shared mappings read the same bytes and writable shared memory is a
 * private copy with its contents. Then back to the front end. Exits 42 when all is well.
 * Usage: matrix NODE SHARED_DIR PRIVATE_DIR (SHARED_DIR seen by the node, PRIVATE_DIR not) */
#define _GNU_SOURCE
#include <sys/bproc.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

static int node;
static pid_t pid;
static int bad;

/* fd `fd` in place of `got`. */
static int at(int got, int fd) {
    if (got < 0) {
        printf("setup failed for fd %d: %s\n", fd, strerror(errno));
        exit(3);
    }
    if (got != fd) {
        dup2(got, fd);
        close(got);
    }
    return fd;
}

/* Under BPROC_MOVE_STRICT the move is refused, naming fd `fd`: prints the reason. */
static void strict(const char *what) {
    int r = _bproc_move(node, BPROC_MOVE_STRICT);
    int e = errno;
    if (r == 0) {
        printf("%s: moved under BPROC_MOVE_STRICT\n", what);
        bad |= 1;
        bproc_move(BPROC_NODE_MASTER);
        return;
    }
    if (e != EBUSY || bproc_currnode() != BPROC_NODE_MASTER || getpid() != pid) bad |= 2;
    printf("%s: refused: %s\n", what, bproc_lasterror());
}

static char *map_file(const char *dir, const char *name, int prot) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (f < 0 || ftruncate(f, 8192) != 0) exit(4);
    if (pwrite(f, name, strlen(name), 0) < 0) exit(4);
    char *p = mmap(NULL, 8192, prot, MAP_SHARED, f, 0);
    close(f);
    if (p == MAP_FAILED) exit(4);
    return p;
}

int main(int argc, char **argv) {
    closefrom(3); /* what the test harness leaves open */
    if (argc != 4) return 2;
    node = atoi(argv[1]);
    const char *shared = argv[2], *private = argv[3];
    pid = getpid();
    char path[4096];

    /* Shared mappings: read-only ones move unasked, writable ones are refused. */
    char *ro_there = map_file(shared, "ro-there", PROT_READ);
    char *ro_here = map_file(private, "ro-here", PROT_READ);
    char *rw_file = map_file(shared, "rw-file", PROT_READ | PROT_WRITE);
    strict("shared file");
    munmap(rw_file, 8192);
    char *rw_anon = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (rw_anon == MAP_FAILED) return 3;
    for (int i = 0; i < (1 << 20); i += 4096) rw_anon[i] = (char)(i >> 12);
    strict("shared anonymous");
    rw_file = map_file(shared, "rw-file", PROT_READ | PROT_WRITE);
    strcpy(rw_file + 4096, "file page");

    /* A log file at a path the node lacks, and one it has: both move. */
    snprintf(path, sizeof path, "%s/log", private);
    at(open(path, O_WRONLY | O_CREAT | O_APPEND, 0644), 18);
    snprintf(path, sizeof path, "%s/data", shared);
    at(open(path, O_RDWR | O_CREAT | O_TRUNC, 0644), 19);
    if (write(19, "0123456789", 10) != 10) return 3;
    lseek(19, 4, SEEK_SET);

    /* Every fd kind, refused under BPROC_MOVE_STRICT; each at a lower fd than the last, as
     * the lowest is the one named. */
    int p[2];
    if (pipe(p) != 0) return 3;
    at(p[0], 251);
    close(p[1]);
    strict("pipe");
    at(posix_openpt(O_RDWR | O_NOCTTY), 17);
    strict("tty");
    snprintf(path, sizeof path, "%s/fifo", shared);
    if (mkfifo(path, 0600) != 0) return 3;
    at(open(path, O_RDWR), 16);
    strict("fifo");
    snprintf(path, sizeof path, "%s/deleted", shared);
    at(open(path, O_RDWR | O_CREAT, 0644), 15);
    unlink(path);
    strict("deleted");
    at(memfd_create("matrix", 0), 14);
    strict("memfd");
    sigset_t none;
    sigemptyset(&none);
    at(signalfd(-1, &none, 0), 13);
    strict("signalfd");
    at(timerfd_create(CLOCK_MONOTONIC, 0), 12);
    strict("timerfd");
    at(epoll_create1(0), 11);
    strict("epoll");
    at(eventfd(0, 0), 10);
    strict("eventfd");
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 3;
    at(sv[0], 9);
    close(sv[1]);
    strict("unix");
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&a, &alen) != 0)
        return 3;
    at(l, 6);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&a, sizeof a) != 0) return 3;
    at(c, 7);
    close(at(accept(6, NULL, NULL), 8));
    close(6);
    strict("tcp");

    /* All of it at once, without the flag. */
    if (bproc_move(node) != 0) {
        printf("move failed: %s\n", bproc_lasterror());
        return 5;
    }
    int closed = 0, kept = 0;
    for (int fd = 3; fd < 256; fd++) {
        if (fcntl(fd, F_GETFD) != -1) kept++;
        else if (fd == 7 || fd == 9 || fd == 251 || (fd >= 10 && fd <= 18)) closed++;
    }
    char buf[16] = {0};
    if (pread(19, buf, 10, 0) != 10 || strcmp(buf, "0123456789") != 0 || lseek(19, 0, SEEK_CUR) != 4)
        bad |= 8;
    if (strcmp(ro_there, "ro-there") != 0 || strcmp(ro_here, "ro-here") != 0) bad |= 16;
    if (strcmp(rw_file, "rw-file") != 0 || strcmp(rw_file + 4096, "file page") != 0) bad |= 32;
    for (int i = 0; i < (1 << 20); i += 4096)
        if (rw_anon[i] != (char)(i >> 12)) bad |= 64;
    rw_anon[0] = 'x'; /* private now: still writable */
    printf("on node %d as pid %s: %d fds closed, %d kept\n", bproc_currnode(),
           getpid() == pid ? "same" : "other", closed, kept);
    fflush(stdout);
    if (bproc_move(BPROC_NODE_MASTER) != 0) {
        printf("move back failed: %s\n", bproc_lasterror());
        return 6;
    }
    printf("back on node %d\n", bproc_currnode());
    if (bad) printf("checks failed: %#x\n", bad);
    return bad ? 1 : 42;
}
