/* A process that asks for BPROC_MOVE_STRICT is refused with EBUSY and goes on where it
 * was: first with a pipe (a move, then a vector fork, which leaves no ghost behind), then
 * with an open socket. Without the flag it moves to node N with a second thread, the socket
 * left behind, and exits 42 there. Usage: refuse N */
#include <sys/bproc.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int go;

static void *idle(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&go, __ATOMIC_SEQ_CST)) usleep(1000);
    return NULL;
}

static int refused(const char *what, int node, int flags, pid_t pid) {
    int r = _bproc_move(node, flags);
    int e = errno;
    if (r == 0) {
        printf("%s: moved to node %d\n", what, bproc_currnode());
        return 0;
    }
    int ok = e == EBUSY && bproc_currnode() == BPROC_NODE_MASTER && getpid() == pid;
    printf("%s: %s, still on node %d\n", what, bproc_strerror(e), bproc_currnode());
    return ok;
}

/* A strict vector fork of two children to `node`, refused: no child of this process is left
 * (the ghosts started for it are gone). */
static int vrfork_refused(int node, pid_t pid) {
    int nodes[2] = {node, node}, pids[2];
    int r = _bproc_vrfork(2, nodes, pids, BPROC_MOVE_STRICT);
    int e = errno;
    if (r != -1) {
        if (getpid() != pid) _exit(0);
        printf("vrfork: not refused (%d)\n", r);
        return 0;
    }
    int left = waitpid(-1, NULL, WNOHANG);
    int none = left == -1 && errno == ECHILD;
    printf("vrfork: %s, %s\n", bproc_strerror(e), none ? "no child left" : "a child left");
    return e == EBUSY && none;
}

int main(int argc, char **argv) {
    closefrom(3); /* what the test harness leaves open would not move */
    if (argc != 2) return 2;
    int node = atoi(argv[1]);
    pid_t pid = getpid();
    int p[2];
    if (pipe(p) != 0) return 3;
    int ok = refused("pipe", node, BPROC_MOVE_STRICT, pid);
    ok &= vrfork_refused(node, pid);
    close(p[0]);
    close(p[1]);
    pthread_t t;
    if (pthread_create(&t, NULL, idle, NULL) != 0) return 3;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return 4;
    ok &= refused("socket", node, BPROC_MOVE_STRICT, pid);
    if (bproc_move(node) != 0) {
        printf("move failed: %s\n", bproc_strerror(errno));
        return 5;
    }
    printf("moved to node %d as pid %s, socket %s\n", bproc_currnode(),
           getpid() == pid ? "same" : "other", fcntl(s, F_GETFD) < 0 ? "closed" : "open");
    __atomic_store_n(&go, 1, __ATOMIC_SEQ_CST);
    pthread_join(t, NULL);
    return ok ? 42 : 1;
}
