/* Checkpoints itself to a file with bproc_dump and checks, in the copy restored from it,
 * that it came back whole. Usage: dump_restore IMAGE
 * Original: prints "dumped PID" and exits 0. Restored copy: prints each check and exits 42
 * (1 if one failed). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/bproc.h>

#define MIB 64
static __thread int counter = 7;
static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: dump_restore IMAGE\n");
        return 2;
    }
    /* Fds inherited from whoever started it (a build tool's pipes) could not move. */
    closefrom(3);
    size_t n = (size_t)MIB << 20, i;
    unsigned char *big = malloc(n);
    for (i = 0; i < n; i++)
        big[i] = (unsigned char)(i * 31 + 7);
    signal(SIGUSR1, on_usr1);
    pid_t pid = getpid();
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int r = bproc_dump(fd, BPROC_DUMP_EXEC | BPROC_DUMP_OTHER);
    if (r < 0) {
        printf("dump: %s\n", bproc_strerror(errno));
        return 1;
    }
    if (r == 0) {
        close(fd);
        printf("dumped %d\n", (int)pid);
        return 0;
    }
    int ok = 1;
#define CHECK(what, cond) do { int c_ = (cond); printf("%s: %s\n", what, c_ ? "ok" : "WRONG"); ok &= c_; } while (0)
    CHECK("returns 1", r == 1);
    for (i = 0; i < n && big[i] == (unsigned char)(i * 31 + 7); i++)
        ;
    CHECK("memory", i == n);
    CHECK("tls", counter++ == 7);
    char *more = malloc(32 << 20);
    memset(more, 1, 32 << 20);
    CHECK("heap growth", more[(32 << 20) - 1] == 1);
    raise(SIGUSR1);
    CHECK("handler", got_usr1 == 1);
    CHECK("pid", getpid() == pid);
    return ok ? 42 : 1;
}
