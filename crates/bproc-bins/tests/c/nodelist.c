/* A BProc-era node lister, written from BProc 4.0's documentation: build with
 * cc nodelist.c -lbproc. */
#include <stdio.h>
#include <sys/bproc.h>

int main(void) {
    struct bproc_node_set_t ns = BPROC_EMPTY_NODESET;
    int i, n = bproc_nodelist(&ns);
    if (n < 0) {
        perror("bproc_nodelist");
        return 1;
    }
    printf("%d nodes\n", n);
    for (i = 0; i < ns.size; i++) {
        struct bproc_node_info_t *info = bproc_node_set_node(&ns, i);
        printf("%3d %-10s %c\n", info->node, info->status,
               bproc_access(info->node, BPROC_X_OK) == 0 ? 'x' : '-');
    }
    bproc_nodeset_free(&ns);
    return 0;
}
