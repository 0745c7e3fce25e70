/* leaktrace's bundled demo target: a "request handler" that keeps one
 * 4096-byte buffer per request and never frees it (a leak: it grows), a
 * bounded cache filled by the first requests (held, but steady), and a
 * well-behaved handler whose buffers are freed. Built and traced by
 * `cargo xtask demo`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) static void *leak_request_buffer(void) {
    char *buf = malloc(4096);
    memset(buf, 'x', 4096);
    return buf; /* stored nowhere: leaked */
}

#define CACHE_SLOTS 8
static char *cache[CACHE_SLOTS];

__attribute__((noinline)) static void cache_lookup(int key) {
    int slot = key % CACHE_SLOTS;
    if (!cache[slot]) {
        cache[slot] = malloc(512);
        memset(cache[slot], 'c', 512);
    }
}

__attribute__((noinline)) static void handle_request_properly(void) {
    char *buf = malloc(1024);
    memset(buf, 'y', 1024);
    free(buf);
}

int main(int argc, char **argv) {
    int requests = argc > 1 ? atoi(argv[1]) : 1000000;
    for (int i = 0; i < requests; i++) {
        leak_request_buffer();
        cache_lookup(i);
        handle_request_properly();
        usleep(200 * 1000); /* 5 requests per second */
    }
    return 0;
}
