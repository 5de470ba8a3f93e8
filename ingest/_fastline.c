/* The plain telemetry batch -> InfluxDB line protocol, in one C pass (optional
 * accelerator of ingest.points.transcode_plain + urbansense.codec.decode_plain_batch).
 *
 * Worked example: the payload
 *   {"v":1,"gw":"pd-gw-01","district":"pudong","seq":7,"sent":1764190000123,
 *    "samples":[{"dev":"wp-0007","m":"water","t":1764190000000,"f":{"pressure_mpa":0.312,"on":true}}]}
 * gives ("pd-gw-01", "pudong", 7,
 *   "water,device=wp-0007,district=pudong,gateway=pd-gw-01 pressure_mpa=0.312,on=true 1764190000000", 1).
 *
 * It takes only a strict subset of what the Python plain path takes, and returns None
 * for everything else, which then goes the Python way (same points, or the exact
 * refusals). Accepted, and nothing more:
 *   - the envelope: exactly the keys v (the token 1), gw, district (identifiers), seq
 *     (>= 0), sent (>= 1), samples (a list), each once, in any order;
 *   - a sample: exactly the keys m (a measurement configure() named), dev (an identifier), f, t (>= 1,
 *     inside [earliest, latest]), and optionally q "good", err null, urgent false;
 *   - every field the measurement's family declares (configure()'s field_types, from the
 *     domain registry) of its declared type: a float field a float, an integer field an
 *     integer, a boolean field true or false, a string field a string. An integer in a
 *     float field is None too: the Python path converts it, or refuses what it cannot;
 *     and in a strict family (configure()'s strict) no field it does not declare;
 *   - at most max_samples samples (configure());
 *   - f: 1 to 64 distinct metric names, none of them reserved (configure() hands over
 *     urbansense.identifiers.RESERVED_FIELDS: the tags, time and the quality fields), whose
 *     values are
 *       - true or false;
 *       - a JSON number written with a fraction or an exponent, of at most 40
 *         characters, zero or between 1e-307 and 1e308 in magnitude (no overflow, no
 *         subnormal), with an exponent of at most 400: a float, copied as written;
 *       - a JSON integer of at most 18 digits, other than -0: an integer, written with
 *         InfluxDB's `i` suffix (3 -> 3i), as the full path does;
 *       - a string of at most 1024 characters of [a-z0-9_-] (an enumerated state such as
 *         "up" or "unknown-7"): a string field, copied with its quotes (nothing in it
 *         needs escaping in line protocol);
 *   - integers (seq, sent, t) of at most 18 digits (they fit in 64 bits);
 *   - strings of [a-z0-9_-] only: no escape, no other character (names with anything
 *     else are refused or escaped by the Python path);
 *   - JSON white space between tokens; nothing after the batch.
 * A float is copied as written: InfluxDB (Go's strconv.ParseFloat) reads it as the
 * same double the Python path re-spells it from (e.g. 1E+16 and 1e16).
 *
 * Until configure() has been called, every batch is None (the Python way).
 *
 * All of it runs with the GIL held (a 50-sample batch takes a few microseconds). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#ifndef FASTLINE_SOURCE_SHA256
#define FASTLINE_SOURCE_SHA256 "unknown"
#endif

#define MAX_FIELDS 64 /* urbansense.codec.MAX_FIELDS (ingest.points checks they agree) */
#define MAX_NAME 63
#define MAX_NAMES 32 /* reserved field names, measurements */
#define MAX_TYPED 64 /* declared fields of one measurement */
#define MAX_FLOAT_TOKEN 40
#define MAX_INT_DIGITS 18
#define MAX_STRING_FIELD 1024 /* urbansense.codec.MAX_STRING_FIELD */

enum { OK = 0, NOT_PLAIN = -1, NO_MEMORY = -2 };

/* character classes: 1 = [a-z], 2 = [0-9], 4 = '-', 8 = '_' */
static unsigned char cls[256];

typedef struct {
    const char *start;
    Py_ssize_t len;
} Span;

typedef struct {
    Span key;
    Span value;      /* as written; a string with its quotes */
    char is_integer; /* written with the `i` suffix */
} Field;

