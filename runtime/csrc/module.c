/*
 * module.c - the Python binding of the runtime's kernels (runtime._native).
 * Buffers arrive through the buffer protocol; the GIL is released around every kernel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>
#include <string.h>

#include "bf_common.h"
#include "bf_cpu.h"
#include "bf_dispatch.h"
#include "bconv/bconv.h"
#include "fconv/fconv.h"
#include "dwconv/dwconv.h"
#include "gelu/gelu.h"
#include "maxpool/maxpool.h"

/* Resolve an optional ISA name to a kernel table; sets a Python error and returns NULL. */
static const bf_kernels *resolve_isa(PyObject *name) {
    if (name == NULL || name == Py_None) return bf_dispatch_current();
    const char *s = PyUnicode_AsUTF8(name);
    if (!s) return NULL;
    const int isa = bf_isa_parse(s);
    if (isa < 0) {
        PyErr_Format(PyExc_ValueError,
                     "unknown ISA %R (expected scalar, neon, avx2, avx512bw, avx512)", name);
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

/* --- buffers ------------------------------------------------------------------------ */

#define BF_MAX_OPTIONAL 8

typedef struct {
    Py_buffer views[16];
    int count;
} bf_buffers;

static void release_all(bf_buffers *bufs) {
    for (int i = 0; i < bufs->count; i++) PyBuffer_Release(&bufs->views[i]);
    bufs->count = 0;
}

/* Get a C-contiguous buffer of at least `min_bytes` (writable when asked); None gives NULL
 * when `optional`. Returns 0 on success, -1 with a Python error set. */
static int get_buffer(bf_buffers *bufs, PyObject *obj, const char *what, size_t min_bytes,
                      int writable, int optional, void **out) {
    *out = NULL;
    if (obj == Py_None) {
        if (optional) return 0;
        PyErr_Format(PyExc_ValueError, "%s is required", what);
        return -1;
    }
    Py_buffer *view = &bufs->views[bufs->count];
    const int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    bufs->count++;
    if ((size_t)view->len < min_bytes) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, needs %zu", what, view->len, min_bytes);
        return -1;
    }
    *out = view->buf;
    return 0;
}

/* The product of `n` sizes, or SIZE_MAX when it overflows: every buffer-size check below
 * multiplies through this, so absurd geometry fails the check instead of wrapping to a
 * small size that a small buffer passes (found by fuzzing, tests/fuzz). */
static size_t checked_product(const size_t *v, size_t n) {
    size_t r = 1;
    for (size_t i = 0; i < n; i++)
        if (__builtin_mul_overflow(r, v[i], &r)) return SIZE_MAX;
    return r;
}
#define BF_PRODUCT(...)                            \
    checked_product((const size_t[]){__VA_ARGS__}, \
                    sizeof((const size_t[]){__VA_ARGS__}) / sizeof(size_t))

static int positive_sizes(const Py_ssize_t *values, int n) {
    for (int i = 0; i < n; i++) {
        if (values[i] <= 0 || values[i] > ((Py_ssize_t)1 << 31)) {
            PyErr_SetString(PyExc_ValueError, "sizes must be positive and below 2**31");
            return -1;
        }
    }
    return 0;
}

/* --- xnor_panel ----------------------------------------------------------------------- */

/* xnor_panel(a, w, c, n_pix, n_ch, kw, lda, ldw, isa, n_seg=1, seg_stride=0,
 * pixel_major=False, add=None): packs the n_ch weight rows of `w` into the ISA's panel
 * layout (aligned, heap) and runs its panel kernel on pixel rows of `a` read as n_seg
 * segments of kw / n_seg words (segment s of pixel p at word p * lda + s * seg_stride), into
 * channel-major c (n_ch, n_pix), or pixel-major c (n_pix, n_ch). `add`: int32 (n_pix,
 * round_up(n_ch, 8)) added to the counts; a pixel whose row is all zero gets no add row
 * (the kernel's NULL). */
static PyObject *py_xnor_panel(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"a",   "w",     "c",          "n_pix",       "n_ch", "kw", "lda",
                             "ldw", "isa",   "n_seg",      "seg_stride",  "pixel_major", "add",
                             NULL};
    PyObject *a_obj, *w_obj, *c_obj, *isa_name = NULL, *add_obj = NULL;
    Py_ssize_t sz[5], n_seg_arg = 1, seg_stride_arg = 0;
    int pixel_major = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOnnnnn|OnnpO", kwlist, &a_obj, &w_obj,
                                     &c_obj, &sz[0], &sz[1], &sz[2], &sz[3], &sz[4], &isa_name,
                                     &n_seg_arg, &seg_stride_arg, &pixel_major, &add_obj))
        return NULL;
    if (positive_sizes(sz, 5) < 0 || positive_sizes(&n_seg_arg, 1) < 0) return NULL;
    const size_t np_ = (size_t)sz[0], nch = (size_t)sz[1], kw = (size_t)sz[2],
                 lda = (size_t)sz[3], ldw = (size_t)sz[4], n_seg = (size_t)n_seg_arg;
    if (seg_stride_arg < 0 || seg_stride_arg > ((Py_ssize_t)1 << 31) || kw % n_seg != 0) {
        PyErr_SetString(PyExc_ValueError, "n_seg must divide kw; seg_stride must be >= 0");
        return NULL;
    }
    const size_t seg_len = kw / n_seg, seg_stride = (size_t)seg_stride_arg;
    if ((n_seg == 1 && lda < kw) || ldw < kw) {
        PyErr_SetString(PyExc_ValueError, "lda and ldw must be >= kw");
        return NULL;
    }
    const bf_kernels *table = resolve_isa(isa_name);
    if (!table) return NULL;
    bf_buffers bufs = {.count = 0};
    void *a, *w, *c, *add_buf = NULL;
    const size_t ld_add = (nch + 7) / 8 * 8;
    if (get_buffer(&bufs, a_obj, "a", BF_PRODUCT((np_ - 1) * lda + (n_seg - 1) * seg_stride + seg_len, 8),
                   0, 0, &a) < 0 ||
        get_buffer(&bufs, w_obj, "w", BF_PRODUCT((nch - 1) * ldw + kw, 8), 0, 0, &w) < 0 ||
        get_buffer(&bufs, c_obj, "c", BF_PRODUCT(np_, nch, 4), 1, 0, &c) < 0 ||
        get_buffer(&bufs, add_obj ? add_obj : Py_None, "add", BF_PRODUCT(np_, ld_add, 4),
                   0, 1, &add_buf) < 0) {
        release_all(&bufs);
        return NULL;
    }
    const size_t words = bf_xnor_panel_words(table->panel_lanes, nch, kw);
    const size_t bytes = (words * sizeof(bf_word) + BF_OVERREAD_BYTES + BF_ALIGN - 1) /
                         BF_ALIGN * BF_ALIGN;
    bf_word *panel = aligned_alloc(BF_ALIGN, bytes);
    const bf_word **rows = malloc(np_ * n_seg * sizeof(*rows));
    const int32_t **add = add_buf ? malloc(np_ * sizeof(*add)) : NULL;
    if (!panel || !rows || (add_buf && !add)) {
        free(panel);
        free(rows);
        free(add);
        release_all(&bufs);
        return PyErr_NoMemory();
    }
    for (size_t p = 0; p < np_; p++)
        for (size_t s = 0; s < n_seg; s++)
            rows[p * n_seg + s] = (const bf_word *)a + p * lda + s * seg_stride;
    for (size_t p = 0; add && p < np_; p++) {
        const int32_t *row = (const int32_t *)add_buf + p * ld_add;
        size_t l = 0;
        while (l < nch && row[l] == 0) l++;
        add[p] = l < nch ? row : NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    bf_xnor_panel_pack(table->panel_lanes, nch, kw, (const bf_word *)w, ldw, panel);
    table->xnor_panel(np_, nch, rows, n_seg, seg_len, panel, kw, add, (int32_t *)c,
                      pixel_major ? 1 : np_, pixel_major ? nch : 1);
    Py_END_ALLOW_THREADS
    free(add);
    free(rows);
    free(panel);
    release_all(&bufs);
    Py_RETURN_NONE;
}

