/* Avro binary writer for the schema subset schemas/fastwrite.py compiles:
 * records, arrays, maps, the primitives and unions of null with one type.
 *
 * Why C: the agent encodes every event it accepts, and a one-tick GPU
 * message (48 packed columns and an envelope) cost 27-46 us in the
 * generated Python writer, most of a small message's whole budget. The
 * schema is turned into a tree of nodes once (schemas/nativewrite.py builds
 * the program, Writer() parses it); a call walks the tree against the
 * record and writes straight into the bytes object it returns.
 *
 * `seal` is the agent's whole step per event in one call: the body written
 * with the given envelope as its envelope field (no copy of the body into a
 * new dict first) and the SHA-256 of the result, the event's chain hash, by
 * OpenSSL's SHA256() from the libcrypto hashlib already loaded.
 *
 * The generated Python writer stays the reference: tests check both against
 * fastavro byte for byte, and for the same bad records both raise one of
 * TypeError, KeyError, AttributeError, ValueError or OverflowError (the
 * codec turns any of them into EncodeError). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <dlfcn.h>

enum {
    K_NULL = 0, K_BOOLEAN, K_INT, K_LONG, K_FLOAT, K_DOUBLE, K_STRING, K_BYTES,
    K_RECORD, K_ARRAY, K_MAP, K_UNION
};

/* How a record field is looked up: r[name] (KeyError when missing),
 * r.get(name) (None when missing), r.get(name, default). */
enum { F_REQUIRED = 0, F_NULLABLE = 1, F_DEFAULT = 2 };

typedef struct Node Node;

typedef struct {
    PyObject *name;   /* str, owned */
    int mode;
    PyObject *dflt;   /* owned, F_DEFAULT only */
    Node *node;
} Field;

struct Node {
    int kind;
    int null_at;           /* K_UNION: the branch index of null (0 or 1) */
    Py_ssize_t nfields;    /* K_RECORD */
    Field *fields;         /* K_RECORD */
    Node *child;           /* K_ARRAY items, K_MAP values, K_UNION other branch */
};