typedef struct {
    const char *p;
    const char *end;
    long long earliest;
    long long latest;
    /* ",district=<district>,gateway=<gw> " */
    char tags[2 * MAX_NAME + 32];
    Py_ssize_t tags_len;
    char *out;
    Py_ssize_t out_len;
    Py_ssize_t out_cap;
    Py_ssize_t points;
    Field fields[MAX_FIELDS];
} Ctx;

static inline void skip_ws(Ctx *c)
{
    const char *p = c->p, *end = c->end;
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    c->p = p;
}

/* the next non-space byte, consumed when it is `want` */
static inline int expect(Ctx *c, char want)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == want) {
        c->p++;
        return 1;
    }
    return 0;
}

static inline int literal(Ctx *c, const char *word, Py_ssize_t n)
{
    if (c->end - c->p >= n && memcmp(c->p, word, (size_t)n) == 0) {
        c->p += n;
        return 1;
    }
    return 0;
}

/* a string of [a-z0-9_-] only, without its quotes */
static int simple_string(Ctx *c, Span *s)
{
    skip_ws(c);
    const char *p = c->p, *end = c->end;
    if (p >= end || *p != '"')
        return NOT_PLAIN;
    const char *start = ++p;
    while (p < end && cls[(unsigned char)*p])
        p++;
    if (p >= end || *p != '"')
        return NOT_PLAIN; /* an escape, another character, or the end */
    s->start = start;
    s->len = p - start;
    c->p = p + 1;
    return OK;
}

static inline int span_is(const Span *s, const char *word)
{
    size_t n = strlen(word);
    return (size_t)s->len == n && memcmp(s->start, word, n) == 0;
}

/* 1 to MAX_NAME characters, the first of the classes `first`, the others of `rest` */
static int is_name(const Span *s, unsigned char first, unsigned char rest)
{
    if (s->len < 1 || s->len > MAX_NAME || !(cls[(unsigned char)s->start[0]] & first))
        return 0;
    for (Py_ssize_t i = 1; i < s->len; i++)
        if (!(cls[(unsigned char)s->start[i]] & rest))
            return 0;
    return 1;
}

/* identifiers: ^[a-z0-9][a-z0-9-]{0,62}$ */
static int is_identifier(const Span *s)
{
    return is_name(s, 1 | 2, 1 | 2 | 4);
}

/* a set of names handed over by configure() */
typedef struct {
    char name[MAX_NAMES][MAX_NAME + 1];
    size_t len[MAX_NAMES];
    int count;
} NameSet;

static int in_set(const NameSet *set, const Span *s)
{
    for (int i = 0; i < set->count; i++)
        if ((size_t)s->len == set->len[i] && memcmp(s->start, set->name[i], set->len[i]) == 0)
            return 1;
    return 0;
}

/* the declared fields of one measurement and their kinds: 'f' float, 'i' integer,
 * 'b' boolean, 's' string */
typedef struct {
    char name[MAX_TYPED][MAX_NAME + 1];
    size_t len[MAX_TYPED];
    char kind[MAX_TYPED];
    int count;
    int strict; /* no field but these (the family's undeclared_fields: refuse) */
} TypedSet;

/* set by configure(): the reserved field names, the measurements (with their declared
 * fields, in the same order), the largest batch */
static NameSet reserved, measurements;
static TypedSet typed[MAX_NAMES];
static int configured = 0; /* until then every batch goes the Python way */
static Py_ssize_t max_samples = 0;

/* metric names: ^[a-z][a-z0-9_]{0,62}$, and not reserved */
static int is_plain_field(const Span *s)
{
    return is_name(s, 1, 1 | 2 | 8) && !in_set(&reserved, s);
}

/* the measurement's index in configure()'s tuple, or -1 */
static int measurement_index(const Span *s)
{
    for (int i = 0; i < measurements.count; i++)
        if ((size_t)s->len == measurements.len[i] && memcmp(s->start, measurements.name[i], measurements.len[i]) == 0)
            return i;
    return -1;
}

static char value_kind(const Field *f)
{
    if (f->is_integer)
        return 'i';
    switch (f->value.start[0]) {
    case 't':
    case 'f':
        return 'b';
    case '"':
        return 's';
    default:
        return 'f';
    }
}

/* every field the measurement declares has a value of its declared kind, and a strict
 * measurement has no other field */
