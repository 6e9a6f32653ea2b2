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
/* Node attributes: "state", "addr" (dotted IPv4) and those root sets, which a node keeps
 * until it goes down. get returns the length (size 0: only the length), ERANGE if it does
 * not fit, ENODATA if missing; set with size 0 removes. */
int bproc_getnodeattr(int node, const char *name, void *value, int size);
int bproc_setnodeattr(int node, const char *name, const void *value, int size);
/* The master's version (BProc: the kernel module's). */
int bproc_version(struct bproc_version_t *v);

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
int bproc_nodereconnect(int node, struct sockaddr *rem, int remsize, struct sockaddr *loc,
                        int locsize);

/* Process placement. The program runs from the node's filesystem. With no I/O list (iolen
 * -1) its stdout and stderr come to the caller's (relayed by its ghost, BProc's "weak"
 * forwarding) and stdin is /dev/null; an I/O list names each fd it gets (files opened on the node,
 * TCP connections from it; 0.0.0.0 is the launcher's address) and it has no other (iolen 0:
 * none). Each remote process has a ghost on the front end: the caller itself for execmove
 * and rexec, a child of the caller for vexecmove, so wait() gives the remote exit status. */
int bproc_vexecmove(int n, int *nodes, int *pids, const char *cmd, char *const argv[],
                    char *const envp[]);
int bproc_vexecmove_io(int n, int *nodes, int *pids, struct bproc_io_t *io, int iolen,
                       const char *cmd, char *const argv[], char *const envp[]);
int bproc_rexec(int node, const char *cmd, char *const argv[], char *const envp[]);
int bproc_rexec_io(int node, struct bproc_io_t *io, int iolen, const char *cmd,
                   char *const argv[], char *const envp[]);
int bproc_execmove(int node, const char *cmd, char *const argv[], char *const envp[]);
int bproc_execmove_io(int node, struct bproc_io_t *io, int iolen, const char *cmd,
                      char *const argv[], char *const envp[]);

/* Processes: the node of a pid (-1: local or none), and every remote process. */
int bproc_pidnode(int pid);
int bproc_proclist(int node, struct bproc_proc_info_t **list);

/* Migration. bproc_move moves the caller to a node (BPROC_NODE_MASTER: back to the front
 * end) and returns 0 there, as the same pid; the original on the front end becomes its ghost,
 * which writes the process's stdout and stderr where the caller's went (stdin is /dev/null).
 * bproc_rfork forks a child on a node (pid in the parent, 0 in the child; a failure on the
 * node is returned as its negated error), bproc_vrfork one per node (n in the parent with
 * pids[], the child's index in each child). As in BProc, fds 3 and up that cannot be opened
 * again by path (pipes, sockets, event fds, epoll, FIFOs, terminals, deleted files, files the
 * node lacks) are closed in the moved copy, and shared memory becomes private; the flag
 * BPROC_MOVE_STRICT of the _bproc_* forms (and of bproc_dump) refuses them instead. Every
 * thread moves with the process. What cannot move gives EBUSY and the caller stays where it
 * was (a thread blocking signal 64, or what BPROC_MOVE_STRICT refused); bproc_lasterror()
 * then says what, e.g. "fd 7: a connected TCP socket". rfork and vrfork work from the front end
 * and from a node (there, pids[] are stand-ins for the remote children that waitpid sees end
 * as they do; a child on BPROC_NODE_MASTER gets -EOPNOTSUPP).
 *
 * Checkpoint: bproc_dump writes the caller to fd as a process image (flags: BPROC_DUMP_* say
 * what goes by content; the rest is named by path) and returns 0, or 1 in a copy restored
 * from the image; bproc_undump replaces the caller with an image (no return on success).
 * bproc_execdump writes the image of a program run with argv and envp, stopped before its
 * first instruction (it never runs here): a process restored from it starts the program. */
int bproc_move(int node);
int bproc_move_io(int node, struct bproc_io_t *io, int iolen);
int _bproc_move(int node, int flags);
int _bproc_move_io(int node, struct bproc_io_t *io, int iolen, int flags);
int bproc_rfork(int node);
int bproc_rfork_io(int node, struct bproc_io_t *io, int iolen);
int _bproc_rfork(int node, int flags);
int _bproc_rfork_io(int node, struct bproc_io_t *io, int iolen, int flags);
int bproc_vrfork(int nnodes, int *nodes, int *pids);
int bproc_vrfork_io(int nnodes, int *nodes, int *pids, struct bproc_io_t *io, int iolen);
int _bproc_vrfork(int nnodes, int *nodes, int *pids, int flags);
int _bproc_vrfork_io(int nnodes, int *nodes, int *pids, struct bproc_io_t *io, int iolen,
                     int flags);
int bproc_dump(int fd, int flags);
int bproc_undump(int fd);
int bproc_execdump(int fd, int flags, const char *cmd, char *const argv[], char *const envp[]);

/* The library list: files every machine has at the same path, which images name instead of
 * carrying (unless BPROC_DUMP_LIBS). Changes need root; bproc_libdel of a name not on the
 * list gives ENOENT. bproc_liblist stores a malloc'd run of NUL-terminated names ending with
 * an empty string, and returns 0. */
int bproc_libclear(void);
int bproc_libadd(const char *libname);
int bproc_libdel(const char *libname);
int bproc_liblist(char **list);

/* Errors. bproc_lasterror: the latest failure of the calling thread in words, with its
 * cause (valid until its next failing call; "" before any). */
const char *bproc_strerror(int err);
const char *bproc_lasterror(void);

#ifdef __cplusplus
}
#endif

#endif