/* panel_pack(w, panel, n_ch, kw, ldw, lanes): the repacking alone (pins the layout). */
static PyObject *py_panel_pack(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *w_obj, *p_obj;
    Py_ssize_t sz[4];
    if (!PyArg_ParseTuple(args, "OOnnnn", &w_obj, &p_obj, &sz[0], &sz[1], &sz[2], &sz[3]))
        return NULL;
    if (positive_sizes(sz, 4) < 0) return NULL;
    const size_t nch = (size_t)sz[0], kw = (size_t)sz[1], ldw = (size_t)sz[2],
                 lanes = (size_t)sz[3];
    if (ldw < kw || lanes > 64) {
        PyErr_SetString(PyExc_ValueError, "ldw must be >= kw and lanes <= 64");
        return NULL;
    }
    bf_buffers bufs = {.count = 0};
    void *w, *panel;
    if (get_buffer(&bufs, w_obj, "w", BF_PRODUCT((nch - 1) * ldw + kw, 8), 0, 0, &w) < 0 ||
        get_buffer(&bufs, p_obj, "panel", BF_PRODUCT(bf_xnor_panel_words(lanes, nch, kw), 8), 1, 0,
                   &panel) < 0) {
        release_all(&bufs);
        return NULL;
    }
    bf_xnor_panel_pack(lanes, nch, kw, (const bf_word *)w, ldw, (bf_word *)panel);
    release_all(&bufs);
    Py_RETURN_NONE;
}

static PyObject *py_panel_lanes(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"isa", NULL};
    PyObject *isa_name = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O", kwlist, &isa_name)) return NULL;
    const bf_kernels *table = resolve_isa(isa_name);
    if (!table) return NULL;
    return PyLong_FromSize_t(table->panel_lanes);
}

/* --- xnor_gemm ------------------------------------------------------------------------ */

static PyObject *py_xnor_gemm(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"a", "b", "c", "m", "n", "kw", "lda", "ldb", "isa", NULL};
    PyObject *a_obj, *b_obj, *c_obj, *isa_name = NULL;
    Py_ssize_t sz[5];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOnnnnn|O", kwlist, &a_obj, &b_obj, &c_obj,
                                     &sz[0], &sz[1], &sz[2], &sz[3], &sz[4], &isa_name))
        return NULL;
    if (positive_sizes(sz, 5) < 0) return NULL;
    const size_t m = (size_t)sz[0], n = (size_t)sz[1], kw = (size_t)sz[2], lda = (size_t)sz[3],
                 ldb = (size_t)sz[4];
    if (lda < kw || ldb < kw) {
        PyErr_SetString(PyExc_ValueError, "lda and ldb must be >= kw");
        return NULL;
    }
    const bf_kernels *table = resolve_isa(isa_name);
    if (!table) return NULL;
    bf_buffers bufs = {.count = 0};
    void *a, *b, *c;
    if (get_buffer(&bufs, a_obj, "a", BF_PRODUCT((m - 1) * lda + kw, 8), 0, 0, &a) < 0 ||
        get_buffer(&bufs, b_obj, "b", BF_PRODUCT((n - 1) * ldb + kw, 8), 0, 0, &b) < 0 ||
        get_buffer(&bufs, c_obj, "c", BF_PRODUCT(m, n, 4), 1, 0, &c) < 0) {
        release_all(&bufs);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    table->xnor_gemm(m, n, kw, (const bf_word *)a, lda, (const bf_word *)b, ldb, (int32_t *)c, n);
    Py_END_ALLOW_THREADS
    release_all(&bufs);
    Py_RETURN_NONE;
}

