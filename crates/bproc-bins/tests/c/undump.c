/* bproc_undump of images it cannot restore as they were.
 *   undump dump IMAGE FILE  opens FILE at fd 7 and dumps itself to IMAGE: prints "dumped";
 *                           the restored copy prints whether fd 7 is open and exits 42
 *   undump undump IMAGE     replaces itself with IMAGE; if that fails, prints what
 *                           bproc_undump returned, errno's name and bproc_lasterror(),
 *                           and exits 3 */
#include <sys/bproc.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    closefrom(3);
    if (argc != 4 && argc != 3) return 2;
    if (!strcmp(argv[1], "dump")) {
        int f = open(argv[3], O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (f < 0 || dup2(f, 7) != 7) return 4;
        close(f);
        int out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int r = bproc_dump(out, BPROC_DUMP_ALL);
        if (r < 0) {
            printf("dump failed: %s\n", bproc_lasterror());
            return 5;
        }
        if (r == 0) {
            printf("dumped\n");
            return 0;
        }
        printf("restored: fd 7 %s\n", fcntl(7, F_GETFD) < 0 ? "closed" : "open");
        return 42;
    }
    int in = open(argv[2], O_RDONLY);
    if (in < 0) return 6;
    int r = bproc_undump(in);
    int e = errno;
    printf("undump: %d %s (%s)\n", r, e == EINVAL ? "EINVAL" : e == ENOEXEC ? "ENOEXEC" : strerror(e),
           bproc_lasterror());
    return 3;
}
