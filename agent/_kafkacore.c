/* The agent's produce path in C, on the librdkafka that confluent-kafka
 * already loaded.
 *
 * Why: through confluent-kafka every message costs a Python produce call
 * and a Python delivery report (a Message object with a copy of the value,
 * and a call into the shipper), 10-15 us a message on a 2-core node, which
 * put the agent's rate far below a raw produce of the same bytes. Here one
 * call hands a whole spool read to librdkafka (no copy: the record's bytes
 * are held until their report), and the reports are gathered in C while
 * `poll` runs without the GIL, then returned as one list.
 *
 * No librdkafka headers are needed: the few declarations below are those
 * of rdkafka.h (librdkafka 2.x, BSD-2-Clause), and the functions are looked
 * up with dlsym in the very copy confluent-kafka loaded (agent/kafkacore.py
 * finds its path), so the two never disagree on a version.
 *
 * Threads: produce, poll, flush and purge may run in different threads
 * (librdkafka is thread-safe); the reports are kept under a mutex because
 * librdkafka calls the report callback in whichever thread polls or flushes.
 * The callbacks never touch Python objects (they run without the GIL). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- the subset of rdkafka.h used here ---- */

typedef struct rd_kafka_s rd_kafka_t;
typedef struct rd_kafka_topic_s rd_kafka_topic_t;
typedef struct rd_kafka_conf_s rd_kafka_conf_t;
typedef int rd_kafka_resp_err_t;

typedef struct {
    rd_kafka_resp_err_t err;
    rd_kafka_topic_t *rkt;
    int32_t partition;
    void *payload;
    size_t len;
    void *key;
    size_t key_len;
    int64_t offset;
    void *_private;
} rd_kafka_message_t;

#define RD_KAFKA_PRODUCER 0
#define RD_KAFKA_CONF_OK 0
#define RD_KAFKA_PARTITION_UA ((int32_t)-1)
#define RD_KAFKA_PURGE_F_QUEUE 0x1
#define RD_KAFKA_PURGE_F_INFLIGHT 0x2
#define ERR_QUEUE_FULL (-184)

typedef void (*dr_cb_t)(rd_kafka_t *, const rd_kafka_message_t *, void *);
typedef void (*error_cb_t)(rd_kafka_t *, int, const char *, void *);

static struct {
    int (*version)(void);
    rd_kafka_conf_t *(*conf_new)(void);
    void (*conf_destroy)(rd_kafka_conf_t *);
    int (*conf_set)(rd_kafka_conf_t *, const char *, const char *, char *, size_t);
    void (*conf_set_dr_msg_cb)(rd_kafka_conf_t *, dr_cb_t);
    void (*conf_set_error_cb)(rd_kafka_conf_t *, error_cb_t);
    void (*conf_set_opaque)(rd_kafka_conf_t *, void *);
    rd_kafka_t *(*new_)(int, rd_kafka_conf_t *, char *, size_t);
    void (*destroy)(rd_kafka_t *);
    rd_kafka_topic_t *(*topic_new)(rd_kafka_t *, const char *, void *);
    void (*topic_destroy)(rd_kafka_topic_t *);
    int (*produce)(rd_kafka_topic_t *, int32_t, int, void *, size_t, const void *, size_t, void *);
    rd_kafka_resp_err_t (*last_error)(void);
    int (*poll)(rd_kafka_t *, int);
    rd_kafka_resp_err_t (*flush)(rd_kafka_t *, int);
    int (*outq_len)(rd_kafka_t *);
    rd_kafka_resp_err_t (*purge)(rd_kafka_t *, int);
    const char *(*err2str)(rd_kafka_resp_err_t);
    const char *(*err2name)(rd_kafka_resp_err_t);
    rd_kafka_resp_err_t (*fatal_error)(rd_kafka_t *, char *, size_t);
} rk;

static int loaded = 0;

/* ---- reports gathered without the GIL ---- */

typedef struct {
    PyObject *value;  /* held until the report: librdkafka reads it in place */
    PyObject *topic;
    long long rid;
    int spool;
    double started;
} Sent;

typedef struct {
    Sent *sent;
    rd_kafka_resp_err_t err;
} Report;

typedef struct {
    int err;
    char *reason;  /* malloc'd */
} ClientError;

typedef struct {
    pthread_mutex_t lock;
    Report *reports;
    size_t nreports, capreports;
    ClientError *errors;
    size_t nerrors, caperrors;
    int oom;  /* a report could not be kept: the producer must be replaced */
} Inbox;