/* --- sign_pack ------------------------------------------------------------------------ */

static PyObject *py_sign_pack(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "threshold", "out", "n", "c", "s", "isa", NULL};
    PyObject *x_obj, *t_obj, *out_obj, *isa_name = NULL;
    Py_ssize_t sz[3];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOnnn|O", kwlist, &x_obj, &t_obj, &out_obj,
                                     &sz[0], &sz[1], &sz[2], &isa_name))
        return NULL;
    if (positive_sizes(sz, 3) < 0) return NULL;
    const size_t n = (size_t)sz[0], c = (size_t)sz[1], s = (size_t)sz[2];
    const bf_kernels *table = resolve_isa(isa_name);
    if (!table) return NULL;
    bf_buffers bufs = {.count = 0};
    void *x, *t, *out;
    if (get_buffer(&bufs, x_obj, "x", BF_PRODUCT(n, c, s, 4), 0, 0, &x) < 0 ||
        get_buffer(&bufs, t_obj, "threshold", c * 4, 0, 1, &t) < 0 ||
        get_buffer(&bufs, out_obj, "out", BF_PRODUCT(n, s, BF_WORDS_FOR(c), 8), 1, 0, &out) < 0) {
        release_all(&bufs);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    table->sign_pack((const float *)x, (const float *)t, (bf_word *)out, n, c, s);
    Py_END_ALLOW_THREADS
    release_all(&bufs);
    Py_RETURN_NONE;
}

/* --- bconv ------------------------------------------------------------------------------ */

static PyObject *py_bconv_scratch_bytes(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t kpad, cout;
    int threads;
    if (!PyArg_ParseTuple(args, "nni", &kpad, &cout, &threads)) return NULL;
    if (kpad <= 0 || cout <= 0 || threads <= 0 || threads > 4096 ||
        kpad > ((Py_ssize_t)1 << 31) || cout > ((Py_ssize_t)1 << 31)) {
        PyErr_SetString(PyExc_ValueError, "kpad, cout and threads must be positive");
        return NULL;
    }
    return PyLong_FromSize_t(bf_bconv_scratch_bytes((size_t)kpad, (size_t)cout, threads));
}

static PyObject *py_bconv(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x",        "weight",        "wsum", "scale",   "bias",
                             "pos_h",    "pos_w",         "slope", "residual", "out_threshold",
                             "out",      "scratch",       "geometry", "transform", "threads",
                             "isa",      "panel",         "panel_lanes", NULL};
    PyObject *obj[12], *isa_name = NULL, *panel_obj = NULL;
    Py_ssize_t panel_lanes = 0;
    Py_ssize_t geo[14];
    int pad_zero, activation, post_relu, out_bits, threads;
    float min_val, max_val;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOOOOOOOOOOO(nnnnnnnnnnnnnn)(iiffii)i|OOn", kwlist, &obj[0], &obj[1],
            &obj[2], &obj[3], &obj[4], &obj[5], &obj[6], &obj[7], &obj[8], &obj[9], &obj[10],
            &obj[11], &geo[0], &geo[1], &geo[2], &geo[3], &geo[4], &geo[5], &geo[6], &geo[7],
            &geo[8], &geo[9], &geo[10], &geo[11], &geo[12], &geo[13], &pad_zero, &activation,
            &min_val, &max_val, &post_relu, &out_bits, &threads, &isa_name, &panel_obj, &panel_lanes))
        return NULL;
    /* geometry: n, h, w, cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, kpad */
    for (int i = 0; i < 14; i++) {
        const int may_be_zero = i == 9 || i == 10;
        if (geo[i] < (may_be_zero ? 0 : 1) || geo[i] > ((Py_ssize_t)1 << 31)) {
            PyErr_Format(PyExc_ValueError, "geometry[%d] = %zd is out of range", i, geo[i]);
            return NULL;
        }
    }
    if (activation < BF_ACT_NONE || activation > BF_ACT_HARDTANH) {
        PyErr_SetString(PyExc_ValueError, "unknown activation");
        return NULL;
    }
    bf_bconv_args g;
    memset(&g, 0, sizeof(g));
    g.n = (size_t)geo[0]; g.h = (size_t)geo[1]; g.w = (size_t)geo[2];
    g.cin = (size_t)geo[3]; g.cout = (size_t)geo[4];
    g.kh = (size_t)geo[5]; g.kw = (size_t)geo[6]; g.sh = (size_t)geo[7]; g.sw = (size_t)geo[8];
    g.ph = (size_t)geo[9]; g.pw = (size_t)geo[10]; g.dh = (size_t)geo[11]; g.dw = (size_t)geo[12];
    g.kpad = (size_t)geo[13];
    const size_t cw = BF_WORDS_FOR(g.cin);
    if (g.kpad < g.kh * g.kw * cw) {
        PyErr_SetString(PyExc_ValueError, "kpad is smaller than kh * kw * cin_w");
        return NULL;
    }
    const size_t eh = g.dh * (g.kh - 1) + 1, ew = g.dw * (g.kw - 1) + 1;
    if (g.h + 2 * g.ph < eh || g.w + 2 * g.pw < ew) {
        PyErr_SetString(PyExc_ValueError, "kernel extent exceeds the padded input");
        return NULL;
    }
    g.ho = (g.h + 2 * g.ph - eh) / g.sh + 1;
    g.wo = (g.w + 2 * g.pw - ew) / g.sw + 1;
    g.pad_zero = pad_zero != 0;
    g.activation = activation;
    g.min_val = min_val;
    g.max_val = max_val;
    g.post_relu = post_relu != 0;
    g.out_bits = out_bits != 0;
    const bf_kernels *table = resolve_isa(isa_name);
    if (!table) return NULL;
    g.panel = table->xnor_panel;
    g.panel_lanes = table->panel_lanes;
