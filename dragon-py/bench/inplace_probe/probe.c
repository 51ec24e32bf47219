/*
 * Probe for the zero-copy receive design (docs/benchmarks-python.md, "The
 * 1 MiB round trip"): can CPython live with `bytes` objects whose data are
 * shared-memory pages mapped behind a private header page, freed through a
 * hook on its object allocator? Not part of the package; run_probe.py
 * builds it and exercises such objects the ways programs use bytes.
 *
 * make_bytes(n, fill) plays both sides: it writes n bytes of `fill` into a
 * fresh memfd (the sender's copy into shared memory), then maps the pages
 * behind a private page, initialises a bytes header in front of them and
 * returns that object. The hook installed by install() recognises such
 * objects when CPython frees them and unmaps them; every other pointer goes
 * to the allocator that was there before (the hook wraps it, which the
 * PyMem_SetAllocator documentation allows after start-up).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define HEADER offsetof(PyBytesObject, ob_sval)
#define MAX_LIVE 65536

static PyMemAllocatorEx wrapped;
static struct { char *base; size_t len; } live[MAX_LIVE];
static long n_live, n_freed;
static uintptr_t lowest = UINTPTR_MAX, highest;

static int find(void *p) {
    uintptr_t a = (uintptr_t)p;
    if (a < lowest || a >= highest) return -1;
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i].base && (char *)p == live[i].base + PAGE - HEADER) return i;
    return -1;
}

static void hook_free(void *ctx, void *p) {
    int i = p ? find(p) : -1;
    if (i < 0) { wrapped.free(wrapped.ctx, p); return; }
    munmap(live[i].base, live[i].len);
    live[i].base = NULL;
    n_live--;
    n_freed++;
}
static void *hook_malloc(void *ctx, size_t n) { return wrapped.malloc(wrapped.ctx, n); }
static void *hook_calloc(void *ctx, size_t a, size_t b) { return wrapped.calloc(wrapped.ctx, a, b); }
static void *hook_realloc(void *ctx, void *p, size_t n) {
    int i = p ? find(p) : -1;
    if (i < 0) return wrapped.realloc(wrapped.ctx, p, n);
    size_t old = live[i].len - PAGE + HEADER;
    void *q = wrapped.malloc(wrapped.ctx, n);
    if (q) { memcpy(q, p, old < n ? old : n); hook_free(ctx, p); }
    return q;
}

static PyObject *install(PyObject *self, PyObject *unused) {
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &wrapped);
    PyMemAllocatorEx hook = {NULL, hook_malloc, hook_calloc, hook_realloc, hook_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &hook);
    Py_RETURN_NONE;
}

static PyObject *make_bytes(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    int fill;
    if (!PyArg_ParseTuple(args, "ni", &n, &fill)) return NULL;
    size_t data_len = ((size_t)n + 1 + PAGE - 1) / PAGE * PAGE; /* + the trailing NUL */
    int fd = memfd_create("probe", 0);
    if (fd < 0 || ftruncate(fd, data_len) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    char *w = mmap(NULL, data_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (w == MAP_FAILED) return PyErr_SetFromErrno(PyExc_OSError);
    memset(w, fill, n);
    w[n] = 0;
    munmap(w, data_len);
    char *r = mmap(NULL, data_len + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED || mmap(r + PAGE, data_len, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED)
        return PyErr_SetFromErrno(PyExc_OSError);
    close(fd);
    int i = 0;
    while (i < MAX_LIVE && live[i].base) i++;
    if (i == MAX_LIVE) return PyErr_NoMemory();
    live[i].base = r;
    live[i].len = data_len + PAGE;
    n_live++;
    if ((uintptr_t)r < lowest) lowest = (uintptr_t)r;
    if ((uintptr_t)r + data_len + PAGE > highest) highest = (uintptr_t)r + data_len + PAGE;
    PyBytesObject *b = (PyBytesObject *)(r + PAGE - HEADER);
    PyObject_InitVar((PyVarObject *)b, &PyBytes_Type, n);
    /* "not computed yet"; the field is deprecated in 3.11 but still read. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    b->ob_shash = -1;
#pragma GCC diagnostic pop
    return (PyObject *)b;
}

static PyObject *counts(PyObject *self, PyObject *unused) { return Py_BuildValue("ll", n_live, n_freed); }

static PyMethodDef methods[] = {
    {"install", install, METH_NOARGS, "wrap the object allocator"},
    {"make_bytes", make_bytes, METH_VARARGS, "a bytes object over mapped shared pages"},
    {"counts", counts, METH_NOARGS, "(live, freed) mapped objects"},
    {NULL},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "inplace_probe", NULL, -1, methods};
PyMODINIT_FUNC PyInit_inplace_probe(void) { return PyModule_Create(&module); }
