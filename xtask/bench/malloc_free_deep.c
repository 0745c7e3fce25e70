/* Microbenchmark for stack walking: malloc(64) + free pairs made ten calls
 * below main, for SECS seconds. Built twice by `cargo xtask bench`: with
 * -O2 (no frame pointers: leaktrace walks it by unwind tables) and with
 * -O2 -fno-omit-frame-pointer (walked by frame pointers, --unwind fp).
 * Prints "pairs_per_sec N" on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define LEVEL __attribute__((noinline))

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static volatile unsigned long sum;

/* Each level uses its callee's result afterwards, so no call becomes a
 * jump and every level keeps a frame. */
LEVEL static int pair(int n) {
    void *volatile p = malloc(64);
    free(p);
    return n + 1;
}
LEVEL static int l9(int n) { int r = pair(n); sum += r; return r; }
LEVEL static int l8(int n) { int r = l9(n); sum += r; return r; }
LEVEL static int l7(int n) { int r = l8(n); sum += r; return r; }
LEVEL static int l6(int n) { int r = l7(n); sum += r; return r; }
LEVEL static int l5(int n) { int r = l6(n); sum += r; return r; }
LEVEL static int l4(int n) { int r = l5(n); sum += r; return r; }
LEVEL static int l3(int n) { int r = l4(n); sum += r; return r; }
LEVEL static int l2(int n) { int r = l3(n); sum += r; return r; }
LEVEL static int l1(int n) { int r = l2(n); sum += r; return r; }

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 3.0;
    unsigned long pairs = 0;
    double start = now(), elapsed = 0;
    while (elapsed < secs) {
        for (int i = 0; i < 1000; i++) l1(i);
        pairs += 1000;
        elapsed = now() - start;
    }
    fprintf(stderr, "pairs_per_sec %.0f\n", pairs / elapsed);
    return 0;
}
