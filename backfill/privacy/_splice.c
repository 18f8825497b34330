/* The [privacy] step's id and IP rewrite and its PII pre-filter, compiled: one pass over
 * each JSON line in C (backfill.privacy.transform uses it when it was built; the Python path
 * gives the same result).
 *
 * rewrite(lines, targets, nested, marks) -> (changed, unusual, flagged)
 *
 *   lines    list[bytes], JSON lines; rewritten in place (a line that changes gets a new
 *            bytes object, the others keep theirs)
 *   targets  tuple of (name: bytes, cache: cache(limit), compute: callable): top-level keys
 *            whose string value is replaced by cache[value], compute(value) filling a miss
 *   nested   None, or (container: bytes, name: bytes, cache, compute): the same for one key
 *            of the top-level object `container` (context.truncated_ip); a value that is an
 *            IPv4 /24 already (ends in ".0", no ':') is not looked up
 *   marks    whether to look for the PII marks in each line (see has_mark)
 *
 *   changed  list[int], per target then the nested one: values replaced by something else
 *   unusual  list[int], indices of lines this scanner leaves to the Python path, unchanged:
 *            a key with a backslash (an escape could spell a target's name), a target
 *            given twice, a target's value with an escape or a non-ASCII byte, a line that is
 *            not one JSON object as far as its structure goes.
 *   flagged  list[int], indices of lines holding a PII mark (as they came, before the rewrite)
 *
 * The scanner walks the line's structure (strings, with their escapes, objects and arrays)
 * without decoding values, so a key is found only where the decoder would find it: at the
 * top level (or directly in `container`), never inside a string or a deeper object. It does
 * not validate scalars (numbers, literals): the validator judges the line after the step.
 * A compute that returns its argument's bytes leaves the value as it is (not counted).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAX_TARGETS 8

/* A cache of rewritten values: raw bytes -> new bytes, open addressing, at most `limit`
 * entries (then cleared: a few MB at most), at most half full. Keyed by the raw bytes
 * themselves (no bytes object, no siphash per lookup: the lookup was most of a line's cost),
 * with a hash seeded per process. */
typedef struct {
    uint64_t hash;
    Py_ssize_t len;
    char *key;       /* PyMem copy of the raw value; NULL: a free slot */
    PyObject *value; /* owned */
} Slot;

typedef struct {
    Py_ssize_t limit, count;
    size_t mask; /* slots - 1, a power of two minus one */
    Slot *slots;
} Table;

#define CACHE_NAME "backfill.privacy._splice.cache"
static uint64_t seed;

static inline uint64_t hash_bytes(const char *s, Py_ssize_t n) {
    uint64_t h = seed ^ ((uint64_t)n * 0x9E3779B97F4A7C15ULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, (size_t)n);
    h = (h ^ w) * 0x94D049BB133111EBULL;
    h ^= h >> 32; /* a full finalizer: every byte reaches the low bits the index uses */
    h *= 0xBF58476D1CE4E5B9ULL;
    return h ^ (h >> 29);
}

static void table_clear(Table *t) {
    for (size_t i = 0; i <= t->mask; i++) {
        if (t->slots[i].key != NULL) {
            PyMem_Free(t->slots[i].key);
            Py_DECREF(t->slots[i].value);
            t->slots[i].key = NULL;
            t->slots[i].value = NULL;
        }
    }
    t->count = 0;
}

static void table_free(PyObject *capsule) {
    Table *t = PyCapsule_GetPointer(capsule, CACHE_NAME);
    if (t == NULL) return;
    table_clear(t);
    PyMem_Free(t->slots);
    PyMem_Free(t);
}

/* cache(limit) -> an empty cache, for one target of `rewrite` */
static PyObject *new_cache(PyObject *module, PyObject *arg) {
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    if (limit < 1 || limit > ((Py_ssize_t)1 << 28)) {
        PyErr_SetString(PyExc_ValueError, "a cache holds 1 to 2**28 entries");
        return NULL;
    }
    size_t size = 4;
    while (size < (size_t)limit * 2) size <<= 1;
    Table *t = PyMem_Calloc(1, sizeof(Table));
    Slot *slots = PyMem_Calloc(size, sizeof(Slot));
    if (t == NULL || slots == NULL) {
        PyMem_Free(t);
        PyMem_Free(slots);
        return PyErr_NoMemory();
    }
    t->limit = limit;
    t->mask = size - 1;
    t->slots = slots;
    PyObject *capsule = PyCapsule_New(t, CACHE_NAME, table_free);
    if (capsule == NULL) {
        PyMem_Free(slots);
        PyMem_Free(t);
    }
    return capsule;
}