typedef struct {
    PyObject *bytes;  /* the result, grown in place */
    char *p;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buf;

static int
buf_grow(Buf *b, Py_ssize_t need)
{
    Py_ssize_t cap = b->cap * 2;
    if (cap < b->len + need)
        cap = b->len + need + 256;
    if (_PyBytes_Resize(&b->bytes, cap) < 0)
        return -1;
    b->p = PyBytes_AS_STRING(b->bytes);
    b->cap = cap;
    return 0;
}

#define RESERVE(b, n) (((b)->len + (n) <= (b)->cap) ? 0 : buf_grow((b), (n)))

static inline int
put_varint(Buf *b, uint64_t z)
{
    if (RESERVE(b, 10) < 0)
        return -1;
    char *p = b->p + b->len;
    while (z > 0x7F) {
        *p++ = (char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    *p++ = (char)z;
    b->len = p - b->p;
    return 0;
}

static inline int
put_long(Buf *b, int64_t n)
{
    return put_varint(b, ((uint64_t)n << 1) ^ (uint64_t)(n >> 63));
}

static inline int
put_raw(Buf *b, const char *data, Py_ssize_t n)
{
    if (put_long(b, n) < 0 || RESERVE(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, data, (size_t)n);
    b->len += n;
    return 0;
}

/* A Python integer (int, bool, numpy integers: operator.index) as int64,
 * OverflowError outside [lo, hi]. */
static int
as_integer(PyObject *v, long long lo, long long hi, const char *what, long long *out)
{
    int overflow = 0;
    long long n;
    if (PyLong_CheckExact(v)) {
        n = PyLong_AsLongLongAndOverflow(v, &overflow);
    }
    else {
        PyObject *i = PyNumber_Index(v);
        if (i == NULL)
            return -1;
        n = PyLong_AsLongLongAndOverflow(i, &overflow);
        Py_DECREF(i);
    }
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (overflow || n < lo || n > hi) {
        PyErr_Format(PyExc_OverflowError, "%R is out of range for an Avro %s", v, what);
        return -1;
    }
    *out = n;
    return 0;
}

static int
as_double(PyObject *v, double *out)
{
    if (PyFloat_Check(v)) {
        *out = PyFloat_AS_DOUBLE(v);
        return 0;
    }
    if (PyLong_Check(v)) {
        *out = PyLong_AsDouble(v);
        return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
    }
    PyErr_Format(PyExc_TypeError, "expected a number, got %.100s", Py_TYPE(v)->tp_name);
    return -1;
}

static int write_value(Buf *b, const Node *node, PyObject *v);

/* Field `override_at` (-1: none) takes `override` instead of r's value: the
 * agent's envelope, written without first copying the body into a new dict. */
static int
write_fields(Buf *b, const Node *node, PyObject *r, Py_ssize_t override_at, PyObject *override)
{
    if (!PyDict_Check(r)) {
        PyErr_SetString(PyExc_TypeError, "expected a record (dict)");
        return -1;
    }
    for (Py_ssize_t i = 0; i < node->nfields; i++) {
        const Field *f = &node->fields[i];
        PyObject *v = i == override_at ? override : PyDict_GetItemWithError(r, f->name);
        if (v == NULL) {
            if (PyErr_Occurred())
                return -1;
            if (f->mode == F_REQUIRED) {
                PyErr_SetObject(PyExc_KeyError, f->name);
                return -1;
            }
            v = f->mode == F_DEFAULT ? f->dflt : Py_None;
        }
        Py_INCREF(v);  /* the value's own code (__index__) could change the dict */
        int rc = write_value(b, f->node, v);
        Py_DECREF(v);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static int
write_record(Buf *b, const Node *node, PyObject *r)
{
    return write_fields(b, node, r, -1, NULL);
}

/* A str as UTF-8 with its length; `what` names it in the error (a field's
 * value or a map key). */
static int
write_str(Buf *b, PyObject *v, const char *what)
{
    if (!PyUnicode_Check(v)) {
        PyErr_Format(PyExc_TypeError, "expected a str%s, got %.100s", what, Py_TYPE(v)->tp_name);
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    return s == NULL ? -1 : put_raw(b, s, n);
}

/* One block of an array's items, or of a map's (key, value) pairs, and the
 * empty block that ends it; consumes `seq` (a list or tuple). */
static int
write_block(Buf *b, const Node *node, PyObject *seq, int pairs)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int rc = n ? put_long(b, n) : 0;
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        /* A value's own code (__index__, __float__) could change a list
         * being written: its count is already out, so that is an error. */
        if (PySequence_Fast_GET_SIZE(seq) != n) {
            PyErr_SetString(PyExc_ValueError, "array changed size while being encoded");
            rc = -1;
            break;
        }
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_INCREF(item);
        if (!pairs) {
            rc = write_value(b, node->child, item);
        }
        else if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "map items must be (key, value) pairs");
            rc = -1;
        }
        else if ((rc = write_str(b, PyTuple_GET_ITEM(item, 0), " map key")) == 0) {
            rc = write_value(b, node->child, PyTuple_GET_ITEM(item, 1));
        }
        Py_DECREF(item);
    }
    Py_DECREF(seq);
    if (rc < 0 || RESERVE(b, 1) < 0)
        return -1;
    b->p[b->len++] = 0;
    return 0;
}

static int
write_array(Buf *b, const Node *node, PyObject *v)
{
    if (PyObject_Length(v) < 0)  /* as len(v): a generator is refused */
        return -1;
    PyObject *seq = PySequence_Fast(v, "expected an array");
    return seq == NULL ? -1 : write_block(b, node, seq, 0);
}

static int
write_map(Buf *b, const Node *node, PyObject *v)
{
    PyObject *items = PyDict_Check(v) ? PyDict_Items(v) : PyObject_CallMethod(v, "items", NULL);
    if (items == NULL)
        return -1;
    PyObject *seq = PySequence_Fast(items, "map items");
    Py_DECREF(items);
    return seq == NULL ? -1 : write_block(b, node, seq, 1);
}

static int
write_bytes(Buf *b, PyObject *v)
{
    if (PyBytes_Check(v))
        return put_raw(b, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    if (PyByteArray_Check(v))
        return put_raw(b, PyByteArray_AS_STRING(v), PyByteArray_GET_SIZE(v));
    if (PyMemoryView_Check(v)) {  /* any layout, as bytes(v) */
        PyObject *copy = PyBytes_FromObject(v);
        if (copy == NULL)
            return -1;
        int rc = put_raw(b, PyBytes_AS_STRING(copy), PyBytes_GET_SIZE(copy));
        Py_DECREF(copy);
        return rc;
    }
    PyErr_Format(PyExc_TypeError, "expected bytes, got %.100s", Py_TYPE(v)->tp_name);
    return -1;
}

static int
write_value(Buf *b, const Node *node, PyObject *v)
{
    long long n;
    double d;
    switch (node->kind) {
    case K_NULL:
        if (v != Py_None) {
            PyErr_SetString(PyExc_TypeError, "expected null");
            return -1;
        }
        return 0;
    case K_BOOLEAN:
        if (v != Py_True && v != Py_False) {
            PyErr_Format(PyExc_TypeError, "expected a boolean, got %.100s", Py_TYPE(v)->tp_name);
            return -1;
        }
        if (RESERVE(b, 1) < 0)
            return -1;
        b->p[b->len++] = v == Py_True;
        return 0;
    case K_INT:
        if (as_integer(v, INT32_MIN, INT32_MAX, "int", &n) < 0)
            return -1;
        return put_long(b, n);
    case K_LONG:
        if (as_integer(v, INT64_MIN, INT64_MAX, "long", &n) < 0)
            return -1;
        return put_long(b, n);
    case K_FLOAT:
        if (as_double(v, &d) < 0 || RESERVE(b, 4) < 0)
            return -1;
        if (PyFloat_Pack4(d, b->p + b->len, 1) < 0)
            return -1;
        b->len += 4;
        return 0;
    case K_DOUBLE:
        if (as_double(v, &d) < 0 || RESERVE(b, 8) < 0)
            return -1;
        if (PyFloat_Pack8(d, b->p + b->len, 1) < 0)
            return -1;
        b->len += 8;
        return 0;
    case K_STRING:
        return write_str(b, v, "");
    case K_BYTES:
        return write_bytes(b, v);
    case K_RECORD:
        return write_record(b, node, v);
    case K_ARRAY:
        return write_array(b, node, v);
    case K_MAP:
        return write_map(b, node, v);
    case K_UNION:
        if (RESERVE(b, 1) < 0)
            return -1;
        if (v == Py_None) {
            b->p[b->len++] = (char)(node->null_at << 1);
            return 0;
        }
        b->p[b->len++] = (char)((1 - node->null_at) << 1);
        return write_value(b, node->child, v);
    }
    PyErr_SetString(PyExc_SystemError, "avro writer: unknown node");
    return -1;
}

/* ---- the program: nested tuples from schemas/nativewrite.py ---- */

static void
node_free(Node *node)
{
    if (node == NULL)
        return;
    for (Py_ssize_t i = 0; i < node->nfields; i++) {
        Py_XDECREF(node->fields[i].name);
        Py_XDECREF(node->fields[i].dflt);
        node_free(node->fields[i].node);
    }
    PyMem_Free(node->fields);
    node_free(node->child);
    PyMem_Free(node);
}

static Node *node_parse(PyObject *prog, int depth);

static int
fields_parse(Node *node, PyObject *fields, int depth)
{
    if (!PyTuple_Check(fields)) {
        PyErr_SetString(PyExc_ValueError, "record fields must be a tuple");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    node->fields = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Field));
    if (node->fields == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name, *dflt, *sub;
        int mode;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, i), "UiOO;field (name, mode, default, node)",
                              &name, &mode, &dflt, &sub))
            return -1;
        if (mode < F_REQUIRED || mode > F_DEFAULT) {
            PyErr_Format(PyExc_ValueError, "field mode %d", mode);
            return -1;
        }
        Field *f = &node->fields[i];
        node->nfields = i + 1;  /* what node_free releases */
        /* Interned: a record whose keys are too (names in Python source,
         * e.g. the GPU source's columns) is then looked up by identity, not
         * by comparing the strings (a fifth of a GPU message's encode). */
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name);
        f->name = name;
        f->mode = mode;
        if (mode == F_DEFAULT) {
            Py_INCREF(dflt);
            f->dflt = dflt;
        }
        if ((f->node = node_parse(sub, depth + 1)) == NULL)
            return -1;
    }
    return 0;
}