#if BF_ARCH_X86
    if (table->isa >= BF_ISA_AVX512BW) g.bits = bf_bconv_bits__avx512;
#endif
    const size_t outs = BF_PRODUCT(g.n, g.ho, g.wo);
    const int used = bf_bconv_threads(&g, threads < 1 ? 1 : threads);
    bf_buffers bufs = {.count = 0};
    void *p[12];
    if (get_buffer(&bufs, obj[0], "x", BF_PRODUCT(g.n, g.h, g.w, cw, 8), 0, 0, &p[0]) < 0 ||
        get_buffer(&bufs, obj[1], "weight", BF_PRODUCT(g.cout, g.kpad, 8), 0, 0, &p[1]) < 0 ||
        get_buffer(&bufs, obj[2], "wsum", BF_PRODUCT(g.kh, g.kw, g.cout, 4), 0, !g.pad_zero, &p[2]) < 0 ||
        get_buffer(&bufs, obj[3], "scale", g.cout * 4, 0, 0, &p[3]) < 0 ||
        get_buffer(&bufs, obj[4], "bias", g.cout * 4, 0, 1, &p[4]) < 0 ||
        get_buffer(&bufs, obj[5], "pos_h", g.ho * 4, 0, 1, &p[5]) < 0 ||
        get_buffer(&bufs, obj[6], "pos_w", g.wo * 4, 0, 1, &p[6]) < 0 ||
        get_buffer(&bufs, obj[7], "slope", g.cout * 4, 0, activation != BF_ACT_PRELU, &p[7]) < 0 ||
        get_buffer(&bufs, obj[8], "residual", BF_PRODUCT(outs, g.cout, 4), 0, 1, &p[8]) < 0 ||
        get_buffer(&bufs, obj[9], "out_threshold", g.cout * 4, 0, 1, &p[9]) < 0 ||
        get_buffer(&bufs, obj[10], "out",
                   g.out_bits ? BF_PRODUCT(outs, BF_WORDS_FOR(g.cout), 8)
                              : BF_PRODUCT(outs, g.cout, 4),
                   1, 0,
                   &p[10]) < 0 ||
        get_buffer(&bufs, obj[11], "scratch", bf_bconv_scratch_bytes(g.kpad, g.cout, used), 1, 0,
                   &p[11]) < 0) {
        release_all(&bufs);
        return NULL;
    }
    if ((p[5] == NULL) != (p[6] == NULL)) {
        release_all(&bufs);
        PyErr_SetString(PyExc_ValueError, "pos_h and pos_w go together");
        return NULL;
    }
    /* the caller's ready-made panels, used when they are in this ISA's layout */
    if (panel_obj && panel_obj != Py_None && (size_t)panel_lanes == g.panel_lanes) {
        void *panel;
        if (get_buffer(&bufs, panel_obj, "panel",
                       bf_xnor_panel_words(g.panel_lanes, g.cout, g.kpad) * 8, 0, 0,
                       &panel) < 0) {
            release_all(&bufs);
            return NULL;
        }
        g.panels = (const bf_word *)panel;
    }
    g.x = (const bf_word *)p[0];
    g.weight = (const bf_word *)p[1];
    g.wsum = (const int32_t *)p[2];
    g.scale = (const float *)p[3];
    g.bias = (const float *)p[4];
    g.pos_h = (const float *)p[5];
    g.pos_w = (const float *)p[6];
    g.slope = (const float *)p[7];
    g.residual = (const float *)p[8];
    g.out_threshold = (const float *)p[9];
    g.out = p[10];
    g.scratch = p[11];
    Py_BEGIN_ALLOW_THREADS
    bf_bconv(&g, used);
    Py_END_ALLOW_THREADS
    release_all(&bufs);
    return PyLong_FromLong(used);
}

/* --- fconv ---------------------------------------------------------------------------- */

/* Parse a convolution's (n, cin, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw) into v (c: the
 * output channels of fconv, the channel multiplier of dwconv), check it and compute the
 * output extent; returns 0, or -1 with a Python error set naming `op`. */
static int conv_geometry(PyObject *geometry, const char *op, size_t v[13], size_t *ho,
                         size_t *wo) {
    Py_ssize_t a[13];
    if (!PyArg_ParseTuple(geometry, "nnnnnnnnnnnnn;geometry: 13 integers", &a[0], &a[1], &a[2],
                          &a[3], &a[4], &a[5], &a[6], &a[7], &a[8], &a[9], &a[10], &a[11], &a[12]))
        return -1;
    for (int i = 0; i < 13; i++) {
        const int may_be_zero = i == 9 || i == 10; /* padding */
        if (a[i] < (may_be_zero ? 0 : 1) || a[i] > ((Py_ssize_t)1 << 24)) {
            PyErr_Format(PyExc_ValueError, "%s geometry[%d] = %zd is out of range", op, i, a[i]);
            return -1;
        }
        v[i] = (size_t)a[i];
    }
    const size_t eh = v[11] * (v[5] - 1) + 1, ew = v[12] * (v[6] - 1) + 1;
    if (v[2] + 2 * v[9] < eh || v[3] + 2 * v[10] < ew) {
        PyErr_Format(PyExc_ValueError, "%s: kernel extent exceeds the padded input", op);
        return -1;
    }
    *ho = (v[2] + 2 * v[9] - eh) / v[7] + 1;
    *wo = (v[3] + 2 * v[10] - ew) / v[8] + 1;
    return 0;
}

/* Parse (n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, dh, dw) into `g` and check it;
 * returns 0, or -1 with a Python error set. */
