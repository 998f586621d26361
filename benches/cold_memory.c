/* benches/cold_memory.c: what touching memory left alone for a while costs
 * on this machine, with 4 KiB pages and with transparent huge pages.
 *
 *     gcc -O2 benches/cold_memory.c -o /tmp/cold_memory
 *     taskset -c 0 /tmp/cold_memory 85 0    # 85 MB on 4 KiB pages
 *     taskset -c 0 /tmp/cold_memory 85 1    # the same, madvise(MADV_HUGEPAGE)
 *
 * Fills MB megabytes, then reads one word every three pages (as a reload
 * that looks at each of 10,000 services reads one field of each) after
 * sleeps of 0, 0, 1, 2, 4, 0 and 1 s, and prints how long each pass took.
 * On a host that reclaims or tracks its guests' idle memory, the 4 KiB
 * passes after a sleep cost tens of microseconds a page (docs/benchmarks.md,
 * "Memory left alone"); veer's heap asks for huge pages (src/heap.rs). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MEGABYTES HUGE(0|1)\n", argv[0]);
        return 2;
    }
    size_t words = (size_t)atoi(argv[1]) * 1024 * 1024 / sizeof(long);
    long *memory;
    if (posix_memalign((void **)&memory, 2 << 20, words * sizeof(long)) != 0) return 1;
    if (atoi(argv[2])) madvise(memory, words * sizeof(long), MADV_HUGEPAGE);
    for (size_t i = 0; i < words; i++) memory[i] = (long)i;
    const int sleeps[] = {0, 0, 1, 2, 4, 0, 1};
    for (size_t k = 0; k < sizeof sleeps / sizeof sleeps[0]; k++) {
        if (sleeps[k]) sleep(sleeps[k]);
        double started = now_ms();
        long sum = 0;
        for (size_t i = 0; i < words; i += 3 * 4096 / sizeof(long) + 8) sum += memory[i];
        printf("after %d s alone: %7.2f ms (%ld)\n", sleeps[k], now_ms() - started, sum & 1);
    }
    FILE *rollup = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    while (rollup && fgets(line, sizeof line, rollup))
        if (strstr(line, "AnonHugePages")) fputs(line, stdout);
    return 0;
}