static Node *
node_parse(PyObject *prog, int depth)
{
    if (depth > 64) {
        PyErr_SetString(PyExc_ValueError, "schema nested too deeply");
        return NULL;
    }
    if (!PyTuple_Check(prog) || PyTuple_GET_SIZE(prog) < 1) {
        PyErr_SetString(PyExc_ValueError, "a program node is a non-empty tuple");
        return NULL;
    }
    int kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(prog, 0));
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    Node *node = PyMem_Calloc(1, sizeof(Node));
    if (node == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    node->kind = kind;
    Py_ssize_t size = PyTuple_GET_SIZE(prog);
    int ok = 1;
    if (kind >= K_NULL && kind <= K_BYTES) {
        ok = size == 1;
    }
    else if (kind == K_RECORD) {
        ok = size == 2 && fields_parse(node, PyTuple_GET_ITEM(prog, 1), depth) == 0;
    }
    else if (kind == K_ARRAY || kind == K_MAP) {
        ok = size == 2 && (node->child = node_parse(PyTuple_GET_ITEM(prog, 1), depth + 1)) != NULL;
    }
    else if (kind == K_UNION) {
        ok = size == 3;
        if (ok) {
            node->null_at = (int)PyLong_AsLong(PyTuple_GET_ITEM(prog, 1));
            ok = (node->null_at == 0 || node->null_at == 1) &&
                 (node->child = node_parse(PyTuple_GET_ITEM(prog, 2), depth + 1)) != NULL;
        }
    }
    else {
        ok = 0;
    }
    if (!ok) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "bad program node %R", prog);
        node_free(node);
        return NULL;
    }
    return node;
}

