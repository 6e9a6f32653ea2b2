/* bproc: constants and structures shared by BProc's C API (BProc 4.0 names and layouts). */
#ifndef _SYS_BPROC_COMMON_H
#define _SYS_BPROC_COMMON_H

#include <sys/socket.h>

#define BPROC_API_VERSION 4

/* Special node numbers. */
#define BPROC_NODE_MASTER (-1)
#define BPROC_NODE_SELF   (-2)
#define BPROC_NODE_NONE   (-3)
#define BPROC_NODE_ANY    (-4)

/* Node permission bit. */
#define BPROC_X_OK 1

/* Longest node state string. */
#define BPROC_STATE_LEN 15

/* BProc's own errno values; bproc_strerror() knows their texts. */
#define BE_BASE         300
#define BE_INVALIDNODE  (BE_BASE + 0)
#define BE_NODEDOWN     (BE_BASE + 1)
#define BE_SAMENODE     (BE_BASE + 2)
#define BE_SLAVEDIED    (BE_BASE + 3)
#define BE_INVALIDPROC  (BE_BASE + 4)

/* One node, as bproc_nodeinfo() and bproc_nodelist() report it (48 bytes). */
struct bproc_node_info_t {
    int node;
    char status[BPROC_STATE_LEN + 1];
    unsigned int mode;
    unsigned int user;
    unsigned int group;
    struct sockaddr addr;
};

/* A growable set of nodes; start from BPROC_EMPTY_NODESET, end with bproc_nodeset_free(). */
struct bproc_node_set_t {
    int size, alloc;
    struct bproc_node_info_t *node;
};
#define BPROC_EMPTY_NODESET {0, 0, 0}
#define bproc_node_set_node(ns, i) (&(ns)->node[(i)])

/* I/O redirection for the migration calls. */
#define BPROC_IO_MAX_LEN   16
#define BPROC_IO_FILE      0
#define BPROC_IO_SOCKET    1
#define BPROC_IO_MEMFILE   2
#define BPROC_IO_SEND_INFO 1
#define BPROC_IO_DELAY     2
/* A remote process: its pid on the front end and its node (bproc_proclist). */
struct bproc_proc_info_t {
    int pid;
    int node;
};

struct bproc_io_t {
    int fd;
    short type;
    short flags;
    union {
        struct sockaddr addr;
        struct {
            int flags;
            int mode;
            long offset;
            char name[256];
        } file;
    } d;
};

/* bproc_version(). */
struct bproc_version_t {
    char bproc_magic[3]; /* 'B', 'P', 'r' */
    unsigned char arch;  /* ELF machine: 62 on x86-64 */
    unsigned int magic;  /* the wire protocol's version */
    char version_string[24];
};

/* What a process image carries (VMADump). */
#define BPROC_DUMP_LIBS  1
#define BPROC_DUMP_EXEC  2
#define BPROC_DUMP_OTHER 4
#define BPROC_DUMP_ALL   (BPROC_DUMP_LIBS | BPROC_DUMP_EXEC | BPROC_DUMP_OTHER)
/* Refuse (EBUSY) what would not move unchanged, instead of closing it or making it private. */
#define BPROC_MOVE_STRICT 0x100

#endif
