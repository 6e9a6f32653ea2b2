/* libbproc's I/O lists (bproc_io_t), node attributes, bproc_version and
 * bproc_nodereconnect on a live cluster of 4 nodes; prints what it sees for the test to
 * compare. Usage: io_lists DIR (a directory the nodes see), or io_lists user. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/bproc.h>

extern char **environ;

static void show(const char *what, int r) {
    printf("%s: %d %s\n", what, r, r < 0 ? bproc_strerror(errno) : "ok");
}

static struct bproc_io_t file_io(int fd, const char *path, int flags, long offset) {
    struct bproc_io_t io;
    memset(&io, 0, sizeof io);
    io.fd = fd;
    io.type = BPROC_IO_FILE;
    io.d.file.flags = flags;
    io.d.file.mode = 0644;
    io.d.file.offset = offset;
    snprintf(io.d.file.name, sizeof io.d.file.name, "%s", path);
    return io;
}

static struct bproc_io_t socket_io(int fd, const char *ip, int port, int flags) {
    struct bproc_io_t io;
    struct sockaddr_in *sin = (struct sockaddr_in *)&io.d.addr;
    memset(&io, 0, sizeof io);
    io.fd = fd;
    io.type = BPROC_IO_SOCKET;
    io.flags = flags;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    inet_pton(AF_INET, ip, &sin->sin_addr);
    return io;
}

static int status_of(int pid) {
    int st;
    if (waitpid(pid, &st, 0) != pid)
        return -1000;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void print_file(const char *dir, const char *name) {
    char path[512], buf[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    buf[n] = 0;
    if (f)
        fclose(f);
    printf("%s: [%s]\n", name, buf);
}

static void attributes(void) {
    char buf[32];
    int r;
    show("setnodeattr 1 rack", bproc_setnodeattr(1, "rack", "r7", 2));
    show("getnodeattr 1 rack size 0", bproc_getnodeattr(1, "rack", NULL, 0));
    show("getnodeattr 1 rack size 1", bproc_getnodeattr(1, "rack", buf, 1));
    r = bproc_getnodeattr(1, "rack", buf, sizeof buf);
    show("getnodeattr 1 rack", r);
    printf("rack [%.*s]\n", r > 0 ? r : 0, buf);
    r = bproc_getnodeattr(1, "state", buf, sizeof buf);
    printf("state [%.*s]\n", r > 0 ? r : 0, buf);
    r = bproc_getnodeattr(1, "addr", buf, sizeof buf);
    printf("addr [%.*s]\n", r > 0 ? r : 0, buf);
    show("getnodeattr 1 missing", bproc_getnodeattr(1, "missing", buf, sizeof buf));
    show("getnodeattr 99 rack", bproc_getnodeattr(99, "rack", buf, sizeof buf));
    show("setnodeattr 1 addr", bproc_setnodeattr(1, "addr", "x", 1));
    show("setnodeattr 1 rack removed", bproc_setnodeattr(1, "rack", NULL, 0));
    show("getnodeattr 1 rack", bproc_getnodeattr(1, "rack", buf, sizeof buf));
    show("setnodeattr 2 rack", bproc_setnodeattr(2, "rack", "r9", 2));
    show("setnodeattr 2 state down", bproc_setnodeattr(2, "state", "down", 4));
    show("getnodeattr 2 rack", bproc_getnodeattr(2, "rack", buf, sizeof buf));
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: io_lists DIR | io_lists user\n");
        return 2;
    }
    if (!strcmp(argv[1], "user")) {
        show("setnodeattr 1 rack", bproc_setnodeattr(1, "rack", "r1", 2));
        return 0;
    }
    const char *dir = argv[1];
    char path[512], script[1024];
    int nodes[2] = {1, 3}, pids[2], i;

    /* A listener for the remote processes' stdout. */
    int lis = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lis, (struct sockaddr *)&sin, sizeof sin) || listen(lis, 8) ||
        getsockname(lis, (struct sockaddr *)&sin, &len)) {
        perror("listener");
        return 2;
    }
    int port = ntohs(sin.sin_port);
    printf("sizeof bproc_io_t %zu\n", sizeof(struct bproc_io_t));

    /* Two ranks: stdout a connection back (0.0.0.0: the launcher's address) with the
     * pid/fd header, stderr appended to a file on the node, fd 5 a file written at offset 3,
     * stdin and fd 3 closed (not in the list). */
    snprintf(path, sizeof path, "%s/five", dir);
    int five = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (five < 0 || write(five, "abcdefgh", 8) != 8)
        return 2;
    close(five);
    struct bproc_io_t io[3];
    io[0] = socket_io(1, "0.0.0.0", port, BPROC_IO_SEND_INFO);
    snprintf(path, sizeof path, "%s/err", dir);
    io[1] = file_io(2, path, O_WRONLY | O_CREAT | O_APPEND, 0);
    snprintf(path, sizeof path, "%s/five", dir);
    io[2] = file_io(5, path, O_WRONLY, 3);
    snprintf(script, sizeof script,
             "for fd in 0 3; do [ -e /proc/$$/fd/$fd ] && echo fd $fd open || echo fd $fd closed; "
             "done; "
             "echo rank $BPROC_RANK; echo err >&2; printf XY >&5; exit $((1$BPROC_RANK - 9999990))");
    char *args[] = {"sh", "-c", script, NULL};
    char *env[] = {"BPROC_RANK=XXXXXXX", "PATH=/bin:/usr/bin", NULL};
    show("vexecmove_io", bproc_vexecmove_io(2, nodes, pids, io, 3, "/bin/sh", args, env));
    char first[256] = "", second[256] = "";
    for (i = 0; i < 2; i++) {
        int c = accept(lis, NULL, NULL);
        int head[2] = {0, 0};
        char buf[256];
        ssize_t n = 0, got;
        if (c < 0 || read(c, head, sizeof head) != sizeof head)
            return 3;
        while ((got = read(c, buf + n, sizeof buf - 1 - n)) > 0)
            n += got;
        buf[n] = 0;
        close(c);
        printf("connection: pid is a rank's %d, fd %d\n", head[0] == pids[0] || head[0] == pids[1],
               head[1]);
        /* Ranks connect in any order: print rank 0's output first. */
        snprintf(strstr(buf, "rank 0000000") ? first : second, sizeof first, "%s", buf);
    }
    printf("%s%s", first, second);
    printf("exit %d %d\n", status_of(pids[0]), status_of(pids[1]));
    print_file(dir, "err");
    print_file(dir, "five");

    /* No fds at all. */
    snprintf(script, sizeof script,
             "for fd in 0 1 2; do [ -e /proc/$$/fd/$fd ] && echo fd $fd open >> %s/ran; done; "
             "echo ran >> %s/ran; exit 6", dir, dir);
    show("vexecmove_io iolen 0", bproc_vexecmove_io(1, nodes, pids, io, 0, "/bin/sh", args, env));
    printf("exit %d\n", status_of(pids[0]));
    print_file(dir, "ran");

    /* A connection that cannot be made fails that node, unless it is delayed. */
    io[0] = socket_io(1, "127.0.0.1", 1, 0);
    snprintf(script, sizeof script, "exit 4");
    show("vexecmove_io refused", bproc_vexecmove_io(1, nodes, pids, io, 1, "/bin/sh", args, env));
    printf("pid %d %s\n", pids[0], bproc_strerror(-pids[0]));
    io[0].flags = BPROC_IO_DELAY;
    show("vexecmove_io delayed", bproc_vexecmove_io(1, nodes, pids, io, 1, "/bin/sh", args, env));
    printf("exit %d\n", status_of(pids[0]));

    /* The front end applies the list too. */
    int here = BPROC_NODE_MASTER;
    snprintf(path, sizeof path, "%s/local", dir);
    io[0] = file_io(1, path, O_WRONLY | O_CREAT | O_TRUNC, 0);
    snprintf(script, sizeof script, "echo local");
    show("vexecmove_io -1", bproc_vexecmove_io(1, &here, pids, io, 1, "/bin/sh", args, env));
    printf("exit %d\n", status_of(pids[0]));
    print_file(dir, "local");

    /* Bad lists. */
    struct bproc_io_t many[17];
    for (i = 0; i < 17; i++)
        many[i] = file_io(i, "/dev/null", O_RDONLY, 0);
    show("iolen 17", bproc_vexecmove_io(1, nodes, pids, many, 17, "/bin/sh", args, env));
    show("iolen -2", bproc_vexecmove_io(1, nodes, pids, many, -2, "/bin/sh", args, env));
    many[0].type = BPROC_IO_MEMFILE;
    show("memfile", bproc_vexecmove_io(1, nodes, pids, many, 1, "/bin/sh", args, env));
    many[0] = socket_io(1, "127.0.0.1", port, 0);
    many[0].d.addr.sa_family = AF_INET6;
    show("inet6", bproc_vexecmove_io(1, nodes, pids, many, 1, "/bin/sh", args, env));

    /* Version and reconnect. */
    struct bproc_version_t v;
    show("version", bproc_version(&v));
    printf("version %.3s %d %u %s\n", v.bproc_magic, v.arch, v.magic, v.version_string);
    struct sockaddr_in keep;
    memset(&keep, 0, sizeof keep);
    keep.sin_family = AF_INET;
    show("nodereconnect 3", bproc_nodereconnect(3, (struct sockaddr *)&keep, sizeof keep, NULL, 0));
    show("nodereconnect 99", bproc_nodereconnect(99, (struct sockaddr *)&keep, sizeof keep, NULL, 0));
    keep.sin_family = AF_INET6;
    show("nodereconnect inet6", bproc_nodereconnect(3, (struct sockaddr *)&keep, sizeof keep, NULL, 0));

    attributes();
    return 0;
}
