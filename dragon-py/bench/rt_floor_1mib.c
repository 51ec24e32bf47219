/*
 * The floor of a 1 MiB Queue round trip between two processes on this
 * machine, in C, with both sides spinning (no Python, no pickling, no
 * wake-ups): what any design that hands the receiver its own copy of the
 * payload (a Python `bytes`) must pay.
 *
 *   gcc -O2 -o /tmp/rt_floor dragon-py/bench/rt_floor_1mib.c && /tmp/rt_floor
 *
 * Prints the median round trip for two designs:
 *   shm-4-copies  sender copies into shared memory, receiver copies out
 *                 (what dragon's channels do: two copies per direction);
 *   vm-2-copies   the receiver copies straight out of the sender's private
 *                 memory with process_vm_readv (one copy per direction, the
 *                 least any design can do; needs ptrace permission).
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SIZE (1 << 20)
#define WARMUP 50
#define ITERS 2000

struct ctl {
    _Atomic long turn;      /* odd: the echo's turn; even: the pinger's; -1: stop */
    _Atomic long addr;      /* vm-2-copies: where the last sender's payload is */
    _Atomic long pid;       /* vm-2-copies: the echo's pid */
};

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void vm_read(pid_t pid, void *dst, long src) {
    struct iovec local = {dst, SIZE}, remote = {(void *)src, SIZE};
    if (process_vm_readv(pid, &local, 1, &remote, 1, 0) != SIZE) {
        perror("process_vm_readv");
        exit(1);
    }
}

static double run(int vm) {
    char *shm = mmap(NULL, 2 * SIZE + sizeof(struct ctl), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    char *to_echo = shm, *to_pinger = shm + SIZE;
    struct ctl *c = (struct ctl *)(shm + 2 * SIZE);
    pid_t pinger = getpid();
    char *mine = malloc(SIZE);
    memset(mine, 'x', SIZE);
    if (fork() == 0) {
        long seen = 0;
        for (;;) {
            long t;
            while ((t = atomic_load(&c->turn)) == seen || (t > 0 && t % 2 == 0))
                ;
            if (t < 0)
                _exit(0);
            if (vm) {
                vm_read(pinger, mine, atomic_load(&c->addr));
                atomic_store(&c->addr, (long)mine);
                atomic_store(&c->pid, getpid());
            } else {
                memcpy(mine, to_echo, SIZE);
                memcpy(to_pinger, mine, SIZE);
            }
            atomic_store(&c->turn, t + 1);
            seen = t + 1;
        }
    }
    char *back = malloc(SIZE);
    static double samples[ITERS];
    for (int i = 0; i < WARMUP + ITERS; i++) {
        double t0 = now_us();
        if (vm)
            atomic_store(&c->addr, (long)mine);
        else
            memcpy(to_echo, mine, SIZE);
        long t = atomic_load(&c->turn) + 1;
        atomic_store(&c->turn, t);
        while (atomic_load(&c->turn) != t + 1)
            ;
        if (vm)
            vm_read(atomic_load(&c->pid), back, atomic_load(&c->addr));
        else
            memcpy(back, to_pinger, SIZE);
        if (i >= WARMUP)
            samples[i - WARMUP] = now_us() - t0;
    }
    atomic_store(&c->turn, -1);
    wait(NULL);
    munmap(shm, 2 * SIZE + sizeof(struct ctl));
    free(mine);
    free(back);
    qsort(samples, ITERS, sizeof(double), by_value);
    return samples[ITERS / 2];
}

int main(void) {
    printf("{\"bench\": \"rt_floor_1mib\", \"shm_4_copies_us\": %.1f, \"vm_2_copies_us\": %.1f}\n", run(0), run(1));
    return 0;
}
