/* bproc_execdump and bproc_undump. Usage:
 *   execdump dump IMAGE   write the image of `sh -c SCRIPT` with X=hello; print "dumped"
 *   execdump undump IMAGE become that image: sh runs the script as this process's pid
 *   execdump missing IMAGE execdump of a program that does not exist: print the error */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/bproc.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: execdump dump|undump|missing IMAGE\n");
        return 2;
    }
    /* Fds inherited from whoever started it (a build tool's pipes) could not move. */
    closefrom(3);
    if (strcmp(argv[1], "undump") == 0) {
        int fd = open(argv[2], O_RDONLY);
        printf("undumping %d\n", (int)getpid());
        fflush(stdout);
        bproc_undump(fd);
        printf("undump: %s\n", bproc_strerror(errno));
        return 1;
    }
    char *const args[] = {"sh", "-c", "echo \"started $X as $$ with $# args: $0 $1\"; exit 7",
                          "zero", "one", NULL};
    char *const env[] = {"X=hello", "PATH=/usr/bin:/bin", NULL};
    int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const char *cmd = strcmp(argv[1], "missing") == 0 ? "/nonexistent/sh" : "/bin/sh";
    if (bproc_execdump(fd, BPROC_DUMP_EXEC | BPROC_DUMP_OTHER, cmd, args, env) != 0) {
        printf("execdump: %s\n", bproc_strerror(errno));
        return 1;
    }
    printf("dumped\n");
    return 0;
}