/* cached(cache) -> the number of entries it holds */
static PyObject *cached(PyObject *module, PyObject *capsule) {
    Table *t = PyCapsule_GetPointer(capsule, CACHE_NAME);
    return t == NULL ? NULL : PyLong_FromSsize_t(t->count);
}

typedef struct {
    const char *name;
    Py_ssize_t name_len;
    Table *cache;
    PyObject *compute;
} Target;

typedef struct {
    Py_ssize_t start; /* first byte of the string's content */
    Py_ssize_t end;   /* its closing quote */
    int found;
} Span;

static inline Py_ssize_t skip_ws(const char *s, Py_ssize_t i, Py_ssize_t n) {
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) i++;
    return i;
}

/* s[i] is the opening quote; returns the index of the closing quote, or -1. Sets *escapes
 * when the content holds a backslash. 16 bytes at a time where SSE2 is there (every x86-64),
 * memchr elsewhere. */
static inline Py_ssize_t string_end(const char *s, Py_ssize_t i, Py_ssize_t n, int *escapes) {
    i++;
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    while (i + 16 <= n) {
        __m128i chunk = _mm_loadu_si128((const __m128i *)(s + i));
        int q = _mm_movemask_epi8(_mm_cmpeq_epi8(chunk, quote));
        int b = _mm_movemask_epi8(_mm_cmpeq_epi8(chunk, backslash));
        if ((q | b) == 0) {
            i += 16;
            continue;
        }
        int at = __builtin_ctz((unsigned)(q | b));
        if ((q >> at) & 1) return i + at; /* a quote before any backslash */
        *escapes = 1;
        i += at + 2; /* past the escaped byte, which may be the quote */
    }
    while (i < n) {
        if (s[i] == '"') return i;
        if (s[i] == '\\') {
            *escapes = 1;
            i += 2;
            continue;
        }
        i++;
    }
    return -1;
#else
    for (;;) {
        if (i >= n) return -1;
        const char *found = memchr(s + i, '"', (size_t)(n - i));
        if (found == NULL) return -1;
        Py_ssize_t q = found - s;
        const char *escape = memchr(s + i, '\\', (size_t)(q - i));
        if (escape == NULL) return q;
        *escapes = 1;
        i = escape - s + 2;
    }
#endif
}

static inline int has_high(const char *s, Py_ssize_t start, Py_ssize_t end) {
    for (Py_ssize_t i = start; i < end; i++)
        if ((unsigned char)s[i] >= 0x80) return 1;
    return 0;
}

/* Skips any JSON value starting at s[i]; returns the index after it, or -1. */
static Py_ssize_t skip_value(const char *s, Py_ssize_t i, Py_ssize_t n) {
    if (i >= n) return -1;
    char c = s[i];
    if (c == '"') {
        int e = 0;
        Py_ssize_t end = string_end(s, i, n, &e);
        return end < 0 ? -1 : end + 1;
    }
    if (c == '{' || c == '[') {
        Py_ssize_t depth = 0;
        while (i < n) {
            c = s[i];
            if (c == '"') {
                int e = 0;
                Py_ssize_t end = string_end(s, i, n, &e);
                if (end < 0) return -1;
                i = end + 1;
                continue;
            }
            if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') {
                depth--;
                if (depth == 0) return i + 1;
            }
            i++;
        }
        return -1;
    }
    /* a scalar: a number, true, false or null (NaN, Infinity and the like are not JSON:
     * the decoder refuses the line, so the Python path judges it), up to the next
     * structural byte or whitespace */
    if (!((c >= '0' && c <= '9') || c == 't' || c == 'f' || c == 'n' ||
          (c == '-' && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '9')))
        return -1;
    Py_ssize_t start = i;
    while (i < n) {
        c = s[i];
        if (c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\r' || c == '\n')
            break;
        if (c == '"' || c == '{' || c == '[' || c == ':') return -1;
        i++;
    }
    return i == start ? -1 : i;
}

