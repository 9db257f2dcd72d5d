/* The hot path as CPython methods: Streamer.log(key, value, epoch=None), a series handle's
 * log(value, epoch=None) and log_object's flat dict of scalars, each one call from the
 * interpreter into the put (iss_log_*_at) with no Python frame, no cffi argument conversion and
 * no release of the GIL around a call of a few hundred nanoseconds.
 *
 * Python owns policy. This code takes only the common case: a str key already interned (the
 * Streamer's key dict says its id), a float, int (int64), bool or short str value, an epoch that
 * is None or a float in range, positional arguments. Anything else, and every put that did not
 * simply succeed (wake the sender, check it, attach, full ring, a refused value), is handed to the
 * Python callables the Streamer gave, with the caller's arguments, so behaviour is the Python
 * path's exactly (tests/test_hotpath.py holds both paths to the same results).
 *
 * Stable ABI of 3.9 (one abi3 wheel serves 3.9..3.13), plus METH_FASTCALL: the same calling
 * convention since 3.7, part of the stable ABI from 3.10. Compiled into isstreamer._native (the
 * put's key table is that module's); iss_py_hotpath_install() publishes the module. The
 * interpreter's lock is held throughout: puts never block (a full ring returns a code). */
#define Py_LIMITED_API 0x03090000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>

#include "hotpath.h"
#include "isstreamer.h"

#ifndef METH_FASTCALL
#define METH_FASTCALL 0x0080
#endif

typedef PyObject *(*fastcall_kw)(PyObject *, PyObject *const *, Py_ssize_t, PyObject *);
#define AS_METH(f) ((PyCFunction)(void (*)(void))(f))

static PyObject *LoggerType; /* the types, made once per process (one interpreter) */
static PyObject *SeriesType;

/* ---- the logger: one per Streamer ---- */

typedef struct {
    PyObject_HEAD
    iss_producer *p;      /* the Streamer's producer (detached, attached or closed) */
    PyObject *owner;      /* the object owning *p (a cffi cdata), alive while p is */
    PyObject *keys;       /* dict: str key -> interned id, filled by the Python path */
    PyObject *slow;       /* callable(key, value, epoch): Streamer.log in Python */
    PyObject *after;      /* callable(rc, key, value, epoch): a put that needs attention */
    Py_ssize_t max_chars; /* a longer str value takes the slow path */
    Py_ssize_t max_names; /* log_dict: a prefix's name cache grows to this many keys */
    int enabled;          /* 1 while the Streamer's log() is this one (not debug, sync, closed) */
} Logger;

typedef struct {
    PyObject_HEAD
    Logger *log;
    PyObject *key;  /* the str key */
    PyObject *slow; /* callable(value, epoch=None): the handle's full path */
    long kid;       /* the key's interned id once known, else -1 */
} Series;

/* A logger the garbage collector cleared (a cycle being freed) may still be called from a
 * finalizer: an error then, never a NULL dereference. */
static int released(Logger *h)
{
    if (h != NULL && h->keys != NULL && h->slow != NULL && h->after != NULL)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "isstreamer: this Streamer's hot path was released");
    return 1;
}

/* The interned id of a str key the Python path has seen; 0 when there is none yet. */
static int key_id(Logger *h, PyObject *key, uint32_t *out)
{
    if (!PyUnicode_CheckExact(key))
        return 0;
    PyObject *id = PyDict_GetItemWithError(h->keys, key); /* borrowed; str: cannot raise */
    if (id == NULL) {
        PyErr_Clear();
        return 0;
    }
    long v = PyLong_AsLong(id);
    if (v < 0 || v > (long)INT32_MAX) {
        PyErr_Clear();
        return 0;
    }
    *out = (uint32_t)v;
    return 1;
}

/* Put one value of a common type: 1 with *rc set, 0 when the value takes the slow path. */
static int put_value(Logger *h, uint32_t kid, PyObject *value, double ep, int *rc)
{
    PyTypeObject *t = Py_TYPE(value);
    if (h->p == NULL)
        return 0;
    if (t == &PyFloat_Type) {
        *rc = iss_log_f64_at(h->p, kid, PyFloat_AsDouble(value), ep);
        return 1;
    }
    if (t == &PyLong_Type) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        *rc = iss_log_i64_at(h->p, kid, (int64_t)v, ep);
        return 1;
    }
    if (t == &PyBool_Type) {
        *rc = iss_log_bool_at(h->p, kid, value == Py_True, ep);
        return 1;
    }
    if (t == &PyUnicode_Type) {
        if (PyUnicode_GetLength(value) > h->max_chars)
            return 0;
        PyObject *b = PyUnicode_AsUTF8String(value);
        char *s = NULL;
        Py_ssize_t n = 0;
        if (b == NULL || PyBytes_AsStringAndSize(b, &s, &n) < 0) {
            Py_XDECREF(b);
            PyErr_Clear(); /* lone surrogates: the Python path converts and counts */
            return 0;
        }
        *rc = iss_log_str_at(h->p, kid, s, (size_t)n, ep);
        Py_DECREF(b);
        return 1;
    }
    return 0;
}