static int fconv_geometry(PyObject *geometry, bf_fconv_args *g) {
    size_t v[13];
    memset(g, 0, sizeof(*g));
    if (conv_geometry(geometry, "fconv", v, &g->ho, &g->wo) < 0) return -1;
    g->n = v[0]; g->cin = v[1]; g->h = v[2]; g->w = v[3]; g->cout = v[4]; g->kh = v[5];
    g->kw = v[6]; g->sh = v[7]; g->sw = v[8]; g->ph = v[9]; g->pw = v[10]; g->dh = v[11];
    g->dw = v[12];
    if (g->sh * g->sw > 64) {
        PyErr_SetString(PyExc_ValueError, "fconv: stride area above 64");
        return -1;
    }
    if (BF_PRODUCT(g->n, g->cin, g->h, g->w) > ((size_t)1 << 31) ||
        BF_PRODUCT(g->n, g->cout, g->ho, g->wo) > ((size_t)1 << 31) ||
        BF_PRODUCT(g->cout, g->cin, g->kh, g->kw) > ((size_t)1 << 31)) {
        PyErr_SetString(PyExc_ValueError, "fconv: tensors above 2**31 elements");
        return -1;
    }
    return 0;
}

/* Parse an optional fused pool (kh, kw, sh, sw, ph, pw, ho, wo) after the convolution `g`
 * into `p` (NULL or None: none); returns 0, or -1 with a Python error set. */
static int fconv_pool_geometry(PyObject *obj, const bf_fconv_args *g, bf_fconv_pool *p) {
    memset(p, 0, sizeof(*p));
    if (obj == NULL || obj == Py_None) return 1;
    Py_ssize_t v[8];
    if (!PyArg_ParseTuple(obj, "nnnnnnnn;fconv pool: 8 integers", &v[0], &v[1], &v[2], &v[3],
                          &v[4], &v[5], &v[6], &v[7]))
        return -1;
    for (int i = 0; i < 8; i++) {
        if (v[i] < (i == 4 || i == 5 ? 0 : 1) || v[i] > ((Py_ssize_t)1 << 24)) {
            PyErr_Format(PyExc_ValueError, "fconv pool[%d] = %zd is out of range", i, v[i]);
            return -1;
        }
    }
    p->kh = (size_t)v[0]; p->kw = (size_t)v[1]; p->sh = (size_t)v[2]; p->sw = (size_t)v[3];
    p->ph = (size_t)v[4]; p->pw = (size_t)v[5]; p->ho = (size_t)v[6]; p->wo = (size_t)v[7];
    /* every window starts inside the input or its left padding and overlaps the input */
    if (p->ph >= p->kh || p->pw >= p->kw || p->sh > p->kh || (p->ho - 1) * p->sh >= g->ho + p->ph ||
        (p->wo - 1) * p->sw >= g->wo + p->pw) {
        PyErr_SetString(PyExc_ValueError, "fconv pool: a window lies outside the input");
        return -1;
    }
    return 0;
}

static PyObject *py_fconv_scratch_bytes(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *geometry, *pool_obj = NULL;
    int threads = 1, bits = 0;
    if (!PyArg_ParseTuple(args, "O!|Oip", &PyTuple_Type, &geometry, &pool_obj, &threads, &bits))
        return NULL;
    bf_fconv_args g;
    bf_fconv_pool pool;
    if (fconv_geometry(geometry, &g) < 0) return NULL;
    const int has_pool = fconv_pool_geometry(pool_obj, &g, &pool);
    if (has_pool < 0) return NULL;
    g.pool = has_pool == 0 ? &pool : NULL;
    static bf_word marker; /* any non-NULL bits: the size only asks whether they exist */
    pool.bits = bits ? &marker : NULL;
    return PyLong_FromSize_t(bf_fconv_scratch_bytes(&g, threads < 1 ? 1 : threads));
}

static PyObject *py_fconv_channels(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"isa", NULL};
    PyObject *isa_name = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O", kwlist, &isa_name)) return NULL;
    const bf_kernels *table = resolve_isa(isa_name);
    if (!table) return NULL;
    return PyLong_FromSize_t(table->fconv_mr);
}