/* Walks the object starting at s[i] ('{'), recording the string spans of `targets` (keys
 * of this object). When `container` is given, its object value is walked the same way for
 * `inner`. Returns the index after the object, or -1 for UNUSUAL. */
static Py_ssize_t walk_object(const char *s, Py_ssize_t i, Py_ssize_t n, const Target *targets,
                              Py_ssize_t count, Span *spans, const char *container,
                              Py_ssize_t container_len, const Target *inner, Span *inner_span,
                              int *container_seen) {
    if (i >= n || s[i] != '{') return -1;
    i = skip_ws(s, i + 1, n);
    if (i < n && s[i] == '}') return i + 1;
    for (;;) {
        if (i >= n || s[i] != '"') return -1;
        int escapes = 0;
        Py_ssize_t key_end = string_end(s, i, n, &escapes);
        if (key_end < 0 || escapes) return -1;
        const char *key = s + i + 1;
        Py_ssize_t key_len = key_end - i - 1;
        i = skip_ws(s, key_end + 1, n);
        if (i >= n || s[i] != ':') return -1;
        i = skip_ws(s, i + 1, n);
        if (i >= n) return -1;
        Py_ssize_t t = -1;
        for (Py_ssize_t k = 0; k < count; k++) {
            if (targets[k].name_len == key_len && memcmp(targets[k].name, key, key_len) == 0) {
                t = k;
                break;
            }
        }
        if (t >= 0) {
            if (spans[t].found) return -1; /* given twice: which one the decoder keeps is its call */
            spans[t].found = 1;
            if (s[i] == '"') {
                escapes = 0;
                Py_ssize_t end = string_end(s, i, n, &escapes);
                if (end < 0 || escapes || has_high(s, i + 1, end)) return -1;
                spans[t].start = i + 1;
                spans[t].end = end;
                i = end + 1;
            } else { /* not a string: nothing to replace (the validator judges it) */
                spans[t].found = 2;
                i = skip_value(s, i, n);
            }
        } else if (container != NULL && key_len == container_len &&
                   memcmp(container, key, key_len) == 0) {
            if (*container_seen) return -1;
            *container_seen = 1;
            if (s[i] == '{') {
                int unused = 0;
                i = walk_object(s, i, n, inner, 1, inner_span, NULL, 0, NULL, NULL, &unused);
            } else {
                i = skip_value(s, i, n);
            }
        } else {
            i = skip_value(s, i, n);
        }
        if (i < 0) return -1;
        i = skip_ws(s, i, n);
        if (i >= n) return -1;
        if (s[i] == ',') {
            i = skip_ws(s, i + 1, n);
            continue;
        }
        if (s[i] == '}') return i + 1;
        return -1;
    }
}

/* cache[raw], computing and storing a miss; a new reference, NULL on error. */
static PyObject *lookup(Target *target, const char *raw, Py_ssize_t len) {
    Table *t = target->cache;
    uint64_t h = hash_bytes(raw, len);
    size_t i = (size_t)h & t->mask;
    for (; t->slots[i].key != NULL; i = (i + 1) & t->mask) {
        Slot *slot = &t->slots[i];
        if (slot->hash == h && slot->len == len && memcmp(slot->key, raw, (size_t)len) == 0) {
            Py_INCREF(slot->value);
            return slot->value;
        }
    }
    PyObject *key = PyBytes_FromStringAndSize(raw, len);
    if (key == NULL) return NULL;
    PyObject *found = PyObject_CallOneArg(target->compute, key);
    Py_DECREF(key);
    if (found == NULL) return NULL;
    if (!PyBytes_Check(found)) {
        PyErr_SetString(PyExc_TypeError, "compute must return bytes");
        Py_DECREF(found);
        return NULL;
    }
    char *copy = PyMem_Malloc(len > 0 ? (size_t)len : 1);
    if (copy == NULL) {
        Py_DECREF(found);
        return PyErr_NoMemory();
    }
    memcpy(copy, raw, (size_t)len);
    if (t->count >= t->limit) { /* full: start again (a few MB at most) */
        table_clear(t);
        i = (size_t)h & t->mask;
    }
    /* compute is Python: it cannot reach this table, but find a free slot again anyway */
    while (t->slots[i].key != NULL) i = (i + 1) & t->mask;
    t->slots[i] = (Slot){h, len, copy, found};
    t->count++;
    Py_INCREF(found);
    return found;
}