/* A put done: nothing more, or the Python follow-up (wake, check, slow path). */
static PyObject *finish(Logger *h, int rc, PyObject *key, PyObject *value, PyObject *epoch)
{
    if (rc == ISS_OK || rc == ISS_DROPPED) /* dropped: counted by the put itself */
        Py_RETURN_NONE;
    PyObject *code = PyLong_FromLong(rc);
    if (code == NULL)
        return NULL;
    PyObject *r = PyObject_CallFunctionObjArgs(h->after, code, key, value, epoch, NULL);
    Py_DECREF(code);
    return r;
}

/* log(key, value, epoch): epoch NULL is None. */
static PyObject *log_one(Logger *h, PyObject *key, PyObject *value, PyObject *epoch)
{
    double ep = NAN; /* NaN: the put reads the clock */
    uint32_t kid = 0;
    int rc = 0;
    if (epoch == NULL)
        epoch = Py_None;
    if (epoch != Py_None) {
        if (Py_TYPE(epoch) != &PyFloat_Type)
            goto slow;
        ep = PyFloat_AsDouble(epoch);
        if (!(ep > 0.0 && ep < 1e11))
            goto slow;
    }
    if (key_id(h, key, &kid) && put_value(h, kid, value, ep, &rc))
        return finish(h, rc, key, value, epoch);
slow:
    return PyObject_CallFunctionObjArgs(h->slow, key, value, epoch, NULL);
}

/* fn(*args, **kwargs) from a vectorcall's arguments (the rare path: keywords, a wrong count). */
static PyObject *call_with(PyObject *fn, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_Size(kwnames) : 0;
    PyObject *t = PyTuple_New(nargs), *d = NULL, *r = NULL;
    if (t == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SetItem(t, i, args[i]); /* steals */
    }
    if (nkw > 0) {
        d = PyDict_New();
        if (d == NULL)
            goto done;
        for (Py_ssize_t i = 0; i < nkw; i++)
            if (PyDict_SetItem(d, PyTuple_GetItem(kwnames, i), args[nargs + i]) < 0)
                goto done;
    }
    r = PyObject_Call(fn, t, d);
done:
    Py_DECREF(t);
    Py_XDECREF(d);
    return r;
}

static PyObject *Logger_log(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Logger *h = (Logger *)self;
    if (released(h))
        return NULL;
    if (kwnames == NULL && (nargs == 2 || nargs == 3))
        return log_one(h, args[0], args[1], nargs == 3 ? args[2] : NULL);
    return call_with(h->slow, args, nargs, kwnames);
}

static int is_scalar(PyObject *v)
{
    PyTypeObject *t = Py_TYPE(v);
    return t == &PyFloat_Type || t == &PyLong_Type || t == &PyUnicode_Type || t == &PyBool_Type;
}

/* log_dict(obj, names, prefix, epoch) -> bool: a dict of str keys and scalar values logged, each
 * under prefix + key (names caches them), with one epoch; False (nothing logged) for anything
 * else, or while the Streamer's log() is another one: the Python path does it then. */
static PyObject *Logger_log_dict(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Logger *h = (Logger *)self;
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "log_dict(obj, names, prefix, epoch)");
        return NULL;
    }
    PyObject *obj = args[0], *names = args[1], *prefix = args[2], *epoch = args[3];
    if (released(h))
        return NULL;
    if (!h->enabled || !PyDict_CheckExact(obj) || !PyDict_CheckExact(names) || !PyUnicode_CheckExact(prefix))
        Py_RETURN_FALSE;
    while (PyDict_Next(obj, &pos, &k, &v))
        if (!PyUnicode_CheckExact(k) || !is_scalar(v))
            Py_RETURN_FALSE;
    pos = 0;
    while (PyDict_Next(obj, &pos, &k, &v)) {
        Py_INCREF(k); /* held across the calls below, whatever they do to obj */
        Py_INCREF(v);
        PyObject *name = PyDict_GetItemWithError(names, k), *r = NULL;
        if (name != NULL) {
            Py_INCREF(name);
        } else if (!PyErr_Occurred() && (name = PyUnicode_Concat(prefix, k)) != NULL) {
            if (PyDict_Size(names) < h->max_names && PyDict_SetItem(names, k, name) < 0)
                Py_CLEAR(name);
        }
        if (name != NULL)
            r = log_one(h, name, v, epoch);
        Py_XDECREF(name);
        Py_DECREF(k);
        Py_DECREF(v);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_TRUE;
}

