/*
 * module.c - the Python binding of the runtime's kernels (runtime._native).
 * Buffers arrive through the buffer protocol; the GIL is released around every kernel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "bf_common.h"
#include "bf_cpu.h"
#include "bf_dispatch.h"

/* Resolve an optional ISA name to a kernel table; sets a Python error and returns NULL. */
static const bf_kernels *resolve_isa(PyObject *name) {
    if (name == NULL || name == Py_None) return bf_dispatch_current();
    const char *s = PyUnicode_AsUTF8(name);
    if (!s) return NULL;
    const int isa = bf_isa_parse(s);
    if (isa < 0) {
        PyErr_Format(PyExc_ValueError, "unknown ISA %R (expected scalar, neon, avx2, avx512)",
                     name);
        return NULL;
    }
    const bf_kernels *table = bf_dispatch_for((bf_isa)isa);
    if (!table) {
        PyErr_Format(PyExc_ValueError, "ISA %s is not supported by this CPU or build", s);
        return NULL;
    }
    return table;
}

static PyObject *py_popcount(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"buffer", "isa", NULL};
    Py_buffer view;
    PyObject *isa_name = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|O", kwlist, &view, &isa_name))
        return NULL;
    if (view.len % (Py_ssize_t)sizeof(bf_word) != 0) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "buffer length %zd is not a multiple of %zu bytes",
                     view.len, sizeof(bf_word));
        return NULL;
    }
    const bf_kernels *table = resolve_isa(isa_name);
    if (!table) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const size_t n = (size_t)view.len / sizeof(bf_word);
    int64_t total;
    Py_BEGIN_ALLOW_THREADS
    total = table->popcount((const bf_word *)view.buf, n);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromLongLong((long long)total);
}

static PyObject *py_isa(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(bf_isa_name(bf_dispatch_current()->isa));
}

static PyObject *py_best_isa(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(bf_isa_name(bf_cpu_best_isa()));
}

static PyObject *py_supported_isas(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    const bf_isa all[] = {BF_ISA_SCALAR, BF_ISA_NEON, BF_ISA_AVX2, BF_ISA_AVX512};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (!bf_dispatch_for(all[i])) continue;
        PyObject *name = PyUnicode_FromString(bf_isa_name(all[i]));
        if (!name || PyList_Append(out, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(name);
    }
    return out;
}

static PyObject *py_select_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const bf_kernels *table = resolve_isa(arg);
    if (!table) return NULL;
    bf_dispatch_select(table->isa);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"popcount", (PyCFunction)(void (*)(void))py_popcount, METH_VARARGS | METH_KEYWORDS,
     "popcount(buffer, isa=None) -> int\n\nNumber of set bits in a buffer of 64-bit words."},
    {"isa", py_isa, METH_NOARGS, "isa() -> str\n\nThe ISA whose kernels are in use."},
    {"best_isa", py_best_isa, METH_NOARGS, "best_isa() -> str\n\nThe best ISA this CPU supports."},
    {"supported_isas", py_supported_isas, METH_NOARGS,
     "supported_isas() -> list[str]\n\nEvery ISA this CPU and build can run, lowest first."},
    {"select_isa", py_select_isa, METH_O,
     "select_isa(name) -> None\n\nUse the kernels of `name` from now on."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "runtime._native",
    .m_doc = "bitfactor's XNOR/popcount kernels (C). Use the `runtime` package, not this module.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    bf_dispatch_select(bf_cpu_best_isa());
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "WORD_BITS", BF_WORD_BITS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