static int parse_target(PyObject *item, Target *target, Py_ssize_t offset) {
    PyObject *name, *cache, *compute;
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3 + offset) {
        PyErr_SetString(PyExc_TypeError, "a target is (name, cache, compute)");
        return -1;
    }
    name = PyTuple_GET_ITEM(item, offset);
    cache = PyTuple_GET_ITEM(item, offset + 1);
    compute = PyTuple_GET_ITEM(item, offset + 2);
    if (!PyBytes_Check(name) || !PyCapsule_IsValid(cache, CACHE_NAME) ||
        !PyCallable_Check(compute)) {
        PyErr_SetString(PyExc_TypeError, "a target is (bytes, cache(), callable)");
        return -1;
    }
    target->name = PyBytes_AS_STRING(name);
    target->name_len = PyBytes_GET_SIZE(name);
    target->cache = PyCapsule_GetPointer(cache, CACHE_NAME);
    target->compute = compute;
    return 0;
}

typedef struct {
    Py_ssize_t start, end;
    PyObject *value; /* owned */
    int which;
} Edit;

/* Byte classes of the PII marks (backfill.privacy.detect: _MARK_PATTERNS). */
enum { OTHER = 0, DIGIT, SEP, PERCENT, PLUS, AT, BACKSLASH };
static unsigned char klass[256];

static void init_classes(void) {
    for (int c = '0'; c <= '9'; c++) klass[c] = DIGIT;
    klass[' '] = klass['-'] = klass['.'] = SEP;
    klass['%'] = PERCENT;
    klass['+'] = PLUS;
    klass['@'] = AT;
    klass['\\'] = BACKSLASH;
}

/* Whether the line holds a PII mark, the bytes pre-filter's (a superset of the lines where
 * an exact pattern matches): `@`, `\u00`, `%40`, `%2B`, `%2b`, `+` and a digit, 13 digits
 * in a row, or 3 digits, one of ` -.%+` and 4 digits. Must find exactly the lines that
 * `candidate_offsets` finds (a test compares them). */
static int has_mark(const char *s, Py_ssize_t n) {
    Py_ssize_t run = 0; /* digits in a row up to here */
    int before = 0;     /* the byte before this run was one separator after 3 digits */
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (klass[c]) {
        case OTHER:
            run = 0;
            before = 0;
            break;
        case DIGIT:
            run++;
            if (run >= 13 || (before && run >= 4)) return 1;
            break;
        case AT:
            return 1;
        case BACKSLASH:
            if (i + 3 < n && s[i + 1] == 'u' && s[i + 2] == '0' && s[i + 3] == '0') return 1;
            run = 0;
            before = 0;
            break;
        case PERCENT:
            if (i + 2 < n && ((s[i + 1] == '4' && s[i + 2] == '0') ||
                              (s[i + 1] == '2' && (s[i + 2] == 'B' || s[i + 2] == 'b'))))
                return 1;
            before = run >= 3;
            run = 0;
            break;
        case PLUS:
            if (i + 1 < n && klass[(unsigned char)s[i + 1]] == DIGIT) return 1;
            before = run >= 3;
            run = 0;
            break;
        default: /* SEP */
            before = run >= 3;
            run = 0;
        }
    }
    return 0;
}

#if defined(__SSE2__)
#define MARK_WORDS 64 /* lines up to 4 KiB take the bit-parallel test, longer ones the loop */

/* Bit j of (mask >> k) over the whole line: bit j + k of the mask (0 < k < 64). */
static inline uint64_t shifted(const uint64_t *mask, int words, int i, int k) {
    uint64_t high = i + 1 < words ? mask[i + 1] << (64 - k) : 0;
    return (mask[i] >> k) | high;
}