static PyObject *py_fconv(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x",    "weight",  "bias", "out",  "scratch", "geometry",
                             "relu", "threads", "isa",  "pool", "bits",    "threshold", NULL};
    PyObject *obj[7], *geometry, *isa_name = NULL, *pool_obj = NULL;
    int relu, threads;
    obj[5] = obj[6] = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO!pi|OOOO", kwlist, &obj[0], &obj[1],
                                     &obj[2], &obj[3], &obj[4], &PyTuple_Type, &geometry, &relu,
                                     &threads, &isa_name, &pool_obj, &obj[5], &obj[6]))
        return NULL;
    bf_fconv_args g;
    bf_fconv_pool pool;
    if (fconv_geometry(geometry, &g) < 0) return NULL;
    const int has_pool = fconv_pool_geometry(pool_obj, &g, &pool);
    if (has_pool < 0) return NULL;
    const bf_kernels *table = resolve_isa(isa_name);
    if (!table) return NULL;
    g.kernel = table->fconv;
    g.mr = table->fconv_mr;
    g.nr = table->fconv_nr;
    g.relu = relu;
    if (has_pool == 0) {
        pool.kernel = table->maxpool2d;
        pool.sign_pack = table->sign_pack;
        g.pool = &pool;
    } else if (obj[5] != Py_None) {
        PyErr_SetString(PyExc_ValueError, "fconv: bits need a pool");
        return NULL;
    }
    if (threads < 1) threads = 1;
    const size_t k = g.cin * g.kh * g.kw, blocks = (g.cout + g.mr - 1) / g.mr;
    bf_buffers bufs = {.count = 0};
    void *p[7];
    if (get_buffer(&bufs, obj[5], "bits",
                   g.pool ? BF_PRODUCT(g.n, pool.ho, pool.wo, BF_WORDS_FOR(g.cout), 8) : 0, 1,
                   1, &p[5]) < 0) {
        release_all(&bufs);
        return NULL;
    }
    pool.bits = (bf_word *)p[5]; /* before the scratch size: packing needs a stage */
    if (get_buffer(&bufs, obj[0], "x", g.n * g.cin * g.h * g.w * 4, 0, 0, &p[0]) < 0 ||
        get_buffer(&bufs, obj[6], "threshold", g.cout * 4, 0, 1, &p[6]) < 0 ||
        get_buffer(&bufs, obj[1], "weight", blocks * g.mr * k * 4, 0, 0, &p[1]) < 0 ||
        get_buffer(&bufs, obj[2], "bias", g.cout * 4, 0, 1, &p[2]) < 0 ||
        get_buffer(&bufs, obj[3], "out",
                   g.pool ? BF_PRODUCT(g.n, g.cout, pool.ho, pool.wo, 4)
                          : BF_PRODUCT(g.n, g.cout, g.ho, g.wo, 4),
                   1, 0, &p[3]) < 0 ||
        get_buffer(&bufs, obj[4], "scratch", bf_fconv_scratch_bytes(&g, threads), 1, 0, &p[4]) <
            0) {
        release_all(&bufs);
        return NULL;
    }
    g.x = (const float *)p[0];
    g.weight = (const float *)p[1];
    g.bias = (const float *)p[2];
    if (g.pool) {
        pool.out = (float *)p[3];
        pool.threshold = p[5] ? (const float *)p[6] : NULL;
    } else
        g.out = (float *)p[3];
    g.scratch = p[4];
    const int used = bf_fconv_threads(&g, threads);
    Py_BEGIN_ALLOW_THREADS
    bf_fconv(&g, used);
    Py_END_ALLOW_THREADS
    release_all(&bufs);
    return PyLong_FromLong(used);
}

/* --- flinear -------------------------------------------------------------------------- */

static PyObject *py_flinear(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x", "weight", "bias", "out", "n", "in_features", "out_features",
                             "isa", NULL};
    PyObject *obj[4], *isa_name = NULL;
    Py_ssize_t sz[3];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOnnn|O", kwlist, &obj[0], &obj[1],
                                     &obj[2], &obj[3], &sz[0], &sz[1], &sz[2], &isa_name))
        return NULL;
    if (positive_sizes(sz, 3) < 0) return NULL;
    const size_t n = (size_t)sz[0], in = (size_t)sz[1], out = (size_t)sz[2];
    if (n * in > ((size_t)1 << 31) || n * out > ((size_t)1 << 31) ||
        in * out > ((size_t)1 << 31)) {
        PyErr_SetString(PyExc_ValueError, "flinear: tensors above 2**31 elements");
        return NULL;
    }
    const bf_kernels *table = resolve_isa(isa_name);
    if (!table) return NULL;
    const size_t blocks = (out + BF_FLINEAR_BLOCK - 1) / BF_FLINEAR_BLOCK;
    bf_buffers bufs = {.count = 0};
    void *p[4];
    if (get_buffer(&bufs, obj[0], "x", n * in * 4, 0, 0, &p[0]) < 0 ||
        get_buffer(&bufs, obj[1], "weight", blocks * BF_FLINEAR_BLOCK * in * 2, 0, 0, &p[1]) < 0 ||
        get_buffer(&bufs, obj[2], "bias", out * 4, 0, 1, &p[2]) < 0 ||
        get_buffer(&bufs, obj[3], "out", n * out * 4, 1, 0, &p[3]) < 0) {
        release_all(&bufs);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    table->flinear((const float *)p[0], n, in, (const uint16_t *)p[1], (const float *)p[2], out,
                   (float *)p[3]);
    Py_END_ALLOW_THREADS
    release_all(&bufs);
    Py_RETURN_NONE;
}

/* --- dwconv --------------------------------------------------------------------------- */

/* Parse (n, cin, h, w, mult, kh, kw, sh, sw, ph, pw, dh, dw) into `g` and check it;
 * returns 0, or -1 with a Python error set. */
static int dwconv_geometry(PyObject *geometry, bf_dwconv_args *g) {
    size_t v[13];
    memset(g, 0, sizeof(*g));
    if (conv_geometry(geometry, "dwconv", v, &g->ho, &g->wo) < 0) return -1;
    g->n = v[0]; g->cin = v[1]; g->h = v[2]; g->w = v[3]; g->mult = v[4]; g->kh = v[5];
    g->kw = v[6]; g->sh = v[7]; g->sw = v[8]; g->ph = v[9]; g->pw = v[10]; g->dh = v[11];
    g->dw = v[12];
    if (BF_PRODUCT(g->n, g->cin, g->h + 2 * g->ph, g->w + 2 * g->pw) > ((size_t)1 << 31) ||
        BF_PRODUCT(g->n, g->cin * g->mult, g->ho, g->wo) > ((size_t)1 << 31) ||
        BF_PRODUCT(g->cin, g->mult, g->kh, g->kw) > ((size_t)1 << 31) ||
        BF_PRODUCT(g->sw, g->h + 2 * g->ph, (g->w + 2 * g->pw + g->sw - 1) / g->sw) >
            ((size_t)1 << 31)) { /* the phase planes (bf_dwconv_phase_floats) */
        PyErr_SetString(PyExc_ValueError, "dwconv: tensors above 2**31 elements");
        return -1;
    }
    return 0;
}

