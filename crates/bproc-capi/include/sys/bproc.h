/* bproc: BProc 4.0's C API. Functions return -1 and set errno on failure unless noted;
 * errno may hold BProc's own values (BE_*), which bproc_strerror() explains.
 * Link with -lbproc (pkg-config bproc). */
#ifndef _SYS_BPROC_H
#define _SYS_BPROC_H

#include <sys/socket.h>
#include <sys/bproc_common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Node information. */
int bproc_numnodes(void);
int bproc_currnode(void);
int bproc_nodestatus(int node, char *buf, int len);
int bproc_nodeinfo(int node, struct bproc_node_info_t *info);
int bproc_nodelist(struct bproc_node_set_t *ns);
int bproc_nodeaddr(int node, struct sockaddr *addr, int *size);
int bproc_notifier(void);
int bproc_nodelist_(struct bproc_node_set_t *ns, int fd);

/* Node sets and node specifications. */
int bproc_nodeset_init(struct bproc_node_set_t *ns, int size);
int bproc_nodeset_grow(struct bproc_node_set_t *ns, int size);
int bproc_nodeset_add(struct bproc_node_set_t *ns, struct bproc_node_info_t *n);
int bproc_nodeset_append(struct bproc_node_set_t *a, struct bproc_node_set_t *b);
void bproc_nodeset_free(struct bproc_node_set_t *ns);
int bproc_nodefilter(struct bproc_node_set_t *out, struct bproc_node_set_t *in, const char *spec);
int bproc_nodespec(struct bproc_node_set_t *out, const char *spec);

/* Permissions. */
int bproc_chmod(int node, int mode);
int bproc_chown(int node, int user);
int bproc_chgrp(int node, int group);
int bproc_access(int node, int mode);

/* Administration. */
int bproc_nodesetstatus(int node, char *state);
int bproc_nodechroot(int node, char *path);
int bproc_nodereboot(int node);
int bproc_nodehalt(int node);
int bproc_nodepwroff(int node);

/* Process placement. The program runs from the node's filesystem with /dev/null as its
 * stdio (I/O lists other than the default give ENOSYS). Each remote process has a ghost on
 * the front end: the caller itself for execmove and rexec, a child of the caller for
 * vexecmove, so wait() gives the remote exit status. */
int bproc_vexecmove(int n, int *nodes, int *pids, const char *cmd, char *const argv[],
                    char *const envp[]);
int bproc_vexecmove_io(int n, int *nodes, int *pids, struct bproc_io_t *io, int iolen,
                       const char *cmd, char *const argv[], char *const envp[]);
int bproc_rexec(int node, const char *cmd, char *const argv[], char *const envp[]);
int bproc_execmove(int node, const char *cmd, char *const argv[], char *const envp[]);
int bproc_execmove_io(int node, struct bproc_io_t *io, int iolen, const char *cmd,
                      char *const argv[], char *const envp[]);

/* Processes: the node of a pid (-1: local or none), and every remote process. */
int bproc_pidnode(int pid);
int bproc_proclist(int node, struct bproc_proc_info_t **list);

/* Process migration. Not implemented yet: these fail with ENOSYS, except a move to the
 * node the caller already runs on, which returns 0 as in BProc. */
int bproc_move(int node);
int bproc_move_io(int node, struct bproc_io_t *io, int iolen);
int bproc_rfork(int node);
int bproc_rfork_io(int node, struct bproc_io_t *io, int iolen);
int bproc_vrfork(int nnodes, int *nodes, int *pids);
int bproc_vrfork_io(int nnodes, int *nodes, int *pids, struct bproc_io_t *io, int iolen);
int bproc_dump(int fd, int flags);
int bproc_undump(int fd);
int bproc_execdump(int fd, int flags, const char *cmd, char *const argv[], char *const envp[]);

/* Errors. */
const char *bproc_strerror(int err);

#ifdef __cplusplus
}
#endif

#endif