/* The digit, separator and plus bytes of 16 bytes, as bit masks. */
static inline void classify16(const char *p, int *digits, int *seps, int *pluses) {
    __m128i chunk = _mm_loadu_si128((const __m128i *)p);
    __m128i offset = _mm_sub_epi8(chunk, _mm_set1_epi8('0'));
    __m128i nine = _mm_set1_epi8(9);
    *digits = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(offset, nine), nine));
    __m128i plus = _mm_cmpeq_epi8(chunk, _mm_set1_epi8('+'));
    __m128i sep = _mm_or_si128(_mm_cmpeq_epi8(chunk, _mm_set1_epi8(' ')),
                               _mm_cmpeq_epi8(chunk, _mm_set1_epi8('-')));
    sep = _mm_or_si128(sep, _mm_cmpeq_epi8(chunk, _mm_set1_epi8('.')));
    sep = _mm_or_si128(sep, _mm_cmpeq_epi8(chunk, _mm_set1_epi8('%')));
    sep = _mm_or_si128(sep, plus);
    *seps = _mm_movemask_epi8(sep);
    *pluses = _mm_movemask_epi8(plus);
}

/* has_mark, bit-parallel: the one-byte marks by memchr, the digit marks as bit masks of
 * the whole line (bit j: byte j is a digit), runs found by shifting and and-ing. */
static int has_mark_fast(const char *s, Py_ssize_t n) {
    if (n > MARK_WORDS * 64) return has_mark(s, n);
    if (memchr(s, '@', (size_t)n) != NULL) return 1;
    for (const char *p = memchr(s, '\\', (size_t)n); p != NULL;
         p = memchr(p + 1, '\\', (size_t)(s + n - p - 1))) {
        if (p + 3 < s + n && p[1] == 'u' && p[2] == '0' && p[3] == '0') return 1;
        if (p + 1 >= s + n) break;
    }
    for (const char *p = memchr(s, '%', (size_t)n); p != NULL;
         p = memchr(p + 1, '%', (size_t)(s + n - p - 1))) {
        if (p + 2 < s + n && ((p[1] == '4' && p[2] == '0') ||
                              (p[1] == '2' && (p[2] == 'B' || p[2] == 'b'))))
            return 1;
        if (p + 1 >= s + n) break;
    }
    uint64_t digit[MARK_WORDS], sep[MARK_WORDS], plus[MARK_WORDS];
    uint64_t two[MARK_WORDS], four[MARK_WORDS];
    int words = (int)((n + 63) / 64);
    for (int w = 0; w < words; w++) {
        uint64_t d = 0, e = 0, q = 0;
        for (int c = 0; c < 4; c++) {
            Py_ssize_t at = (Py_ssize_t)w * 64 + c * 16;
            int dm = 0, sm = 0, pm = 0;
            if (at + 16 <= n) {
                classify16(s + at, &dm, &sm, &pm);
            } else if (at < n) { /* the tail, zero-padded: a zero byte is none of them */
                char tail[16] = {0};
                memcpy(tail, s + at, (size_t)(n - at));
                classify16(tail, &dm, &sm, &pm);
            }
            d |= (uint64_t)(unsigned)dm << (c * 16);
            e |= (uint64_t)(unsigned)sm << (c * 16);
            q |= (uint64_t)(unsigned)pm << (c * 16);
        }
        digit[w] = d;
        sep[w] = e;
        plus[w] = q;
    }
    for (int w = 0; w < words; w++) two[w] = digit[w] & shifted(digit, words, w, 1);
    for (int w = 0; w < words; w++) four[w] = two[w] & shifted(two, words, w, 2);
    for (int w = 0; w < words; w++) {
        uint64_t three = two[w] & shifted(digit, words, w, 2);
        uint64_t eight = four[w] & shifted(four, words, w, 4);
        uint64_t thirteen = eight & shifted(four, words, w, 8) & shifted(digit, words, w, 12);
        /* 3 digits, a separator, 4 digits; `+` then a digit */
        uint64_t grouped = three & shifted(sep, words, w, 3) & shifted(four, words, w, 4);
        uint64_t dialled = plus[w] & shifted(digit, words, w, 1);
        if (thirteen | grouped | dialled) return 1;
    }
    return 0;
}
#else
#define has_mark_fast has_mark
#endif

/* An IPv4 /24 already (ends in ".0", no ':'): truncate_ip leaves it as it is. */
static inline int already_short(const char *s, Py_ssize_t start, Py_ssize_t end) {
    if (end - start < 2 || s[end - 1] != '0' || s[end - 2] != '.') return 0;
    return memchr(s + start, ':', (size_t)(end - start)) == NULL;
}