static PyObject *Logger_set_producer(PyObject *self, PyObject *args)
{
    Logger *h = (Logger *)self;
    PyObject *owner, *address;
    if (!PyArg_ParseTuple(args, "OO", &owner, &address))
        return NULL;
    void *p = PyLong_AsVoidPtr(address);
    if (p == NULL && PyErr_Occurred())
        return NULL;
    PyObject *old = h->owner;
    Py_INCREF(owner);
    h->owner = owner;
    h->p = (iss_producer *)p;
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static PyObject *Logger_set_enabled(PyObject *self, PyObject *flag)
{
    int on = PyObject_IsTrue(flag);
    if (on < 0)
        return NULL;
    ((Logger *)self)->enabled = on;
    Py_RETURN_NONE;
}

static PyObject *Logger_series(PyObject *self, PyObject *args)
{
    PyObject *key, *slow;
    if (!PyArg_ParseTuple(args, "UO", &key, &slow))
        return NULL;
    Series *s = (Series *)PyType_GenericAlloc((PyTypeObject *)SeriesType, 0);
    if (s == NULL)
        return NULL;
    Py_INCREF(self);
    s->log = (Logger *)self;
    Py_INCREF(key);
    s->key = key;
    Py_INCREF(slow);
    s->slow = slow;
    s->kid = -1;
    return (PyObject *)s;
}

static int Logger_traverse(PyObject *self, visitproc visit, void *arg)
{
    Logger *h = (Logger *)self;
    Py_VISIT(h->owner);
    Py_VISIT(h->keys);
    Py_VISIT(h->slow);
    Py_VISIT(h->after);
    Py_VISIT((PyObject *)Py_TYPE(self));
    return 0;
}

static int Logger_clear(PyObject *self)
{
    Logger *h = (Logger *)self;
    h->p = NULL;
    Py_CLEAR(h->owner);
    Py_CLEAR(h->keys);
    Py_CLEAR(h->slow);
    Py_CLEAR(h->after);
    return 0;
}

static void dealloc(PyObject *self, inquiry clear)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    clear(self);
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free(self);
    Py_DECREF(tp); /* heap types: each instance holds its type */
}

static void Logger_dealloc(PyObject *self)
{
    dealloc(self, Logger_clear);
}

static PyObject *no_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)type;
    (void)args;
    (void)kwds;
    PyErr_SetString(PyExc_TypeError, "isstreamer._hotpath objects are made by the Streamer");
    return NULL;
}

