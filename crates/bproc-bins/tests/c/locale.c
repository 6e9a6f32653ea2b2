/* A program after setlocale(LC_ALL, "") under a UTF-8 locale (glibc then maps
 * gconv-modules.cache shared, read-only), holding whatever fds its shell left it (a pipe at
 * fd 251 in the test), moves to node N and back, converting text after each move.
 * Exits 42 when all is well. Usage: locale N */
#include <sys/bproc.h>
#include <fcntl.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wchar.h>

/* The number of shared mappings this process has. */
static int shared_maps(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        char perms[5] = {0};
        if (sscanf(line, "%*s %4s", perms) == 1 && perms[3] == 's') n++;
    }
    if (f) fclose(f);
    return n;
}

static const char *fd251(void) { return fcntl(251, F_GETFD) < 0 ? "closed" : "open"; }

static size_t wide(void) {
    wchar_t w[16];
    return mbstowcs(w, "gr\xc3\xb6\xc3\x9f" "e", 16);
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    int node = atoi(argv[1]);
    if (!setlocale(LC_ALL, "")) return 3;
    pid_t pid = getpid();
    printf("before: %d shared mapping(s), fd 251 %s, %zu wide characters\n", shared_maps(),
           fd251(), wide());
    int path[2] = {node, BPROC_NODE_MASTER};
    for (int i = 0; i < 2; i++) {
        if (bproc_move(path[i]) != 0) {
            printf("move to %d failed: %s\n", path[i], bproc_lasterror());
            return 10 + i;
        }
        printf("on node %d: pid %s, fd 251 %s, %zu wide characters\n", bproc_currnode(),
               getpid() == pid ? "same" : "other", fd251(), wide());
    }
    return 42;
}
