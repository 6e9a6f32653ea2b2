/* Run by bpsh on a node: writes a line on stdout and stderr, moves itself on to each node
 * named on the command line in turn (node to node, never through the front end), writing
 * there too, and exits 5. Its output must reach bpsh in order, stdout and stderr each.
 * Usage: onward NODE... */
#include <sys/bproc.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    pid_t pid = getpid();
    printf("start on node %d\n", bproc_currnode());
    fflush(stdout);
    fprintf(stderr, "err on node %d\n", bproc_currnode());
    for (int i = 1; i < argc; i++) {
        if (bproc_move(atoi(argv[i])) != 0) {
            printf("move to %s failed: %s\n", argv[i], bproc_lasterror());
            return 1;
        }
        /* A few lines per stop, unflushed until the end of the loop body: the stream of the
         * copy that left must come out whole before these. */
        for (int j = 0; j < 3; j++)
            printf("node %d line %d\n", bproc_currnode(), j);
        fflush(stdout);
        fprintf(stderr, "err on node %d as pid %s\n", bproc_currnode(),
                getpid() == pid ? "same" : "other");
    }
    return 5;
}