static PyMethodDef Logger_methods[] = {
    {"log", AS_METH(Logger_log), METH_FASTCALL | METH_KEYWORDS,
     "log($self, key, value, epoch=None)\n--\n\n"
     "Log one event: key (str), value (str, bool or number), optional epoch seconds."},
    {"log_dict", AS_METH(Logger_log_dict), METH_FASTCALL,
     "log_dict(obj, names, prefix, epoch) -> bool: a flat dict of scalars logged, or False."},
    {"set_producer", Logger_set_producer, METH_VARARGS,
     "set_producer(owner, address): the producer the puts use, kept alive by owner."},
    {"set_enabled", Logger_set_enabled, METH_O,
     "set_enabled(flag): whether the Streamer's log() is this one (series and log_dict check)."},
    {"series", Logger_series, METH_VARARGS, "series(key, slow): a handle whose log(value) puts under key."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Logger_slots[] = {
    {Py_tp_doc, (void *)"The C hot path of one Streamer (isstreamer.streamer)."},
    {Py_tp_new, (void *)no_new},
    {Py_tp_dealloc, (void *)Logger_dealloc},
    {Py_tp_traverse, (void *)Logger_traverse},
    {Py_tp_clear, (void *)Logger_clear},
    {Py_tp_methods, Logger_methods},
    {0, NULL},
};

static PyType_Spec Logger_spec = {
    "isstreamer._hotpath.Logger", sizeof(Logger), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, Logger_slots,
};

/* ---- the series handle: one key, bound ---- */

static PyObject *Series_log(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Series *s = (Series *)self;
    Logger *h = s->log;
    if (s->slow == NULL || released(h))
        return NULL;
    if (kwnames == NULL && nargs == 1 && h->enabled) {
        int rc = 0;
        if (s->kid < 0) {
            uint32_t id;
            if (key_id(h, s->key, &id))
                s->kid = (long)id;
        }
        if (s->kid >= 0 && put_value(h, (uint32_t)s->kid, args[0], NAN, &rc))
            return finish(h, rc, s->key, args[0], Py_None);
    }
    return call_with(s->slow, args, nargs, kwnames);
}

static int Series_traverse(PyObject *self, visitproc visit, void *arg)
{
    Series *s = (Series *)self;
    Py_VISIT((PyObject *)s->log);
    Py_VISIT(s->key);
    Py_VISIT(s->slow);
    Py_VISIT((PyObject *)Py_TYPE(self));
    return 0;
}

static int Series_clear(PyObject *self)
{
    Series *s = (Series *)self;
    Logger *h = s->log;
    s->log = NULL;
    Py_XDECREF((PyObject *)h);
    Py_CLEAR(s->key);
    Py_CLEAR(s->slow);
    return 0;
}

static void Series_dealloc(PyObject *self)
{
    dealloc(self, Series_clear);
}

static PyMethodDef Series_methods[] = {
    {"log", AS_METH(Series_log), METH_FASTCALL | METH_KEYWORDS,
     "log($self, value, epoch=None)\n--\n\nLog one event under the handle's key: Streamer.log(key, value, epoch)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Series_slots[] = {
    {Py_tp_doc, (void *)"A series handle's C hot path (Streamer.series)."},
    {Py_tp_new, (void *)no_new},
    {Py_tp_dealloc, (void *)Series_dealloc},
    {Py_tp_traverse, (void *)Series_traverse},
    {Py_tp_clear, (void *)Series_clear},
    {Py_tp_methods, Series_methods},
    {0, NULL},
};

static PyType_Spec Series_spec = {
    "isstreamer._hotpath.Series", sizeof(Series), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, Series_slots,
};

/* ---- the module ---- */

static PyObject *make_logger(PyObject *module, PyObject *args)
{
    PyObject *keys, *slow, *after;
    Py_ssize_t max_chars, max_names;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!OOnn", &PyDict_Type, &keys, &slow, &after, &max_chars, &max_names))
        return NULL;
    Logger *h = (Logger *)PyType_GenericAlloc((PyTypeObject *)LoggerType, 0);
    if (h == NULL)
        return NULL;
    Py_INCREF(keys);
    h->keys = keys;
    Py_INCREF(slow);
    h->slow = slow;
    Py_INCREF(after);
    h->after = after;
    h->max_chars = max_chars;
    h->max_names = max_names;
    return (PyObject *)h;
}

static PyMethodDef module_methods[] = {
    {"logger", make_logger, METH_VARARGS,
     "logger(keys, slow, after, max_chars, max_names): the hot path of one Streamer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT, "isstreamer._hotpath", "The C hot path of isstreamer.Streamer (csrc/py/hotpath.c).",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

int iss_py_hotpath_install(void)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *mods = PyImport_GetModuleDict(); /* borrowed */
    PyObject *m = NULL;
    int rc = -1;
    if (mods == NULL)
        goto out;
    if (PyDict_GetItemString(mods, hotpath_module.m_name) != NULL) {
        rc = 0;
        goto out;
    }
    if (LoggerType == NULL && (LoggerType = PyType_FromSpec(&Logger_spec)) == NULL)
        goto out;
    if (SeriesType == NULL && (SeriesType = PyType_FromSpec(&Series_spec)) == NULL)
        goto out;
    m = PyModule_Create(&hotpath_module);
    if (m == NULL)
        goto out;
    Py_INCREF(LoggerType);
    if (PyModule_AddObject(m, "Logger", LoggerType) < 0) {
        Py_DECREF(LoggerType);
        goto out;
    }
    Py_INCREF(SeriesType);
    if (PyModule_AddObject(m, "Series", SeriesType) < 0) {
        Py_DECREF(SeriesType);
        goto out;
    }
    if (PyDict_SetItemString(mods, hotpath_module.m_name, m) < 0)
        goto out;
    rc = 0;
out:
    if (rc < 0)
        PyErr_Clear(); /* the caller keeps the Python hot path */
    Py_XDECREF(m);
    PyGILState_Release(gil);
    return rc;
}
