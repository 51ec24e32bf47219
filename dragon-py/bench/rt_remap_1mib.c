/*
 * What a zero-copy 1 MiB round trip would cost on this machine: the design
 * sketched in docs/benchmarks-python.md ("The 1 MiB round trip"), measured
 * in C before it is built.
 *
 *   gcc -O2 -o /tmp/rt_remap dragon-py/bench/rt_remap_1mib.c && /tmp/rt_remap
 *
 * The sender copies the payload into a shared-memory block once. Each
 * receiving process maps the block's pages behind a private page (where a
 * Python `bytes` header would go: CPython keeps it right before the data,
 * so every process holding the block needs its own), and the echoing
 * process passes the same block back instead of copying it. The previous
 * mapping is dropped when the next one is made, as a freed object would.
 *
 * Three receivers: one that never reads the payload (the benchmark only
 * takes len()), one that reads one byte of every page (page faults on the
 * fresh mapping), one that maps with MAP_POPULATE.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SIZE (1 << 20)
#define PAGE 4096
#define ITERS 2000

enum { NO_TOUCH, TOUCH, POPULATE };
static const char *NAMES[] = {"receiver never reads", "receiver reads every page", "MAP_POPULATE"};

static double usec(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* Map the block at `off` of `fd` behind a private page; return the start. */
static char *map_block(int fd, off_t off, int how) {
    char *r = mmap(NULL, SIZE + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) { perror("mmap"); exit(1); }
    int flags = MAP_SHARED | MAP_FIXED | (how == POPULATE ? MAP_POPULATE : 0);
    if (mmap(r + PAGE, SIZE, PROT_READ, flags, fd, off) == MAP_FAILED) { perror("mmap block"); exit(1); }
    r[PAGE - 32] = 1; /* the private header */
    if (how == TOUCH) {
        volatile char sum = 0;
        for (size_t i = 0; i < SIZE; i += PAGE) sum += r[PAGE + i];
    }
    return r;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double run(int how) {
    int fd = memfd_create("block", 0);
    if (fd < 0 || ftruncate(fd, SIZE) != 0) { perror("memfd"); exit(1); }
    _Atomic uint64_t *turn = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    char *block = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    char *payload = malloc(SIZE);
    memset(payload, 'x', SIZE);
    atomic_store(turn, 0);
    pid_t child = fork();
    if (child == 0) {
        char *held = NULL;
        for (uint64_t i = 0; i < ITERS; i++) {
            while (atomic_load(turn) != 2 * i + 1) {}
            char *m = map_block(fd, 0, how);
            if (held) munmap(held, SIZE + PAGE);
            held = m;
            atomic_store(turn, 2 * i + 2); /* echo: the same block */
        }
        _exit(0);
    }
    double *t = malloc(ITERS * sizeof *t);
    char *held = NULL;
    for (uint64_t i = 0; i < ITERS; i++) {
        double t0 = usec();
        memcpy(block, payload, SIZE); /* the one copy of the round trip */
        atomic_store(turn, 2 * i + 1);
        while (atomic_load(turn) != 2 * i + 2) {}
        char *m = map_block(fd, 0, how);
        if (held) munmap(held, SIZE + PAGE);
        held = m;
        t[i] = usec() - t0;
    }
    waitpid(child, NULL, 0);
    qsort(t, ITERS, sizeof *t, cmp);
    double median = t[ITERS / 2];
    free(t);
    free(payload);
    munmap(block, SIZE);
    munmap((void *)turn, PAGE);
    close(fd);
    return median;
}

int main(void) {
    for (int how = NO_TOUCH; how <= POPULATE; how++)
        printf("{\"design\": \"remap\", \"receiver\": \"%s\", \"rtt_median_us\": %.1f}\n", NAMES[how], run(how));
    return 0;
}