static int declared_kinds(const Ctx *c, int measurement, int nfields)
{
    const TypedSet *ts = &typed[measurement];
    for (int i = 0; (ts->count || ts->strict) && i < nfields; i++) {
        const Span *key = &c->fields[i].key;
        int j = 0;
        for (; j < ts->count; j++) {
            if ((size_t)key->len == ts->len[j] && memcmp(key->start, ts->name[j], ts->len[j]) == 0) {
                if (ts->kind[j] != value_kind(&c->fields[i]))
                    return 0;
                break;
            }
        }
        if (j == ts->count && ts->strict)
            return 0;
    }
    return 1;
}

/* a JSON integer >= 0 of at most 18 digits (no sign, no fraction, no exponent) */
static int small_uint(Ctx *c, long long *value, Span *text)
{
    skip_ws(c);
    const char *p = c->p, *end = c->end, *start = p;
    long long v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (p - start == MAX_INT_DIGITS)
            return NOT_PLAIN;
        v = v * 10 + (*p - '0');
        p++;
    }
    if (p == start || (*start == '0' && p - start > 1))
        return NOT_PLAIN;
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E'))
        return NOT_PLAIN; /* a float where an integer belongs */
    *value = v;
    if (text) {
        text->start = start;
        text->len = p - start;
    }
    c->p = p;
    return OK;
}

/* A field value (see the top of the file): true, false, a JSON float token (fraction or
 * exponent) whose value is zero or a normal double, a JSON integer that fits in 64 bits
 * (`is_integer`), or a string of [a-z0-9_-]. */
static int field_value(Ctx *c, Span *value, char *is_integer)
{
    skip_ws(c);
    const char *p = c->p, *end = c->end, *start = p;
    *is_integer = 0;
    if (literal(c, "true", 4) || literal(c, "false", 5)) {
        value->start = start;
        value->len = c->p - start;
        return OK;
    }
    if (p < end && *p == '"') {
        Span text;
        if (simple_string(c, &text) != OK || text.len > MAX_STRING_FIELD)
            return NOT_PLAIN;
        value->start = start; /* with its quotes */
        value->len = c->p - start;
        return OK;
    }
    int minus = p < end && *p == '-';
    if (minus)
        p++;
    /* integer part: 0 | [1-9][0-9]* */
    const char *int_start = p;
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    Py_ssize_t int_digits = p - int_start;
    if (int_digits == 0 || (*int_start == '0' && int_digits > 1))
        return NOT_PLAIN;
    /* decimal exponent of the leading significant digit; `nonzero` when there is one */
    int nonzero = *int_start != '0';
    long long lead = nonzero ? (long long)int_digits - 1 : 0;
    int is_float = 0;
    if (p < end && *p == '.') {
        is_float = 1;
        const char *frac = ++p;
        while (p < end && *p >= '0' && *p <= '9') {
            if (!nonzero && *p != '0') {
                nonzero = 1;
                lead = -(long long)(p - frac) - 1;
            }
            p++;
        }
        if (p == frac)
            return NOT_PLAIN;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_float = 1;
        p++;
        int negative = 0;
        if (p < end && (*p == '+' || *p == '-'))
            negative = *p++ == '-';
        const char *digits = p;
        long long exponent = 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (exponent < 100000)
                exponent = exponent * 10 + (*p - '0');
            p++;
        }
        if (p == digits || exponent > 400)
            return NOT_PLAIN;
        lead += negative ? -exponent : exponent;
    }
    if (!is_float) {
        /* an integer: at most 18 digits fit in 64 bits; -0 is 0i on the full path */
        if (int_digits > MAX_INT_DIGITS || (minus && !nonzero))
            return NOT_PLAIN;
        *is_integer = 1;
        value->start = start;
        value->len = p - start;
        c->p = p;
        return OK;
    }
    if (p - start > MAX_FLOAT_TOKEN)
        return NOT_PLAIN;
    if (nonzero && (lead < -307 || lead > 307))
        return NOT_PLAIN; /* 1e-307 <= |x| < 1e308: a normal double, never infinity */
    value->start = start;
    value->len = p - start;
    c->p = p;
    return OK;
}

static int key_colon(Ctx *c, Span *key)
{
    if (simple_string(c, key) != OK || !expect(c, ':'))
        return NOT_PLAIN;
    return OK;
}