static void
on_report(rd_kafka_t *h, const rd_kafka_message_t *m, void *opaque)
{
    (void)h;
    Inbox *in = opaque;
    pthread_mutex_lock(&in->lock);
    if (in->nreports == in->capreports) {
        size_t cap = in->capreports ? in->capreports * 2 : 1024;
        Report *grown = realloc(in->reports, cap * sizeof(Report));
        if (grown == NULL) {
            in->oom = 1;  /* the record stays spooled; a new producer sends it again */
            pthread_mutex_unlock(&in->lock);
            return;
        }
        in->reports = grown;
        in->capreports = cap;
    }
    in->reports[in->nreports].sent = m->_private;
    in->reports[in->nreports].err = m->err;
    in->nreports++;
    pthread_mutex_unlock(&in->lock);
}

static void
on_error(rd_kafka_t *h, int err, const char *reason, void *opaque)
{
    (void)h;
    Inbox *in = opaque;
    pthread_mutex_lock(&in->lock);
    if (in->nerrors < 1024) {  /* a flood of the same error: the first thousand tell it */
        if (in->nerrors == in->caperrors) {
            size_t cap = in->caperrors ? in->caperrors * 2 : 16;
            ClientError *grown = realloc(in->errors, cap * sizeof(ClientError));
            if (grown == NULL) {
                pthread_mutex_unlock(&in->lock);
                return;
            }
            in->errors = grown;
            in->caperrors = cap;
        }
        in->errors[in->nerrors].err = err;
        in->errors[in->nerrors].reason = strdup(reason ? reason : "");
        in->nerrors++;
    }
    pthread_mutex_unlock(&in->lock);
}

/* ---- the Producer type ---- */

typedef struct {
    PyObject_HEAD
    rd_kafka_t *rk;
    PyObject *topics;  /* str -> capsule of rd_kafka_topic_t* */
    Inbox *inbox;      /* freed only with the object: librdkafka may still call back until destroy */
    int busy;          /* calls running without the GIL: close() must not destroy under them */
} Producer;

static void
topic_capsule_free(PyObject *capsule)
{
    rd_kafka_topic_t *t = PyCapsule_GetPointer(capsule, "rd_kafka_topic_t");
    if (t != NULL)
        rk.topic_destroy(t);
}