/* ---- the Writer type ---- */

typedef struct {
    PyObject_HEAD
    Node *root;
    Py_ssize_t hint;    /* the last record's size: the next buffer starts there */
    Py_ssize_t env_at;  /* the root's field named "envelope", or -1 */
} Writer;

/* OpenSSL's one-shot SHA256(), from the libcrypto Python's hashlib loaded
 * (use_sha256): hashlib's per-call lookup of the digest cost as much as the
 * hash of a small message. NULL until loaded: seal() then refuses. */
static unsigned char *(*sha256_fn)(const unsigned char *, size_t, unsigned char *);

/* From this size seal() hashes without the GIL: below it, handing the GIL
 * over and back costs more than the hash (2.5 us for a 3 KB message). */
#define SEAL_UNLOCKED_FROM (64 * 1024)

static int
Writer_init(Writer *self, PyObject *args, PyObject *kwds)
{
    PyObject *prog;
    static char *kwlist[] = {"program", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Writer", kwlist, &prog))
        return -1;
    Node *root = node_parse(prog, 0);
    if (root == NULL)
        return -1;
    if (root->kind != K_RECORD) {
        node_free(root);
        PyErr_SetString(PyExc_ValueError, "the program's root must be a record");
        return -1;
    }
    node_free(self->root);
    self->root = root;
    self->hint = 256;
    self->env_at = -1;
    for (Py_ssize_t i = 0; i < root->nfields; i++) {
        if (PyUnicode_CompareWithASCIIString(root->fields[i].name, "envelope") == 0)
            self->env_at = i;
    }
    return 0;
}

static void
Writer_dealloc(Writer *self)
{
    node_free(self->root);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* head + the record in Avro binary, the root's field `override_at` taking
 * `override` (-1: none). */
static PyObject *
encode(Writer *self, PyObject *record, const char *head, Py_ssize_t head_len,
       Py_ssize_t override_at, PyObject *override)
{
    if (self->root == NULL) {
        PyErr_SetString(PyExc_ValueError, "Writer not initialised");
        return NULL;
    }
    Buf b;
    b.cap = head_len + self->hint;
    b.bytes = PyBytes_FromStringAndSize(NULL, b.cap);
    if (b.bytes == NULL)
        return NULL;
    b.p = PyBytes_AS_STRING(b.bytes);
    if (head_len)
        memcpy(b.p, head, (size_t)head_len);
    b.len = head_len;
    if (write_fields(&b, self->root, record, override_at, override) < 0) {
        Py_XDECREF(b.bytes);
        return NULL;
    }
    self->hint = b.len + b.len / 8;
    if (b.len != b.cap && _PyBytes_Resize(&b.bytes, b.len) < 0)
        return NULL;
    return b.bytes;
}

static PyObject *
Writer_call(Writer *self, PyObject *args, PyObject *kwds)
{
    PyObject *record;
    Py_buffer head = {0};
    static char *kwlist[] = {"record", "head", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|y*:write", kwlist, &record, &head))
        return NULL;
    PyObject *out = encode(self, record, head.buf, head.len, -1, NULL);
    PyBuffer_Release(&head);
    return out;
}

/* seal(body, head, envelope) -> (value, sha256(value)): the agent's per-event
 * step in one call. `envelope` is written as the root's "envelope" field
 * (body's own, if any, is not read), and the digest is the event's chain
 * hash. */
static PyObject *
Writer_seal(Writer *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "seal(body, head: bytes, envelope)");
        return NULL;
    }
    if (sha256_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SHA-256 not loaded: call use_sha256(path) first");
        return NULL;
    }
    if (self->env_at < 0) {
        PyErr_SetString(PyExc_ValueError, "this schema has no envelope field");
        return NULL;
    }
    PyObject *value = encode(self, args[0], PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1]),
                             self->env_at, args[2]);
    if (value == NULL)
        return NULL;
    unsigned char md[32];
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(value);
    size_t len = (size_t)PyBytes_GET_SIZE(value);
    if (len >= SEAL_UNLOCKED_FROM) {
        /* A large message's hash (200 us for 10,000 metric points) lets the
         * shipper run meanwhile; `value` is ours alone until returned. */
        Py_BEGIN_ALLOW_THREADS
        sha256_fn(data, len, md);
        Py_END_ALLOW_THREADS
    }
    else {
        sha256_fn(data, len, md);
    }
    PyObject *digest = PyBytes_FromStringAndSize((const char *)md, 32);
    if (digest == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    PyObject *out = PyTuple_New(2);
    if (out == NULL) {
        Py_DECREF(value);
        Py_DECREF(digest);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, value);
    PyTuple_SET_ITEM(out, 1, digest);
    return out;
}