/* {"name": value, ...}: 1 to MAX_FIELDS distinct plain fields into c->fields */
static int fields_object(Ctx *c, int *count)
{
    int n = 0;
    if (!expect(c, '{'))
        return NOT_PLAIN;
    do {
        if (n == MAX_FIELDS)
            return NOT_PLAIN;
        Field *f = &c->fields[n];
        if (key_colon(c, &f->key) != OK || !is_plain_field(&f->key))
            return NOT_PLAIN;
        for (int i = 0; i < n; i++)
            if (c->fields[i].key.len == f->key.len && memcmp(c->fields[i].key.start, f->key.start, (size_t)f->key.len) == 0)
                return NOT_PLAIN; /* a repeated name: the full path says which value counts */
        if (field_value(c, &f->value, &f->is_integer) != OK)
            return NOT_PLAIN;
        n++;
    } while (expect(c, ','));
    if (!expect(c, '}'))
        return NOT_PLAIN;
    *count = n;
    return OK;
}

static int reserve(Ctx *c, Py_ssize_t more)
{
    if (c->out_len + more <= c->out_cap)
        return OK;
    Py_ssize_t cap = c->out_cap * 2;
    if (cap < c->out_len + more)
        cap = c->out_len + more;
    char *grown = PyMem_Realloc(c->out, (size_t)cap);
    if (!grown)
        return NO_MEMORY;
    c->out = grown;
    c->out_cap = cap;
    return OK;
}

static inline void put(Ctx *c, const char *s, Py_ssize_t n)
{
    memcpy(c->out + c->out_len, s, (size_t)n);
    c->out_len += n;
}

enum { K_M = 1, K_DEV = 2, K_F = 4, K_T = 8, K_Q = 16, K_ERR = 32, K_URGENT = 64 };

/* one sample; its line is appended to the output when `emit` */
static int sample(Ctx *c, int emit)
{
    Span m = {0}, dev = {0}, t_text = {0}, key;
    long long t = 0;
    int seen = 0, nfields = 0, bit, rc;
    if (!expect(c, '{'))
        return NOT_PLAIN;
    do {
        if (key_colon(c, &key) != OK)
            return NOT_PLAIN;
        if (span_is(&key, "m")) {
            bit = K_M;
            rc = simple_string(c, &m);
        } else if (span_is(&key, "dev")) {
            bit = K_DEV;
            rc = simple_string(c, &dev);
        } else if (span_is(&key, "f")) {
            bit = K_F;
            rc = fields_object(c, &nfields);
        } else if (span_is(&key, "t")) {
            bit = K_T;
            rc = small_uint(c, &t, &t_text);
        } else if (span_is(&key, "q")) {
            Span q;
            bit = K_Q;
            rc = simple_string(c, &q) == OK && span_is(&q, "good") ? OK : NOT_PLAIN;
        } else if (span_is(&key, "err")) {
            bit = K_ERR;
            skip_ws(c);
            rc = literal(c, "null", 4) ? OK : NOT_PLAIN;
        } else if (span_is(&key, "urgent")) {
            bit = K_URGENT;
            skip_ws(c);
            rc = literal(c, "false", 5) ? OK : NOT_PLAIN;
        } else {
            return NOT_PLAIN;
        }
        if (rc != OK || (seen & bit))
            return NOT_PLAIN;
        seen |= bit;
    } while (expect(c, ','));
    if (!expect(c, '}'))
        return NOT_PLAIN;
    if ((seen & (K_M | K_DEV | K_F | K_T)) != (K_M | K_DEV | K_F | K_T))
        return NOT_PLAIN;
    int mi = measurement_index(&m);
    if (mi < 0 || !is_identifier(&dev) || t < 1 || t < c->earliest || t > c->latest)
        return NOT_PLAIN;
    if (!declared_kinds(c, mi, nfields))
        return NOT_PLAIN; /* the Python path converts (an integer into a float field) or refuses */
    if (!emit)
        return OK;
    /* m ",device=" dev tags k=v[,k=v] " " t "\n" */
    Py_ssize_t need = m.len + 8 + dev.len + c->tags_len + 1 + t_text.len + 1;
    for (int i = 0; i < nfields; i++)
        need += c->fields[i].key.len + c->fields[i].value.len + 3; /* '=', ',' or ' ', 'i' */
    if (reserve(c, need) != OK)
        return NO_MEMORY;
    if (c->points)
        put(c, "\n", 1);
    put(c, m.start, m.len);
    put(c, ",device=", 8);
    put(c, dev.start, dev.len);
    put(c, c->tags, c->tags_len);
    for (int i = 0; i < nfields; i++) {
        if (i)
            put(c, ",", 1);
        put(c, c->fields[i].key.start, c->fields[i].key.len);
        put(c, "=", 1);
        put(c, c->fields[i].value.start, c->fields[i].value.len);
        if (c->fields[i].is_integer)
            put(c, "i", 1);
    }
    put(c, " ", 1);
    put(c, t_text.start, t_text.len);
    c->points++;
    return OK;
}

