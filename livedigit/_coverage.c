/* The ink of a drawing at its pixel centres, compiled: livedigit.preprocess._coverage's inner loop.

   The same float32 operations, in the same order, as preprocess._coverage_numpy, so the pixels are the same
   bit for bit (tests/test_preprocess.py compares them); setup.py builds it without contracting a * b + c
   into one fused instruction, which numpy never does. Each segment is measured only against the pixels
   within `reach` of its box: numpy measures every segment against every pixel, because a call per segment
   costs more there than the pixels it would save. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

/* The first index of the sorted `centres` whose value is at least `value`. */
static Py_ssize_t first_at_least(const float *centres, Py_ssize_t count, float value) {
    Py_ssize_t low = 0, high = count;
    while (low < high) {
        Py_ssize_t middle = (low + high) / 2;
        if (centres[middle] < value)
            low = middle + 1;
        else
            high = middle;
    }
    return low;
}

static void ink(float *out, const float *placed, const int *lengths, Py_ssize_t strokes, const float *xs,
                Py_ssize_t columns, const float *ys, Py_ssize_t rows, float radius_and_half, float reach) {
    for (Py_ssize_t i = 0; i < rows * columns; i++)
        out[i] = INFINITY;
    Py_ssize_t first = 0;
    for (Py_ssize_t stroke = 0; stroke < strokes; stroke++) {
        Py_ssize_t count = lengths[stroke];
        for (Py_ssize_t j = 0; j < count; j++) {
            /* A point starts a segment to the next point of its stroke; a stroke's last point, one of
               length 0 to itself (so a one-point stroke is a dot, and no segment joins two strokes). */
            Py_ssize_t s = first + j, e = j + 1 < count ? s + 1 : s;
            float sx = placed[2 * s], sy = placed[2 * s + 1];
            float dx = placed[2 * e] - sx, dy = placed[2 * e + 1] - sy;
            float squared_length = dx * dx + dy * dy;
            float inverse = 1.0f / (squared_length > 1e-12f ? squared_length : 1e-12f);
            float along_x = dx * inverse, along_y = dy * inverse;
            Py_ssize_t x0 = first_at_least(xs, columns, (dx < 0 ? sx + dx : sx) - reach);
            Py_ssize_t x1 = first_at_least(xs, columns, (dx < 0 ? sx : sx + dx) + reach);
            Py_ssize_t y0 = first_at_least(ys, rows, (dy < 0 ? sy + dy : sy) - reach);
            Py_ssize_t y1 = first_at_least(ys, rows, (dy < 0 ? sy : sy + dy) + reach);
            for (Py_ssize_t y = y0; y < y1; y++) {
                float ry = ys[y] - sy;
                float part_y = ry * along_y;
                float *row = out + y * columns;
                for (Py_ssize_t x = x0; x < x1; x++) {
                    float rx = xs[x] - sx;
                    float along = rx * along_x + part_y;
                    if (along < 0.0f)
                        along = 0.0f;
                    if (along > 1.0f)
                        along = 1.0f;
                    float across_x = rx - along * dx, across_y = ry - along * dy;
                    float squared = across_x * across_x + across_y * across_y;
                    if (squared < row[x])
                        row[x] = squared;
                }
            }
        }
        first += count;
    }
    for (Py_ssize_t i = 0; i < rows * columns; i++) {
        float value = radius_and_half - sqrtf(out[i]);
        out[i] = value < 0.0f ? 0.0f : (value > 1.0f ? 1.0f : value);
    }
}

static PyObject *coverage(PyObject *module, PyObject *args) {
    Py_buffer out, placed, lengths, xs, ys;
    float radius_and_half, reach;
    if (!PyArg_ParseTuple(args, "w*y*y*y*y*ff", &out, &placed, &lengths, &xs, &ys, &radius_and_half, &reach))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t columns = xs.len / (Py_ssize_t)sizeof(float), rows = ys.len / (Py_ssize_t)sizeof(float);
    Py_ssize_t strokes = lengths.len / (Py_ssize_t)sizeof(int), points = 0;
    for (Py_ssize_t stroke = 0; stroke < strokes; stroke++) {
        int count = ((const int *)lengths.buf)[stroke];
        if (count < 1) {
            points = -1;
            break;
        }
        points += count;
    }
    if (out.len != rows * columns * (Py_ssize_t)sizeof(float) || points != placed.len / (Py_ssize_t)(2 * sizeof(float))) {
        PyErr_SetString(PyExc_ValueError, "coverage: the buffers' sizes do not agree");
    } else {
        Py_BEGIN_ALLOW_THREADS
        ink(out.buf, placed.buf, lengths.buf, strokes, xs.buf, columns, ys.buf, rows, radius_and_half, reach);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&placed);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&xs);
    PyBuffer_Release(&ys);
    return result;
}

static PyMethodDef methods[] = {
    {"coverage", coverage, METH_VARARGS,
     "coverage(out, placed, lengths, xs, ys, radius_and_half, reach): the ink at the pixel centres xs x ys "
     "(float32) into out (float32, rows x columns), of the strokes whose points (float32 x, y pairs) are "
     "placed, lengths (int32) points each."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "livedigit._coverage", NULL, 0, methods};

PyMODINIT_FUNC PyInit__coverage(void) { return PyModule_Create(&definition); }