static int
Producer_init(Producer *self, PyObject *args, PyObject *kwds)
{
    PyObject *config;
    static char *kwlist[] = {"config", NULL};
    char errstr[512];
    if (!loaded) {
        PyErr_SetString(PyExc_RuntimeError, "librdkafka not loaded: call load(path) first");
        return -1;
    }
    if (self->inbox != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Producer already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!:Producer", kwlist, &PyDict_Type, &config))
        return -1;
    self->inbox = calloc(1, sizeof(Inbox));
    if (self->inbox == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_init(&self->inbox->lock, NULL);
    self->topics = PyDict_New();
    if (self->topics == NULL)
        return -1;
    rd_kafka_conf_t *conf = rk.conf_new();
    PyObject *name, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(config, &pos, &name, &value)) {
        if (!PyUnicode_Check(name) || !PyUnicode_Check(value)) {
            rk.conf_destroy(conf);
            PyErr_SetString(PyExc_TypeError, "config names and values must be str");
            return -1;
        }
        const char *n = PyUnicode_AsUTF8(name), *v = PyUnicode_AsUTF8(value);
        if (n == NULL || v == NULL) {
            rk.conf_destroy(conf);
            return -1;
        }
        if (rk.conf_set(conf, n, v, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
            rk.conf_destroy(conf);
            PyErr_Format(PyExc_ValueError, "producer setting %s: %s", n, errstr);
            return -1;
        }
    }
    rk.conf_set_dr_msg_cb(conf, on_report);
    rk.conf_set_error_cb(conf, on_error);
    rk.conf_set_opaque(conf, self->inbox);
    self->rk = rk.new_(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (self->rk == NULL) {  /* conf is still ours on failure */
        rk.conf_destroy(conf);
        PyErr_Format(PyExc_ValueError, "producer: %s", errstr);
        return -1;
    }
    return 0;
}

static int
check_open(Producer *self)
{
    if (self->rk == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "producer is closed");
        return -1;
    }
    return 0;
}

static rd_kafka_topic_t *
topic_handle(Producer *self, PyObject *topic)
{
    PyObject *cap = PyDict_GetItemWithError(self->topics, topic);
    if (cap != NULL)
        return PyCapsule_GetPointer(cap, "rd_kafka_topic_t");
    if (PyErr_Occurred())
        return NULL;
    const char *name = PyUnicode_AsUTF8(topic);
    if (name == NULL)
        return NULL;
    rd_kafka_topic_t *t = rk.topic_new(self->rk, name, NULL);
    if (t == NULL) {
        PyErr_Format(PyExc_ValueError, "topic %R: %s", topic, rk.err2str(rk.last_error()));
        return NULL;
    }
    cap = PyCapsule_New(t, "rd_kafka_topic_t", topic_capsule_free);
    if (cap == NULL) {
        rk.topic_destroy(t);
        return NULL;
    }
    int rc = PyDict_SetItem(self->topics, topic, cap);
    Py_DECREF(cap);
    return rc < 0 ? NULL : t;
}

/* produce(spool, records, started) -> (queued, refused): hands records
 * (rid, topic, key, value) to librdkafka in order until its queue is full.
 * `queued` counts the records taken (the caller's next read starts after
 * them); `refused` lists (rid, error code, error name, reason) of those librdkafka
 * refused outright (too large, bad topic): taken, never delivered. */
static PyObject *
Producer_produce(Producer *self, PyObject *args)
{
    int spool;
    PyObject *records;
    double started;
    if (!PyArg_ParseTuple(args, "iO!d:produce", &spool, &PyList_Type, &records, &started))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    PyObject *refused = PyList_New(0);
    if (refused == NULL)
        return NULL;
    Py_ssize_t i, n = PyList_GET_SIZE(records);
    for (i = 0; i < n; i++) {
        PyObject *rec = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(rec) || PyTuple_GET_SIZE(rec) != 4 ||
            !PyLong_Check(PyTuple_GET_ITEM(rec, 0)) || !PyUnicode_Check(PyTuple_GET_ITEM(rec, 1)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(rec, 2)) || !PyBytes_Check(PyTuple_GET_ITEM(rec, 3))) {
            PyErr_SetString(PyExc_TypeError, "a record is (rid: int, topic: str, key: bytes, value: bytes)");
            goto error;
        }
        long long rid = PyLong_AsLongLong(PyTuple_GET_ITEM(rec, 0));
        if (rid == -1 && PyErr_Occurred())
            goto error;
        PyObject *topic = PyTuple_GET_ITEM(rec, 1);
        PyObject *key = PyTuple_GET_ITEM(rec, 2), *value = PyTuple_GET_ITEM(rec, 3);
        rd_kafka_topic_t *t = topic_handle(self, topic);
        if (t == NULL)
            goto error;
        Sent *s = PyMem_RawMalloc(sizeof(Sent));
        if (s == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        Py_INCREF(value);
        Py_INCREF(topic);
        s->value = value;
        s->topic = topic;
        s->rid = rid;
        s->spool = spool;
        s->started = started;
        /* No copy flag: the payload is the bytes object, held until its report. */
        if (rk.produce(t, RD_KAFKA_PARTITION_UA, 0, PyBytes_AS_STRING(value),
                       (size_t)PyBytes_GET_SIZE(value), PyBytes_AS_STRING(key),
                       (size_t)PyBytes_GET_SIZE(key), s) == -1) {
            rd_kafka_resp_err_t err = rk.last_error();
            Py_DECREF(value);
            Py_DECREF(topic);
            PyMem_RawFree(s);
            if (err == ERR_QUEUE_FULL)
                break;
            PyObject *item = Py_BuildValue("(Liss)", rid, err, rk.err2name(err), rk.err2str(err));
            if (item == NULL || PyList_Append(refused, item) < 0) {
                Py_XDECREF(item);
                goto error;
            }
            Py_DECREF(item);
        }
    }
    return Py_BuildValue("(nN)", i, refused);
error:
    Py_DECREF(refused);
    return NULL;
}

/* The reports gathered so far: (delivered [(spool, rid, started)], failed
 * [(spool, rid, topic, error code, error name, reason)], errors [(code,
 * name, reason)]). Takes the GIL-free inbox under its lock, then builds the
 * Python objects and releases the records' bytes. */
static PyObject *
take_reports(Producer *self)
{
    Inbox *in = self->inbox;
    pthread_mutex_lock(&in->lock);
    Report *reports = in->reports;
    size_t nreports = in->nreports;
    ClientError *errors = in->errors;
    size_t nerrors = in->nerrors;
    int oom = in->oom;
    in->reports = NULL;
    in->nreports = in->capreports = 0;
    in->errors = NULL;
    in->nerrors = in->caperrors = 0;
    in->oom = 0;
    pthread_mutex_unlock(&in->lock);

    PyObject *delivered = PyList_New(0), *failed = PyList_New(0), *errs = PyList_New(0);
    int ok = delivered != NULL && failed != NULL && errs != NULL;
    for (size_t k = 0; k < nreports; k++) {
        Sent *s = reports[k].sent;
        rd_kafka_resp_err_t err = reports[k].err;
        if (ok) {
            PyObject *item = err == 0
                ? Py_BuildValue("(iLd)", s->spool, s->rid, s->started)
                : Py_BuildValue("(iLOiss)", s->spool, s->rid, s->topic, err, rk.err2name(err),
                                rk.err2str(err));
            if (item == NULL || PyList_Append(err == 0 ? delivered : failed, item) < 0)
                ok = 0;
            Py_XDECREF(item);
        }
        Py_DECREF(s->value);  /* every report releases its record, even on error */
        Py_DECREF(s->topic);
        PyMem_RawFree(s);
    }
    free(reports);
    if (oom && ok) {  /* reported as a client error: the shipper replaces the producer */
        PyObject *item = Py_BuildValue("(iss)", -150, "_FATAL", "out of memory keeping delivery reports");
        ok = item != NULL && PyList_Append(errs, item) == 0;
        Py_XDECREF(item);
    }
    for (size_t k = 0; k < nerrors; k++) {
        if (ok) {
            PyObject *item = Py_BuildValue("(iss)", errors[k].err, rk.err2name(errors[k].err),
                                           errors[k].reason);
            ok = item != NULL && PyList_Append(errs, item) == 0;
            Py_XDECREF(item);
        }
        free(errors[k].reason);
    }
    free(errors);
    if (!ok) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        Py_XDECREF(delivered);
        Py_XDECREF(failed);
        Py_XDECREF(errs);
        return NULL;
    }
    return Py_BuildValue("(NNN)", delivered, failed, errs);
}

static int
timeout_ms(double timeout)
{
    if (!(timeout >= 0))  /* NaN too */
        return 0;
    return timeout > 3600.0 ? 3600000 : (int)(timeout * 1000.0);
}

/* poll(timeout) -> reports: serve librdkafka's callbacks for up to `timeout`
 * seconds (without the GIL), then take the reports. */
static PyObject *
Producer_poll(Producer *self, PyObject *args)
{
    double timeout = 0.0;
    if (!PyArg_ParseTuple(args, "|d:poll", &timeout))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    int ms = timeout_ms(timeout);
    rd_kafka_t *h = self->rk;
    self->busy++;
    Py_BEGIN_ALLOW_THREADS
    rk.poll(h, ms);
    Py_END_ALLOW_THREADS
    self->busy--;
    return take_reports(self);
}

/* flush(timeout) -> messages still undelivered; their reports wait for poll(). */
static PyObject *
Producer_flush(Producer *self, PyObject *args)
{
    double timeout = 0.0;
    if (!PyArg_ParseTuple(args, "d:flush", &timeout))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    int ms = timeout_ms(timeout), left;
    rd_kafka_t *h = self->rk;
    self->busy++;
    Py_BEGIN_ALLOW_THREADS
    rk.flush(h, ms);
    left = rk.outq_len(h);
    Py_END_ALLOW_THREADS
    self->busy--;
    return PyLong_FromLong(left);
}

static PyObject *
Producer_pending(Producer *self, PyObject *Py_UNUSED(ignored))
{
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromLong(rk.outq_len(self->rk));
}

/* fatal() -> (code, name, reason) of the producer's fatal error, or None. */
static PyObject *
Producer_fatal(Producer *self, PyObject *Py_UNUSED(ignored))
{
    char buf[512];
    if (check_open(self) < 0)
        return NULL;
    rd_kafka_resp_err_t err = rk.fatal_error(self->rk, buf, sizeof(buf));
    if (err == 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(iss)", err, rk.err2name(err), buf);
}

/* Purge what librdkafka holds (its reports, with a purge error, come with the
 * next poll) and destroy the client. Records still unreported after the
 * purge (none, unless librdkafka keeps one) are left held rather than freed
 * under it. */
static void
producer_close(Producer *self)
{
    if (self->rk == NULL)
        return;
    rd_kafka_t *h = self->rk;
    Py_BEGIN_ALLOW_THREADS
    rk.purge(h, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    for (int k = 0; k < 100 && rk.outq_len(h) > 0; k++)
        rk.poll(h, 10);
    Py_END_ALLOW_THREADS
    Py_CLEAR(self->topics);  /* topic handles go before their client */
    Py_BEGIN_ALLOW_THREADS
    rk.destroy(h);
    Py_END_ALLOW_THREADS
    self->rk = NULL;
}

/* close() -> the last reports (those of the purge among them). */
static PyObject *
Producer_close(Producer *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "producer busy in poll or flush in another thread");
        return NULL;
    }
    producer_close(self);
    if (self->inbox == NULL)
        return Py_BuildValue("([][][])");
    return take_reports(self);
}

static void
Producer_dealloc(Producer *self)
{
    producer_close(self);
    if (self->inbox != NULL) {
        PyObject *left = take_reports(self);  /* releases what is still held */
        if (left == NULL)
            PyErr_Clear();
        Py_XDECREF(left);
        pthread_mutex_destroy(&self->inbox->lock);
        free(self->inbox);
    }
    Py_XDECREF(self->topics);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Producer_methods[] = {
    {"produce", (PyCFunction)Producer_produce, METH_VARARGS, NULL},
    {"poll", (PyCFunction)Producer_poll, METH_VARARGS, NULL},
    {"flush", (PyCFunction)Producer_flush, METH_VARARGS, NULL},
    {"pending", (PyCFunction)Producer_pending, METH_NOARGS, NULL},
    {"fatal", (PyCFunction)Producer_fatal, METH_NOARGS, NULL},
    {"close", (PyCFunction)Producer_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ProducerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "agent._kafkacore.Producer",
    .tp_basicsize = sizeof(Producer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Producer_init,
    .tp_dealloc = (destructor)Producer_dealloc,
    .tp_methods = Producer_methods,
};

/* ---- loading ---- */

#define RESOLVE(field, name)                                               \
    do {                                                                   \
        *(void **)(&tmp.field) = dlsym(h, name);                           \
        if (tmp.field == NULL) {                                           \
            PyErr_Format(PyExc_ImportError, "%s has no %s", path, name);   \
            return NULL;                                                   \
        }                                                                  \
    } while (0)

/* load(path) -> librdkafka's version number: resolve the functions in the
 * librdkafka at `path`, which must already be loaded (RTLD_NOLOAD: the copy
 * confluent-kafka uses, never a second one). */
static PyObject *
load(PyObject *mod, PyObject *args)
{
    const char *path;
    (void)mod;
    if (!PyArg_ParseTuple(args, "s:load", &path))
        return NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD | RTLD_LOCAL);
    if (h == NULL) {
        PyErr_Format(PyExc_ImportError, "%s is not loaded: %s", path, dlerror());
        return NULL;
    }
    __typeof__(rk) tmp;
    RESOLVE(version, "rd_kafka_version");
    RESOLVE(conf_new, "rd_kafka_conf_new");
    RESOLVE(conf_destroy, "rd_kafka_conf_destroy");
    RESOLVE(conf_set, "rd_kafka_conf_set");
    RESOLVE(conf_set_dr_msg_cb, "rd_kafka_conf_set_dr_msg_cb");
    RESOLVE(conf_set_error_cb, "rd_kafka_conf_set_error_cb");
    RESOLVE(conf_set_opaque, "rd_kafka_conf_set_opaque");
    RESOLVE(new_, "rd_kafka_new");
    RESOLVE(destroy, "rd_kafka_destroy");
    RESOLVE(topic_new, "rd_kafka_topic_new");
    RESOLVE(topic_destroy, "rd_kafka_topic_destroy");
    RESOLVE(produce, "rd_kafka_produce");
    RESOLVE(last_error, "rd_kafka_last_error");
    RESOLVE(poll, "rd_kafka_poll");
    RESOLVE(flush, "rd_kafka_flush");
    RESOLVE(outq_len, "rd_kafka_outq_len");
    RESOLVE(purge, "rd_kafka_purge");
    RESOLVE(err2str, "rd_kafka_err2str");
    RESOLVE(err2name, "rd_kafka_err2name");
    RESOLVE(fatal_error, "rd_kafka_fatal_error");
    int version = tmp.version();
    if (version < 0x02000000) {  /* the message layout and purge flags above are 2.x's */
        PyErr_Format(PyExc_ImportError, "librdkafka 0x%08x is older than 2.0", version);
        return NULL;
    }
    rk = tmp;  /* the handle stays open: the functions live as long as the process */
    loaded = 1;
    return PyLong_FromLong(version);
}

static PyMethodDef module_methods[] = {
    {"load", load, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kafkacore",
    "The agent's produce path on confluent-kafka's librdkafka (agent/kafkacore.py).",
    -1, module_methods,
};

PyMODINIT_FUNC
PyInit__kafkacore(void)
{
    if (PyType_Ready(&ProducerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ProducerType);
    if (PyModule_AddObject(m, "Producer", (PyObject *)&ProducerType) < 0) {
        Py_DECREF(&ProducerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