static int samples_list(Ctx *c, int emit)
{
    int rc;
    Py_ssize_t n = 0;
    if (!expect(c, '['))
        return NOT_PLAIN;
    if (expect(c, ']'))
        return OK;
    do {
        if (++n > max_samples)
            return NOT_PLAIN;
        rc = sample(c, emit);
        if (rc != OK)
            return rc;
    } while (expect(c, ','));
    return expect(c, ']') ? OK : NOT_PLAIN;
}

enum { E_V = 1, E_GW = 2, E_DISTRICT = 4, E_SEQ = 8, E_SENT = 16, E_SAMPLES = 32 };

static void set_tags(Ctx *c, const Span *gw, const Span *district)
{
    c->tags_len = PyOS_snprintf(c->tags, sizeof c->tags, ",district=%.*s,gateway=%.*s ", (int)district->len,
                                district->start, (int)gw->len, gw->start);
}

static int batch(Ctx *c, Span *gw, Span *district, long long *seq, long long *sent)
{
    Span key;
    long long number;
    const char *deferred = NULL; /* samples seen before gw and district: emitted after */
    int seen = 0, bit, rc;
    if (!expect(c, '{'))
        return NOT_PLAIN;
    do {
        if (key_colon(c, &key) != OK)
            return NOT_PLAIN;
        if (span_is(&key, "v")) {
            bit = E_V;
            rc = small_uint(c, &number, NULL) == OK && number == 1 ? OK : NOT_PLAIN;
        } else if (span_is(&key, "gw")) {
            bit = E_GW;
            rc = simple_string(c, gw) == OK && is_identifier(gw) ? OK : NOT_PLAIN;
        } else if (span_is(&key, "district")) {
            bit = E_DISTRICT;
            rc = simple_string(c, district) == OK && is_identifier(district) ? OK : NOT_PLAIN;
        } else if (span_is(&key, "seq")) {
            bit = E_SEQ;
            rc = small_uint(c, seq, NULL);
        } else if (span_is(&key, "sent")) {
            bit = E_SENT;
            rc = small_uint(c, sent, NULL) == OK && *sent >= 1 ? OK : NOT_PLAIN;
        } else if (span_is(&key, "samples")) {
            bit = E_SAMPLES;
            if (seen & E_SAMPLES)
                return NOT_PLAIN;
            if ((seen & (E_GW | E_DISTRICT)) == (E_GW | E_DISTRICT)) {
                set_tags(c, gw, district);
                rc = samples_list(c, 1);
            } else {
                deferred = c->p;
                rc = samples_list(c, 0);
            }
        } else {
            return NOT_PLAIN;
        }
        if (rc != OK)
            return rc;
        if (seen & bit)
            return NOT_PLAIN;
        seen |= bit;
    } while (expect(c, ','));
    if (!expect(c, '}'))
        return NOT_PLAIN;
    skip_ws(c);
    if (c->p != c->end || seen != (E_V | E_GW | E_DISTRICT | E_SEQ | E_SENT | E_SAMPLES))
        return NOT_PLAIN;
    if (deferred) {
        set_tags(c, gw, district);
        c->p = deferred;
        return samples_list(c, 1);
    }
    return OK;
}

static PyObject *ascii_str(const char *s, Py_ssize_t n)
{
    PyObject *text = PyUnicode_New(n, 127);
    if (text)
        memcpy(PyUnicode_DATA(text), s, (size_t)n);
    return text;
}

