/* The reachability workload: MB megabytes of live heap in 4 KiB blocks,
 * all reachable (a chain from a global), then a malloc/free loop that
 * prints how many pairs it made in each second.
 *
 *   reach_heap MB
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void *volatile head;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    size_t blocks = (size_t)atol(argv[1]) * 1024 * 1024 / 4096;
    for (size_t i = 0; i < blocks; i++) {
        void **b = malloc(4096);
        memset(b, 0, 4096);
        b[0] = head;
        head = b;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        unsigned long pairs = 0;
        double end = now() + 1.0;
        while (now() < end) {
            for (int i = 0; i < 1000; i++) {
                void *volatile p = malloc(64);
                free(p);
            }
            pairs += 1000;
        }
        printf("%lu\n", pairs);
        fflush(stdout);
    }
}