static PyObject *py_dwconv_scratch_bytes(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *geometry;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "O!|i", &PyTuple_Type, &geometry, &threads)) return NULL;
    bf_dwconv_args g;
    if (dwconv_geometry(geometry, &g) < 0) return NULL;
    return PyLong_FromSize_t(bf_dwconv_scratch_bytes(&g, threads < 1 ? 1 : threads));
}

static PyObject *py_dwconv(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *kwlist[] = {"x",    "weight",  "bias", "out", "scratch", "geometry",
                             "relu", "threads", "isa",  NULL};
    PyObject *obj[5], *geometry, *isa_name = NULL;
    int relu, threads;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO!pi|O", kwlist, &obj[0], &obj[1],
                                     &obj[2], &obj[3], &obj[4], &PyTuple_Type, &geometry, &relu,
                                     &threads, &isa_name))
        return NULL;
    bf_dwconv_args g;
    if (dwconv_geometry(geometry, &g) < 0) return NULL;
    const bf_kernels *table = resolve_isa(isa_name);
    if (!table) return NULL;
    if (threads < 1) threads = 1;
    const size_t cout = g.cin * g.mult;
    bf_buffers bufs = {.count = 0};
    void *p[5];
    if (get_buffer(&bufs, obj[0], "x", BF_PRODUCT(g.n, g.cin, g.h, g.w, 4), 0, 0, &p[0]) < 0 ||
        get_buffer(&bufs, obj[1], "weight", BF_PRODUCT(cout, g.kh, g.kw, 4), 0, 0, &p[1]) < 0 ||
        get_buffer(&bufs, obj[2], "bias", cout * 4, 0, 1, &p[2]) < 0 ||
        get_buffer(&bufs, obj[3], "out", BF_PRODUCT(g.n, cout, g.ho, g.wo, 4), 1, 0, &p[3]) < 0 ||
        get_buffer(&bufs, obj[4], "scratch", bf_dwconv_scratch_bytes(&g, threads), 1, 0, &p[4]) <
            0) {
        release_all(&bufs);
        return NULL;
    }
    g.x = (const float *)p[0];
    g.weight = (const float *)p[1];
    g.bias = (const float *)p[2];
    g.out = (float *)p[3];
    g.scratch = p[4];
    g.relu = relu;
    g.plane = table->dwconv_plane;
    const int used = bf_dwconv_threads(&g, threads);
    Py_BEGIN_ALLOW_THREADS
    bf_dwconv(&g, used);
    Py_END_ALLOW_THREADS
    release_all(&bufs);
    return PyLong_FromLong(used);
}

/* --- maxpool2d ------------------------------------------------------------------------ */