PyDoc_STRVAR(transcode_doc,
"transcode(payload: bytes, max_bytes: int, earliest_ms: int, latest_ms: int)\n"
"    -> tuple[str, str, int, str, int, int] | None\n\n"
"(gw, district, seq, lines joined by newlines, number of lines, sent) of a plain telemetry\n"
"batch whose samples all lie in [earliest_ms, latest_ms]; None for anything else.");

static PyObject *transcode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "transcode() takes payload, max_bytes, earliest_ms, latest_ms");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "payload must be bytes, not %.100s", Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    long long max_bytes = PyLong_AsLongLong(args[1]);
    long long earliest = PyLong_AsLongLong(args[2]);
    long long latest = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (size > max_bytes || !configured)
        Py_RETURN_NONE;
    Ctx c;
    c.p = PyBytes_AS_STRING(args[0]);
    c.end = c.p + size;
    c.earliest = earliest;
    c.latest = latest;
    c.tags_len = 0;
    c.points = 0;
    c.out_len = 0;
    c.out_cap = size * 2 + 256; /* the tags make a line longer than its sample */
    c.out = PyMem_Malloc((size_t)c.out_cap);
    if (!c.out)
        return PyErr_NoMemory();
    Span gw = {0}, district = {0};
    long long seq = 0, sent = 0;
    int rc = batch(&c, &gw, &district, &seq, &sent);
    PyObject *result = NULL;
    if (rc == NO_MEMORY) {
        PyErr_NoMemory();
    } else if (rc != OK) {
        result = Py_NewRef(Py_None);
    } else {
        PyObject *gw_text = ascii_str(gw.start, gw.len);
        PyObject *district_text = ascii_str(district.start, district.len);
        PyObject *lines = ascii_str(c.out, c.out_len);
        PyObject *seq_number = PyLong_FromLongLong(seq);
        PyObject *points = PyLong_FromSsize_t(c.points);
        PyObject *sent_number = PyLong_FromLongLong(sent);
        if (gw_text && district_text && lines && seq_number && points && sent_number)
            result = PyTuple_Pack(6, gw_text, district_text, seq_number, lines, points, sent_number);
        Py_XDECREF(sent_number);
        Py_XDECREF(gw_text);
        Py_XDECREF(district_text);
        Py_XDECREF(lines);
        Py_XDECREF(seq_number);
        Py_XDECREF(points);
    }
    PyMem_Free(c.out);
    return result;
}

PyDoc_STRVAR(configure_doc,
"configure(reserved: tuple[str, ...], measurements: tuple[str, ...], max_samples: int,\n"
"          field_types: tuple[tuple[tuple[str, str], ...], ...] = (), strict: tuple[bool, ...] = ()) -> None\n\n"
"The field names no sample may use, the measurements a sample may name (at most 32 each,\n"
"each of 1 to 63 ASCII characters), the most samples a batch may hold, and per measurement\n"
"(in the same order) its declared fields as (name, kind) pairs, kind one of 'float', 'int',\n"
"'bool', 'string' (at most 64 per measurement), and per measurement whether it takes no\n"
"other field. transcode() returns None until this has been called.");

/* names: a tuple of ASCII str of 1..MAX_NAME characters, at most MAX_NAMES; 0 or -1 with ValueError */
static int fill_set(NameSet *set, PyObject *names, const char *what)
{
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n > MAX_NAMES) {
        PyErr_Format(PyExc_ValueError, "configure(): at most %d %s", MAX_NAMES, what);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        Py_ssize_t len = 0;
        const char *text = PyUnicode_Check(name) && PyUnicode_IS_ASCII(name) ? PyUnicode_AsUTF8AndSize(name, &len)
                                                                             : NULL;
        if (!text || len < 1 || len > MAX_NAME) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "configure(): %s are ASCII strings of 1 to 63 characters", what);
            return -1;
        }
        memcpy(set->name[i], text, (size_t)len);
        set->len[i] = (size_t)len;
    }
    set->count = (int)n;
    return 0;
}