static PyMethodDef Writer_methods[] = {
    {"seal", (PyCFunction)(void (*)(void))Writer_seal, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schemas._avrowrite.Writer",
    .tp_doc = PyDoc_STR("Writer(program)(record, head=b'') -> head + the record in Avro binary"),
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_call = (ternaryfunc)Writer_call,
    .tp_methods = Writer_methods,
};

/* use_sha256(path): SHA256() from the libcrypto at `path`, which must be
 * loaded already (RTLD_NOLOAD: hashlib's own copy, never a second one). */
static PyObject *
use_sha256(PyObject *mod, PyObject *args)
{
    const char *path;
    (void)mod;
    if (!PyArg_ParseTuple(args, "s:use_sha256", &path))
        return NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD | RTLD_LOCAL);
    if (h == NULL) {
        PyErr_Format(PyExc_ImportError, "%s is not loaded: %s", path, dlerror());
        return NULL;
    }
    void *fn = dlsym(h, "SHA256");
    if (fn == NULL) {
        PyErr_Format(PyExc_ImportError, "%s has no SHA256", path);
        return NULL;
    }
    /* Checked before use: the digest of "abc" (FIPS 180-2). */
    static const unsigned char abc[32] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
        0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    unsigned char md[32];
    ((unsigned char *(*)(const unsigned char *, size_t, unsigned char *))fn)(
        (const unsigned char *)"abc", 3, md);
    if (memcmp(md, abc, 32) != 0) {
        PyErr_Format(PyExc_ImportError, "%s: SHA256 gives a wrong digest", path);
        return NULL;
    }
    *(void **)(&sha256_fn) = fn;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"use_sha256", use_sha256, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_avrowrite",
    .m_doc = "Avro binary writer in C for the schema subset of schemas/fastwrite.py.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__avrowrite(void)
{
    if (PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
