/* Microbenchmark: one thread doing malloc(64) + free pairs for SECS seconds.
 * Prints "pairs_per_sec N" on stderr (stdout is left to whoever traces us). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 3.0;
    void *volatile sink;
    unsigned long pairs = 0;
    double start = now(), elapsed = 0;
    while (elapsed < secs) {
        for (int i = 0; i < 1000; i++) {
            sink = malloc(64);
            free(sink);
        }
        pairs += 1000;
        elapsed = now() - start;
    }
    fprintf(stderr, "pairs_per_sec %.0f\n", pairs / elapsed);
    return 0;
}
