/* Prints "ready", waits for SIGUSR1 and prints the sender's pid the kernel gave its handler
 * (si_pid) and si_code, then exits 0. Usage: siginfo */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static volatile int pid, code;

static void on_usr1(int sig, siginfo_t *info, void *uc) {
    (void)sig;
    (void)uc;
    pid = info->si_pid;
    code = info->si_code;
    got = 1;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    while (!got) pause();
    printf("si_pid %d si_code %d\n", pid, code);
    return 0;
}