static int append_index(PyObject *list, Py_ssize_t index) {
    PyObject *value = PyLong_FromSsize_t(index);
    if (value == NULL) return -1;
    int failed = PyList_Append(list, value);
    Py_DECREF(value);
    return failed;
}

/* The line with its targets' values replaced, or a new reference to the line itself when
 * none changes; NULL on error. Counts each value replaced in changed[target]. */
static PyObject *edited(PyObject *line, Target *targets, Py_ssize_t count, int nested,
                        Span *spans, Py_ssize_t *changed) {
    const char *s = PyBytes_AS_STRING(line);
    Py_ssize_t n = PyBytes_GET_SIZE(line);
    Edit edits[MAX_TARGETS + 1];
    int m = 0;
    for (Py_ssize_t k = 0; k < count + nested; k++) {
        Span *span = &spans[k];
        if (span->found != 1 || span->end == span->start) continue;
        if (k == count && already_short(s, span->start, span->end)) continue;
        PyObject *value = lookup(&targets[k], s + span->start, span->end - span->start);
        if (value == NULL) {
            for (int j = 0; j < m; j++) Py_DECREF(edits[j].value);
            return NULL;
        }
        Py_ssize_t old = span->end - span->start;
        if (PyBytes_GET_SIZE(value) == old &&
            memcmp(PyBytes_AS_STRING(value), s + span->start, (size_t)old) == 0) {
            Py_DECREF(value);
            continue;
        }
        int at = m; /* in the order of their place in the line: at most a few */
        while (at > 0 && edits[at - 1].start > span->start) {
            edits[at] = edits[at - 1];
            at--;
        }
        edits[at] = (Edit){span->start, span->end, value, (int)k};
        m++;
    }
    if (m == 0) {
        Py_INCREF(line);
        return line;
    }
    Py_ssize_t size = n;
    for (int j = 0; j < m; j++)
        size += PyBytes_GET_SIZE(edits[j].value) - (edits[j].end - edits[j].start);
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out != NULL) {
        char *o = PyBytes_AS_STRING(out);
        Py_ssize_t from = 0;
        for (int j = 0; j < m; j++) {
            memcpy(o, s + from, (size_t)(edits[j].start - from));
            o += edits[j].start - from;
            Py_ssize_t len = PyBytes_GET_SIZE(edits[j].value);
            memcpy(o, PyBytes_AS_STRING(edits[j].value), (size_t)len);
            o += len;
            from = edits[j].end;
            changed[edits[j].which]++;
        }
        memcpy(o, s + from, (size_t)(n - from));
    }
    for (int j = 0; j < m; j++) Py_DECREF(edits[j].value);
    return out;
}

