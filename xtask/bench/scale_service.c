/* The `scale` workload of `cargo xtask bench`.
 *
 * "scale_service fleet N": on a line on stdin, forks N services and waits. Service k (1..N)
 * waits for SIGUSR1, then leaks k blocks of 64 bytes every 10 ms, 100
 * times (100 * k blocks in all), and stays.
 * "scale_service million": waits for SIGUSR1, then keeps 1,000,000 blocks
 * of 16 bytes, and stays. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }

static void *volatile sink;

__attribute__((noinline)) static void leak_at_rate(int k) {
    for (int round = 0; round < 100; round++) {
        for (int i = 0; i < k; i++)
            sink = malloc(64);
        usleep(10000);
    }
}

static void wait_for_go(void) {
    while (!go)
        pause();
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGUSR1, on_usr1);
    if (argc >= 3 && strcmp(argv[1], "fleet") == 0) {
        int n = atoi(argv[2]);
        /* Before the forks: the services inherit stdout's buffer and
         * allocate nothing but their leaks. */
        printf("ready %d\n", n);
        /* Forks once told to (when it has joined its container's cgroup). */
        char line[16];
        if (!fgets(line, sizeof line, stdin))
            return 1;
        for (int k = 1; k <= n; k++) {
            if (fork() == 0) {
                wait_for_go();
                leak_at_rate(k);
                printf("done %d\n", k);
                for (;;)
                    pause();
            }
        }
        printf("forked %d\n", n);
        for (;;)
            pause();
    }
    printf("ready 1\n");
    wait_for_go();
    for (int i = 0; i < 1000000; i++)
        sink = malloc(16);
    printf("done 1000000\n");
    for (;;)
        pause();
}
