/* Run by bpsh on a node: says where it is, moves itself back to the front end (into its
 * ghost, bpsh's child), says where it is again and exits 3. Usage: back */
#include <sys/bproc.h>
#include <errno.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
    pid_t pid = getpid();
    printf("on node %d\n", bproc_currnode());
    fflush(stdout);
    if (bproc_move(BPROC_NODE_MASTER) != 0) {
        printf("move failed: %s\n", bproc_lasterror());
        return 1;
    }
    printf("back on node %d as pid %s\n", bproc_currnode(), getpid() == pid ? "same" : "other");
    fflush(stdout);
    fprintf(stderr, "stderr on node %d\n", bproc_currnode());
    return 3;
}