static PyObject *rewrite(PyObject *module, PyObject *args) {
    PyObject *lines, *targets_arg, *nested_arg;
    int marks;
    if (!PyArg_ParseTuple(args, "O!O!Op", &PyList_Type, &lines, &PyTuple_Type, &targets_arg,
                          &nested_arg, &marks))
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(targets_arg);
    if (count > MAX_TARGETS) {
        PyErr_SetString(PyExc_ValueError, "too many targets");
        return NULL;
    }
    /* targets[count] is the nested one, when there is one */
    Target targets[MAX_TARGETS + 1];
    for (Py_ssize_t k = 0; k < count; k++)
        if (parse_target(PyTuple_GET_ITEM(targets_arg, k), &targets[k], 0) < 0) return NULL;
    const char *container = NULL;
    Py_ssize_t container_len = 0;
    int nested = nested_arg != Py_None;
    if (nested) {
        if (!PyTuple_Check(nested_arg) || PyTuple_GET_SIZE(nested_arg) != 4 ||
            !PyBytes_Check(PyTuple_GET_ITEM(nested_arg, 0))) {
            PyErr_SetString(PyExc_TypeError, "nested is (container, name, cache, compute)");
            return NULL;
        }
        if (parse_target(nested_arg, &targets[count], 1) < 0) return NULL;
        container = PyBytes_AS_STRING(PyTuple_GET_ITEM(nested_arg, 0));
        container_len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(nested_arg, 0));
    }
    Py_ssize_t parsed = count + nested;
    int walk = parsed > 0;
    Py_ssize_t changed[MAX_TARGETS + 1] = {0};
    PyObject *unusual = PyList_New(0);
    PyObject *flagged = PyList_New(0);
    if (unusual == NULL || flagged == NULL) goto error;

    for (Py_ssize_t li = 0; li < PyList_GET_SIZE(lines); li++) {
        PyObject *line = PyList_GET_ITEM(lines, li);
        if (!PyBytes_Check(line)) { /* anything else is the Python path's to judge */
            if (append_index(unusual, li) < 0) goto error;
            continue;
        }
        const char *s = PyBytes_AS_STRING(line);
        Py_ssize_t n = PyBytes_GET_SIZE(line);
        if (n == 0) continue;
        if (marks && has_mark_fast(s, n) && append_index(flagged, li) < 0) goto error;
        if (!walk) continue;
        Span spans[MAX_TARGETS + 1] = {{0}};
        int container_seen = 0;
        Py_ssize_t i = walk_object(s, skip_ws(s, 0, n), n, targets, count, spans, container,
                                   container_len, &targets[count], &spans[count],
                                   &container_seen);
        if (i < 0 || skip_ws(s, i, n) != n) {
            if (append_index(unusual, li) < 0) goto error;
            continue;
        }
        Py_INCREF(line); /* compute is Python: keep the line alive whatever it does */
        PyObject *out = edited(line, targets, count, nested, spans, changed);
        Py_DECREF(line);
        if (out == NULL) goto error;
        if (out == line) {
            Py_DECREF(out);
            continue;
        }
        if (PyList_SetItem(lines, li, out) < 0) goto error; /* steals out */
    }
    {
        PyObject *counts = PyList_New(parsed);
        if (counts == NULL) goto error;
        for (Py_ssize_t k = 0; k < parsed; k++) {
            PyObject *v = PyLong_FromSsize_t(changed[k]);
            if (v == NULL) {
                Py_DECREF(counts);
                goto error;
            }
            PyList_SET_ITEM(counts, k, v);
        }
        PyObject *result = PyTuple_Pack(3, counts, unusual, flagged);
        Py_DECREF(counts);
        Py_DECREF(unusual);
        Py_DECREF(flagged);
        return result;
    }
error:
    Py_XDECREF(unusual);
    Py_XDECREF(flagged);
    return NULL;
}

/* marked(text) -> bool: whether a decoded string (or bytes) holds a PII mark; the scan's
 * per-string gate, a superset of detect.maybe_pii (the same marks, on its UTF-8). */
static PyObject *marked(PyObject *module, PyObject *text) {
    const char *s;
    Py_ssize_t n;
    if (PyUnicode_Check(text)) {
        s = PyUnicode_AsUTF8AndSize(text, &n); /* an ASCII string's own buffer: no copy */
        if (s == NULL) { /* a lone surrogate: no UTF-8; let the exact patterns decide */
            PyErr_Clear();
            Py_RETURN_TRUE;
        }
    } else if (PyBytes_Check(text)) {
        s = PyBytes_AS_STRING(text);
        n = PyBytes_GET_SIZE(text);
    } else {
        PyErr_SetString(PyExc_TypeError, "marked takes str or bytes");
        return NULL;
    }
    return PyBool_FromLong(has_mark_fast(s, n));
}

static PyMethodDef methods[] = {
    {"rewrite", rewrite, METH_VARARGS,
     "rewrite(lines, targets, nested, marks) -> (changed, unusual, flagged): see the "
     "module's source."},
    {"cache", new_cache, METH_O, "cache(limit) -> an empty cache of rewritten values."},
    {"cached", cached, METH_O, "cached(cache) -> the number of values it holds."},
    {"marked", marked, METH_O,
     "marked(text) -> bool: whether the string holds a PII mark (the scan's gate)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_splice",
    "The [privacy] id and IP rewrite and PII pre-filter, compiled (backfill.privacy.rewrite "
    "and backfill.privacy.detect have the Python ones).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__splice(void) {
    init_classes();
    /* the caches' hash seed: a str's hash is randomized per process (PYTHONHASHSEED) */
    PyObject *salt = PyUnicode_FromString("backfill.privacy._splice");
    if (salt == NULL) return NULL;
    seed = (uint64_t)PyObject_Hash(salt) * 0x9E3779B97F4A7C15ULL;
    Py_DECREF(salt);
    return PyModule_Create(&module);
}
