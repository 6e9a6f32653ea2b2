/* An LD_PRELOAD object that lies about resource limits and the umask: every getrlimit and
 * prlimit query answers "unlimited", and umask() claims 0 (changing nothing). It takes LD_PRELOAD out of the environment as it loads, so it fools
 * only the process it was preloaded into, not that process's children (nor, through bpsh's
 * environment, the remote program). Used to check that a launch's limits and umask come
 * from the kernel, not from what the launcher claims. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/types.h>

struct fake_rlimit {
    unsigned long cur;
    unsigned long max;
};

static int unlimited(struct fake_rlimit *r)
{
    if (r) {
        r->cur = ~0UL;
        r->max = ~0UL;
    }
    return 0;
}

int getrlimit(int resource, struct fake_rlimit *r)
{
    (void)resource;
    return unlimited(r);
}

int getrlimit64(int resource, struct fake_rlimit *r)
{
    (void)resource;
    return unlimited(r);
}

/* Setting is dropped too: the point is only what a query claims. */
int prlimit(pid_t pid, int resource, const struct fake_rlimit *new_limit, struct fake_rlimit *old)
{
    (void)pid;
    (void)resource;
    (void)new_limit;
    return unlimited(old);
}

int prlimit64(pid_t pid, int resource, const struct fake_rlimit *new_limit,
              struct fake_rlimit *old)
{
    return prlimit(pid, resource, new_limit, old);
}

mode_t umask(mode_t mask)
{
    (void)mask;
    return 0;
}

__attribute__((constructor)) static void forget_preload(void)
{
    unsetenv("LD_PRELOAD");
}