static PyObject *py_maxpool2d(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *x_obj, *out_obj, *row_obj, *isa_name = NULL;
    Py_ssize_t v[11];
    if (!PyArg_ParseTuple(args, "OOO(nnnnnnnnnnn)|O", &x_obj, &out_obj, &row_obj, &v[0], &v[1],
                          &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10],
                          &isa_name))
        return NULL;
    const bf_kernels *table = resolve_isa(isa_name);
    if (!table) return NULL;
    /* planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw */
    for (int i = 0; i < 11; i++) {
        if (v[i] < (i >= 9 ? 0 : 1) || v[i] > ((Py_ssize_t)1 << 31)) {
            PyErr_Format(PyExc_ValueError, "maxpool2d geometry[%d] = %zd is out of range", i, v[i]);
            return NULL;
        }
    }
    const size_t planes = (size_t)v[0], h = (size_t)v[1], w = (size_t)v[2], ho = (size_t)v[3],
                 wo = (size_t)v[4], kh = (size_t)v[5], kw = (size_t)v[6], sh = (size_t)v[7],
                 sw = (size_t)v[8], ph = (size_t)v[9], pw = (size_t)v[10];
    /* every window must overlap the input */
    if ((ho - 1) * sh >= h + ph || (wo - 1) * sw >= w + pw || ph >= kh || pw >= kw) {
        PyErr_SetString(PyExc_ValueError, "maxpool2d: a window lies outside the input");
        return NULL;
    }
    bf_buffers bufs = {.count = 0};
    void *x, *out, *row;
    if (get_buffer(&bufs, x_obj, "x", BF_PRODUCT(planes, h, w, 4), 0, 0, &x) < 0 ||
        get_buffer(&bufs, out_obj, "out", BF_PRODUCT(planes, ho, wo, 4), 1, 0, &out) < 0 ||
        get_buffer(&bufs, row_obj, "row", w * 4, 1, 0, &row) < 0) {
        release_all(&bufs);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    table->maxpool2d((const float *)x, (float *)out, planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw,
                     (float *)row);
    Py_END_ALLOW_THREADS
    release_all(&bufs);
    Py_RETURN_NONE;
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
    const bf_isa all[] = {BF_ISA_SCALAR, BF_ISA_NEON, BF_ISA_AVX2, BF_ISA_AVX512BW, BF_ISA_AVX512};
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

/* --- erf, GELU --------------------------------------------------------------------- */

static PyObject *py_erf(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, out;
    int gelu;
    if (!PyArg_ParseTuple(args, "y*w*p", &x, &out, &gelu)) return NULL;
    if (x.len != out.len || x.len % (Py_ssize_t)sizeof(float) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "x and out must be float32 buffers of one length, got %zd and %zd bytes",
                     x.len, out.len);
        PyBuffer_Release(&x);
        PyBuffer_Release(&out);
        return NULL;
    }
    const size_t n = (size_t)x.len / sizeof(float);
    Py_BEGIN_ALLOW_THREADS
    if (gelu) bf_gelu_erf((const float *)x.buf, (float *)out.buf, n);
    else bf_erf((const float *)x.buf, (float *)out.buf, n);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyObject *py_select_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const bf_kernels *table = resolve_isa(arg);
    if (!table) return NULL;
    bf_dispatch_select(table->isa);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"erf", py_erf, METH_VARARGS,
     "erf(x, out, gelu) -> None\n\nout = erf(x), or with gelu x/2 (1 + erf(x / sqrt 2)); "
     "float32 buffers of one length (out may be x)."},
    {"popcount", (PyCFunction)(void (*)(void))py_popcount, METH_VARARGS | METH_KEYWORDS,
     "popcount(buffer, isa=None) -> int\n\nNumber of set bits in a buffer of 64-bit words."},
    {"xnor_gemm", (PyCFunction)(void (*)(void))py_xnor_gemm, METH_VARARGS | METH_KEYWORDS,
     "xnor_gemm(a, b, c, m, n, kw, lda, ldb, isa=None) -> None\n\n"
     "c[i, j] = popcount of a[i] xor b[j] over kw words (int32, row stride n)."},
    {"xnor_panel", (PyCFunction)(void (*)(void))py_xnor_panel, METH_VARARGS | METH_KEYWORDS,
     "xnor_panel(a, w, c, n_pix, n_ch, kw, lda, ldw, isa=None, n_seg=1, seg_stride=0, "
     "pixel_major=False, add=None) -> None\n\n"
     "c[ch, p] = popcount of a[p] xor w[ch] over kw words (int32, row stride n_pix), through "
     "the ISA's panel layout and kernel (the binary convolution's product), plus add[p, ch] "
     "(int32, rows of n_ch rounded up to 8) where given."},
    {"panel_pack", py_panel_pack, METH_VARARGS,
     "panel_pack(w, panel, n_ch, kw, ldw, lanes) -> None\n\n"
     "Repack weight rows into lane-interleaved panels: panel[(g*kw+k)*lanes+l] = w[g*lanes+l, k]."},
    {"panel_lanes", (PyCFunction)(void (*)(void))py_panel_lanes, METH_VARARGS | METH_KEYWORDS,
     "panel_lanes(isa=None) -> int\n\nChannels per vector in the ISA's panel layout."},
    {"sign_pack", (PyCFunction)(void (*)(void))py_sign_pack, METH_VARARGS | METH_KEYWORDS,
     "sign_pack(x, threshold, out, n, c, s, isa=None) -> None\n\n"
     "Pack float32 (n, c, s) signs into (n, s, ceil(c/64)) words."},
    {"bconv_scratch_bytes", py_bconv_scratch_bytes, METH_VARARGS,
     "bconv_scratch_bytes(kpad, cout, threads) -> int\n\nScratch bytes a bconv call needs."},
    {"bconv", (PyCFunction)(void (*)(void))py_bconv, METH_VARARGS | METH_KEYWORDS,
     "bconv(x, weight, wsum, scale, bias, pos_h, pos_w, slope, residual, out_threshold, out, "
     "scratch, geometry, transform, threads, isa=None, panel=None, panel_lanes=0) -> int\n\n"
     "Binary convolution with the fused output transform; returns the threads used. `panel`: "
     "the weight rows already repacked with `panel_lanes` lanes (used when that is the ISA's "
     "lane count; otherwise each chunk is repacked in scratch)."},
    {"fconv", (PyCFunction)(void (*)(void))py_fconv, METH_VARARGS | METH_KEYWORDS,
     "fconv(x, weight, bias, out, scratch, geometry, relu, threads, isa=None, pool=None, "
     "bits=None, threshold=None) -> int\n\n"
     "Float32 NCHW convolution (groups 1) on weights packed for fconv_channels(isa); "
     "geometry (n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, dh, dw). With pool (kh, kw, sh, "
     "sw, ph, pw, ho, wo) a max pooling follows (after relu) and `out` is the pooled output; "
     "with bits (n, ho, wo, ceil(cout/64)) words it is also sign-packed there (as sign_pack, "
     "against threshold). "
     "Returns the threads used."},
    {"fconv_scratch_bytes", py_fconv_scratch_bytes, METH_VARARGS,
     "fconv_scratch_bytes(geometry, pool=None, threads=1, bits=False) -> int\n\n"
     "Scratch bytes an fconv call needs."},
    {"fconv_channels", (PyCFunction)(void (*)(void))py_fconv_channels,
     METH_VARARGS | METH_KEYWORDS,
     "fconv_channels(isa=None) -> int\n\nOutput channels per packed weight block of the ISA."},
    {"flinear", (PyCFunction)(void (*)(void))py_flinear, METH_VARARGS | METH_KEYWORDS,
     "flinear(x, weight, bias, out, n, in_features, out_features, isa=None) -> None\n\n"
     "out = x @ w.T + bias in float32 on float16 weights packed in blocks of 64 outputs "
     "(flinear.h)."},
    {"dwconv_scratch_bytes", py_dwconv_scratch_bytes, METH_VARARGS,
     "dwconv_scratch_bytes((n, cin, h, w, mult, kh, kw, sh, sw, ph, pw, dh, dw), threads=1)"
     " -> int\n\nScratch bytes dwconv needs."},
    {"dwconv", (PyCFunction)(void (*)(void))py_dwconv, METH_VARARGS | METH_KEYWORDS,
     "dwconv(x, weight, bias, out, scratch, geometry, relu, threads, isa=None) -> threads used"
     "\n\nDepthwise convolution, NCHW float32 (runtime/csrc/dwconv/dwconv.h): geometry\n"
     "(n, cin, h, w, mult, kh, kw, sh, sw, ph, pw, dh, dw), weight (cin * mult, kh, kw),\n"
     "bias (cin * mult,) or None, out (n, cin * mult, ho, wo). Releases the GIL."},
    {"maxpool2d", py_maxpool2d, METH_VARARGS,
     "maxpool2d(x, out, row, (planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw), isa=None) -> None\n\n"
     "Max pooling of float32 planes; windows clipped to the input."},
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