/* one measurement's (name, kind) pairs; 0 or -1 with ValueError */
static int fill_typed(TypedSet *set, PyObject *pairs)
{
    if (!PyTuple_Check(pairs) || PyTuple_GET_SIZE(pairs) > MAX_TYPED) {
        PyErr_Format(PyExc_ValueError, "configure(): field_types: a tuple of at most %d (name, kind) pairs "
                     "per measurement", MAX_TYPED);
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(pairs);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        Py_ssize_t len = 0, klen = 0;
        const char *name = NULL, *kind = NULL;
        if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 && PyUnicode_Check(PyTuple_GET_ITEM(pair, 0)) &&
            PyUnicode_Check(PyTuple_GET_ITEM(pair, 1))) {
            name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 0), &len);
            kind = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(pair, 1), &klen);
        }
        char k = 0;
        if (kind && klen == 5 && memcmp(kind, "float", 5) == 0)
            k = 'f';
        else if (kind && klen == 3 && memcmp(kind, "int", 3) == 0)
            k = 'i';
        else if (kind && klen == 4 && memcmp(kind, "bool", 4) == 0)
            k = 'b';
        else if (kind && klen == 6 && memcmp(kind, "string", 6) == 0)
            k = 's';
        if (!name || len < 1 || len > MAX_NAME || !k) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "configure(): field_types: each pair is (a name of 1 to 63 "
                            "characters, one of 'float', 'int', 'bool', 'string')");
            return -1;
        }
        memcpy(set->name[i], name, (size_t)len);
        set->len[i] = (size_t)len;
        set->kind[i] = k;
    }
    set->count = (int)n;
    return 0;
}

static PyObject *configure(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *reserved_names, *measurement_names, *field_types = NULL, *strict = NULL;
    Py_ssize_t samples;
    if (!PyArg_ParseTuple(args, "O!O!n|O!O!", &PyTuple_Type, &reserved_names, &PyTuple_Type, &measurement_names,
                          &samples, &PyTuple_Type, &field_types, &PyTuple_Type, &strict))
        return NULL;
    if (samples < 1) {
        PyErr_SetString(PyExc_ValueError, "configure(): max_samples must be at least 1");
        return NULL;
    }
    /* all or nothing: a bad call changes nothing (the tables are large: heap, not stack) */
    NameSet new_reserved, new_measurements;
    if (fill_set(&new_reserved, reserved_names, "reserved names") < 0 ||
        fill_set(&new_measurements, measurement_names, "measurements") < 0)
        return NULL;
    if ((field_types && PyTuple_GET_SIZE(field_types) != new_measurements.count) ||
        (strict && PyTuple_GET_SIZE(strict) != new_measurements.count)) {
        PyErr_SetString(PyExc_ValueError, "configure(): field_types and strict have one entry per measurement, "
                        "in their order");
        return NULL;
    }
    TypedSet *new_typed = PyMem_Calloc(MAX_NAMES, sizeof(TypedSet));
    if (!new_typed)
        return PyErr_NoMemory();
    for (int i = 0; field_types && i < new_measurements.count; i++) {
        if (fill_typed(&new_typed[i], PyTuple_GET_ITEM(field_types, i)) < 0) {
            PyMem_Free(new_typed);
            return NULL;
        }
    }
    for (int i = 0; strict && i < new_measurements.count; i++)
        new_typed[i].strict = PyObject_IsTrue(PyTuple_GET_ITEM(strict, i)) == 1;
    reserved = new_reserved;
    measurements = new_measurements;
    memcpy(typed, new_typed, MAX_NAMES * sizeof(TypedSet));
    PyMem_Free(new_typed);
    max_samples = samples;
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"transcode", (PyCFunction)(void (*)(void))transcode, METH_FASTCALL, transcode_doc},
    {"configure", configure, METH_VARARGS, configure_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ingest._fastline",
    .m_doc = "Plain telemetry batch -> InfluxDB line protocol in one C pass (see ingest/points.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastline(void)
{
    for (int ch = 'a'; ch <= 'z'; ch++)
        cls[ch] = 1;
    for (int ch = '0'; ch <= '9'; ch++)
        cls[ch] = 2;
    cls['-'] = 4;
    cls['_'] = 8;
    PyObject *module = PyModule_Create(&module_def);
    if (module && (PyModule_AddStringConstant(module, "SOURCE_SHA256", FASTLINE_SOURCE_SHA256) < 0 ||
                   PyModule_AddIntConstant(module, "MAX_FIELDS", MAX_FIELDS) < 0 ||
                   PyModule_AddIntConstant(module, "MAX_STRING_FIELD", MAX_STRING_FIELD) < 0))
        Py_CLEAR(module);
    return module;
}
