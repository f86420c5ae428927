/* A drawing's strokes made into the model's inputs, compiled: livedigit.preprocess's drawing of strokes
   (measure_drawing with drop_strays, _render with _coverage_numpy and _place, and _path) in one call.

   The same operations, in the same order and the same precision, as the numpy code, so the image and the
   path are the same bit for bit (tests/test_preprocess.py compares them on thousands of drawings);
   setup.py builds it without contracting a * b + c into one fused instruction, which numpy never does.
   The numpy code is the reference and the fallback where no C compiler was at hand; this is what a
   snapshot costs the server, a fraction of what numpy's calls cost on arrays of a few dozen points.
   Each segment's ink is measured only against the pixels within reach of its box: numpy measures every
   segment against every pixel, because a call per segment costs more there than the pixels it saves.
   Before it, gather checks and copies the strokes as validate_strokes does, for the forms a message and a
   checked drawing take; any other form it leaves to validate_strokes. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

/* The first index of the ascending `sorted` whose value is at least `value` (`count` if none is), for
   the pixel centres (float) and the distances travelled along the path (double). */
#define FIRST_AT_LEAST(name, type)                                         \
    static Py_ssize_t name(const type *sorted, Py_ssize_t count, type value) { \
        Py_ssize_t low = 0, high = count;                                  \
        while (low < high) {                                               \
            Py_ssize_t middle = (low + high) / 2;                          \
            if (sorted[middle] < value)                                    \
                low = middle + 1;                                          \
            else                                                           \
                high = middle;                                             \
        }                                                                  \
        return low;                                                        \
    }
FIRST_AT_LEAST(first_at_least, float)
FIRST_AT_LEAST(first_travelled, double)

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


#define SIZE 28 /* preprocess.SIZE: the side of the model's image */

/* preprocess._is_dot: a drawing (or stroke) `extent` wide, whose largest coordinate is `magnitude`. */
static int is_dot(double extent, double magnitude) { return extent <= 1e-9 * (magnitude > 1.0 ? magnitude : 1.0); }

/* What preprocess.draw takes besides the buffers: its constants, so that they live in one place. */
typedef struct {
    double surface_side; /* the drawing surface's longer side; 0 for none */
    double width, box, min_extent, stray_side, stray_gap;
} Rules;

/* preprocess.drop_strays: which strokes are stray taps (1) among `strokes` strokes of `points`. */
static void find_strays(char *stray, const double *points, const int *lengths, Py_ssize_t strokes,
                        double *lows, double *highs, const Rules *rules) {
    memset(stray, 0, (size_t)strokes);
    if (strokes < 2)
        return;
    double largest = -INFINITY, magnitude = 0.0;
    Py_ssize_t first = 0;
    for (Py_ssize_t s = 0; s < strokes; s++) {
        for (int axis = 0; axis < 2; axis++) {
            double low = INFINITY, high = -INFINITY;
            for (Py_ssize_t i = first; i < first + lengths[s]; i++) {
                double value = points[2 * i + axis];
                low = value < low ? value : low;
                high = value > high ? value : high;
                double size = fabs(value);
                magnitude = size > magnitude ? size : magnitude;
            }
            lows[2 * s + axis] = low;
            highs[2 * s + axis] = high;
        }
        double side_x = highs[2 * s] - lows[2 * s], side_y = highs[2 * s + 1] - lows[2 * s + 1];
        double side = side_x > side_y ? side_x : side_y;
        largest = side > largest ? side : largest;
        first += lengths[s];
    }
    int any_small = 0;
    double body_low[2] = {INFINITY, INFINITY}, body_high[2] = {-INFINITY, -INFINITY};
    for (Py_ssize_t s = 0; s < strokes; s++) {
        double side_x = highs[2 * s] - lows[2 * s], side_y = highs[2 * s + 1] - lows[2 * s + 1];
        stray[s] = (side_x > side_y ? side_x : side_y) < rules->stray_side * largest;
        any_small |= stray[s];
        for (int axis = 0; axis < 2 && !stray[s]; axis++) {
            body_low[axis] = lows[2 * s + axis] < body_low[axis] ? lows[2 * s + axis] : body_low[axis];
            body_high[axis] = highs[2 * s + axis] > body_high[axis] ? highs[2 * s + axis] : body_high[axis];
        }
    }
    if (!any_small || is_dot(largest, magnitude)) { /* no body to stray from */
        memset(stray, 0, (size_t)strokes);
        return;
    }
    double body_x = body_high[0] - body_low[0], body_y = body_high[1] - body_low[1];
    double reach = rules->stray_gap * (body_x > body_y ? body_x : body_y);
    for (Py_ssize_t s = 0; s < strokes; s++) {
        if (!stray[s])
            continue;
        double gap = -INFINITY;
        for (int axis = 0; axis < 2; axis++) {
            double before = lows[2 * s + axis] - body_high[axis], after = body_low[axis] - highs[2 * s + axis];
            double apart = before > after ? before : after;
            gap = apart > gap ? apart : gap;
        }
        stray[s] = gap > reach;
    }
}

/* preprocess._place: the ink `scaled` (rows x columns) into the zeroed 28x28 `image`, its centre of
   mass at the centre; the sums run in order, as numpy's cumsum does. */
static void place(float *image, const float *scaled, Py_ssize_t rows, Py_ssize_t columns) {
    double total = 0.0, moment_y = 0.0, moment_x = 0.0;
    for (Py_ssize_t y = 0; y < rows; y++) {
        double row = scaled[y * columns];
        for (Py_ssize_t x = 1; x < columns; x++)
            row += scaled[y * columns + x];
        total = y ? total + row : row;
        double weighted = row * (double)y;
        moment_y = y ? moment_y + weighted : weighted;
    }
    for (Py_ssize_t x = 0; x < columns; x++) {
        double column = scaled[x];
        for (Py_ssize_t y = 1; y < rows; y++)
            column += scaled[y * columns + x];
        double weighted = column * (double)x;
        moment_x = x ? moment_x + weighted : weighted;
    }
    double top = nearbyint(SIZE / 2.0 - moment_y / total), left = nearbyint(SIZE / 2.0 - moment_x / total);
    Py_ssize_t y0 = top < 0.0 ? 0 : (Py_ssize_t)top, x0 = left < 0.0 ? 0 : (Py_ssize_t)left;
    y0 = y0 > SIZE - rows ? SIZE - rows : y0;
    x0 = x0 > SIZE - columns ? SIZE - columns : x0;
    memset(image, 0, SIZE * SIZE * sizeof(float));
    for (Py_ssize_t y = 0; y < rows; y++)
        memcpy(image + (y0 + y) * SIZE + x0, scaled + y * columns, (size_t)columns * sizeof(float));
}

/* preprocess._path: the pen's travel over `count` points (of `strokes` strokes), resampled at the
   `shares` of its length, into `path` (points x 4); zeros where it has no travel. */
static void path_of(float *path, Py_ssize_t resampled, const double *shares, const double *points, Py_ssize_t count,
                    const int *lengths, Py_ssize_t strokes, const double *low, const double *span, double *travelled,
                    char *down) {
    memset(path, 0, (size_t)resampled * 4 * sizeof(float));
    Py_ssize_t steps = count - 1;
    if (steps < 1)
        return;
    for (Py_ssize_t k = 0; k < steps; k++) {
        double length = hypot(points[2 * k + 2] - points[2 * k], points[2 * k + 3] - points[2 * k + 1]);
        travelled[k] = k ? travelled[k - 1] + length : length;
        down[k] = 1;
    }
    double total = travelled[steps - 1];
    if (total <= 0.0)
        return;
    Py_ssize_t end = 0; /* a step from the last point of a stroke is a jump to the next stroke */
    for (Py_ssize_t s = 0; s + 1 < strokes; s++) {
        end += lengths[s];
        down[end - 1] = 0;
    }
    double centre_x = low[0] + span[0] / 2.0, centre_y = low[1] + span[1] / 2.0;
    double extent = span[0] > span[1] ? span[0] : span[1];
    for (Py_ssize_t i = 0; i < resampled; i++) {
        double at = shares[i] * total;
        Py_ssize_t k = first_travelled(travelled, steps, at); /* the first step travelled as far as `at` */
        if (k > steps - 1)
            k = steps - 1;
        double dx = points[2 * k + 2] - points[2 * k], dy = points[2 * k + 3] - points[2 * k + 1];
        double length = hypot(dx, dy);
        double along = 1.0 - (travelled[k] - at) / (length > 1e-300 ? length : 1e-300);
        path[4 * i] = (float)((points[2 * k] + dx * along - centre_x) / extent);
        path[4 * i + 1] = (float)((points[2 * k + 1] + dy * along - centre_y) / extent);
        path[4 * i + 2] = down[k];
        path[4 * i + 3] = 1.0f;
    }
}

/* The whole drawing: 1 when drawn, 0 for a dot (nothing drawn), -1 when out of memory, -2 when the ink's
   box outgrows the image (which the arithmetic above rules out: its longer side is `box`). */
static int draw_strokes(float *image, float *path, Py_ssize_t resampled, const double *shares, const double *points,
                        Py_ssize_t count, const int *lengths, Py_ssize_t strokes, const Rules *rules) {
    int result = -1;
    char *stray = malloc((size_t)strokes + (size_t)count);
    int *kept_lengths = malloc((size_t)strokes * sizeof(int));
    double *bounds = malloc((size_t)strokes * 4 * sizeof(double));
    double *kept = malloc((size_t)count * 2 * sizeof(double) + (size_t)count * sizeof(double));
    float *placed = malloc((size_t)count * 2 * sizeof(float));
    if (!stray || !kept_lengths || !bounds || !kept || !placed)
        goto done;
    find_strays(stray, points, lengths, strokes, bounds, bounds + 2 * strokes, rules);
    Py_ssize_t kept_count = 0, kept_strokes = 0, first = 0;
    for (Py_ssize_t s = 0; s < strokes; s++) {
        if (!stray[s]) {
            memcpy(kept + 2 * kept_count, points + 2 * first, (size_t)lengths[s] * 2 * sizeof(double));
            kept_count += lengths[s];
            kept_lengths[kept_strokes++] = lengths[s];
        }
        first += lengths[s];
    }
    double low[2] = {INFINITY, INFINITY}, high[2] = {-INFINITY, -INFINITY};
    for (Py_ssize_t i = 0; i < kept_count; i++)
        for (int axis = 0; axis < 2; axis++) {
            double value = kept[2 * i + axis];
            low[axis] = value < low[axis] ? value : low[axis];
            high[axis] = value > high[axis] ? value : high[axis];
        }
    double span[2] = {high[0] - low[0], high[1] - low[1]};
    double extent = span[0] > span[1] ? span[0] : span[1], magnitude = 0.0;
    for (int axis = 0; axis < 2; axis++) {
        magnitude = fabs(low[axis]) > magnitude ? fabs(low[axis]) : magnitude;
        magnitude = fabs(high[axis]) > magnitude ? fabs(high[axis]) : magnitude;
    }
    if (is_dot(extent, magnitude) || (rules->surface_side > 0.0 && extent < rules->min_extent * rules->surface_side)) {
        result = 0;
        goto done;
    }
    double scale = rules->box / (extent * (1.0 + rules->width));
    double radius = rules->width * extent * scale / 2.0;
    double ink_width = span[0] * scale + 2.0 * radius, ink_height = span[1] * scale + 2.0 * radius;
    Py_ssize_t columns = (Py_ssize_t)nearbyint(ink_width), rows = (Py_ssize_t)nearbyint(ink_height);
    columns = columns < 1 ? 1 : columns;
    rows = rows < 1 ? 1 : rows;
    if (columns > SIZE || rows > SIZE) {
        result = -2;
        goto done;
    }
    float xs[SIZE], ys[SIZE], ink_buffer[SIZE * SIZE];
    float column_width = (float)(ink_width / (double)columns), row_height = (float)(ink_height / (double)rows);
    for (Py_ssize_t i = 0; i < columns; i++)
        xs[i] = ((float)i + 0.5f) * column_width;
    for (Py_ssize_t i = 0; i < rows; i++)
        ys[i] = ((float)i + 0.5f) * row_height;
    for (Py_ssize_t i = 0; i < kept_count; i++)
        for (int axis = 0; axis < 2; axis++)
            placed[2 * i + axis] = (float)((kept[2 * i + axis] - low[axis]) * scale + radius);
    ink(ink_buffer, placed, kept_lengths, kept_strokes, xs, columns, ys, rows, (float)(radius + 0.5),
        (float)(radius + 1.0));
    place(image, ink_buffer, rows, columns);
    if (path != NULL)
        path_of(path, resampled, shares, kept, kept_count, kept_lengths, kept_strokes, low, span,
                kept + 2 * (size_t)count, stray + strokes);
    result = 1;
done:
    free(stray);
    free(kept_lengths);
    free(bounds);
    free(kept);
    free(placed);
    return result;
}

static PyObject *draw(PyObject *module, PyObject *args) {
    Py_buffer image, path, shares, points, lengths;
    Rules rules;
    if (!PyArg_ParseTuple(args, "w*w*y*y*y*dddddd", &image, &path, &shares, &points, &lengths, &rules.surface_side,
                          &rules.width, &rules.box, &rules.min_extent, &rules.stray_side, &rules.stray_gap))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t strokes = lengths.len / (Py_ssize_t)sizeof(int), count = 0;
    Py_ssize_t resampled = shares.len / (Py_ssize_t)sizeof(double);
    for (Py_ssize_t s = 0; s < strokes; s++) {
        int length = ((const int *)lengths.buf)[s];
        if (length < 1) {
            count = -1;
            break;
        }
        count += length;
    }
    if (image.len != SIZE * SIZE * (Py_ssize_t)sizeof(float) || strokes < 1 ||
        count != points.len / (Py_ssize_t)(2 * sizeof(double)) ||
        (path.len != 0 && path.len != resampled * 4 * (Py_ssize_t)sizeof(float)) || resampled < 1) {
        PyErr_SetString(PyExc_ValueError, "draw: the buffers' sizes do not agree");
    } else {
        int drawn;
        Py_BEGIN_ALLOW_THREADS
        drawn = draw_strokes(image.buf, path.len ? path.buf : NULL, resampled, shares.buf, points.buf, count,
                             lengths.buf, strokes, &rules);
        Py_END_ALLOW_THREADS
        if (drawn == -1)
            PyErr_NoMemory();
        else if (drawn == -2)
            PyErr_SetString(PyExc_ValueError, "draw: the ink outgrew the image");
        else
            result = PyBool_FromLong(drawn);
    }
    PyBuffer_Release(&image);
    PyBuffer_Release(&path);
    PyBuffer_Release(&shares);
    PyBuffer_Release(&points);
    PyBuffer_Release(&lengths);
    return result;
}

/* One coordinate of a point given as a Python number: a float (or a subclass) or an int (not a bool),
   within max_coordinate of 0 (NaN is not). 0 and *out set, or -1 for anything else. */
static int coordinate(PyObject *number, double max_coordinate, double *out) {
    double value;
    if (PyFloat_Check(number))
        value = PyFloat_AS_DOUBLE(number);
    else if (PyLong_CheckExact(number)) {
        value = PyLong_AsDouble(number);
        if (value == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return -1;
        }
    } else
        return -1;
    if (!(fabs(value) <= max_coordinate))
        return -1;
    *out = value;
    return 0;
}

/* The points of one stroke written at `out` (NULL: only counted), at most `room` of them, from a list or
   tuple of [x, y] lists or tuples, or from a C-contiguous float64 numpy array of shape (n, 2). Its number
   of points, or -1 for anything else (validate_strokes then says what is wrong, or reads what it also
   accepts: other dtypes, ...). Nothing here runs Python code, so nothing changes the strokes meanwhile. */
static Py_ssize_t stroke_points(PyObject *stroke, double max_coordinate, double *out, Py_ssize_t room) {
    if (PyList_Check(stroke) || PyTuple_Check(stroke)) {
        Py_ssize_t count = PySequence_Fast_GET_SIZE(stroke);
        if (out == NULL || count > room)
            return count > room ? -1 : count;
        PyObject **items = PySequence_Fast_ITEMS(stroke);
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *point = items[i];
            if (!(PyList_Check(point) || PyTuple_Check(point)) || PySequence_Fast_GET_SIZE(point) != 2)
                return -1;
            PyObject **pair = PySequence_Fast_ITEMS(point);
            if (coordinate(pair[0], max_coordinate, out + 2 * i) || coordinate(pair[1], max_coordinate, out + 2 * i + 1))
                return -1;
        }
        return count;
    }
    /* numpy's own arrays only: another type's buffer could be Python code (__buffer__), and a class made in
       Python (a heap type) may take numpy's name; numpy's array type is a static one. */
    Py_buffer view;
    if ((Py_TYPE(stroke)->tp_flags & Py_TPFLAGS_HEAPTYPE) || strcmp(Py_TYPE(stroke)->tp_name, "numpy.ndarray") != 0 ||
        PyObject_GetBuffer(stroke, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t count = -1;
    if (view.ndim == 2 && view.shape[1] == 2 && view.shape[0] <= room && view.itemsize == (Py_ssize_t)sizeof(double) &&
        view.format != NULL && strcmp(view.format, "d") == 0) {
        count = view.shape[0];
        const double *values = view.buf;
        for (Py_ssize_t i = 0; out != NULL && i < 2 * count; i++) {
            if (!(fabs(values[i]) <= max_coordinate)) {
                count = -1;
                break;
            }
            out[i] = values[i];
        }
    }
    PyBuffer_Release(&view);
    return count;
}

/* livedigit.preprocess.validate_strokes of well-formed strokes, without a numpy call per stroke: what a
   snapshot's points cost to check was mostly numpy's calls on a few dozen of them. */
static PyObject *gather(PyObject *module, PyObject *args) {
    PyObject *strokes;
    Py_ssize_t max_strokes, max_points;
    double max_coordinate;
    if (!PyArg_ParseTuple(args, "Onnd", &strokes, &max_strokes, &max_points, &max_coordinate))
        return NULL;
    if (!(PyList_Check(strokes) || PyTuple_Check(strokes)) || PySequence_Fast_GET_SIZE(strokes) > max_strokes)
        Py_RETURN_NONE;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(strokes), total = 0, kept = 0;
    PyObject **items = PySequence_Fast_ITEMS(strokes);
    for (Py_ssize_t s = 0; s < count; s++) {
        Py_ssize_t length = stroke_points(items[s], max_coordinate, NULL, max_points - total);
        if (length < 0 || (total += length) > max_points)
            Py_RETURN_NONE;
        kept += length > 0;
    }
    PyObject *points = PyByteArray_FromStringAndSize(NULL, total * 2 * (Py_ssize_t)sizeof(double));
    PyObject *lengths = PyByteArray_FromStringAndSize(NULL, kept * (Py_ssize_t)sizeof(int));
    if (points == NULL || lengths == NULL) {
        Py_XDECREF(points);
        Py_XDECREF(lengths);
        return NULL;
    }
    /* Written within the sizes counted (the counts cannot change between the passes: see stroke_points). */
    double *out = (double *)PyByteArray_AS_STRING(points);
    int *sizes = (int *)PyByteArray_AS_STRING(lengths);
    Py_ssize_t written = 0, stroke = 0;
    for (Py_ssize_t s = 0; s < count; s++) {
        Py_ssize_t length = stroke_points(items[s], max_coordinate, out + 2 * written, total - written);
        if (length < 0 || (length > 0 && stroke == kept)) {
            Py_DECREF(points);
            Py_DECREF(lengths);
            Py_RETURN_NONE;
        }
        if (length > 0)
            sizes[stroke++] = (int)length;
        written += length;
    }
    return Py_BuildValue("(NN)", points, lengths);
}

static PyMethodDef methods[] = {
    {"draw", draw, METH_VARARGS,
     "draw(image, path, shares, points, lengths, surface_side, width, box, min_extent, stray_side, stray_gap): "
     "the model's 28x28 image (float32) of the strokes whose points (float64 x, y pairs) are lengths (int32) "
     "points each, and, unless path is empty, the pen's path at the shares (float64) of its length (float32, "
     "len(shares) x 4); False for a dot (nothing drawn)."},
    {"gather", gather, METH_VARARGS,
     "gather(strokes, max_strokes, max_points, max_coordinate): the points of strokes (lists or tuples of [x, y] "
     "numbers, or float64 arrays of shape (n, 2)) as float64 x, y pairs and the lengths (int32) of the non-empty "
     "strokes, each a bytearray; None where validate_strokes must look (anything else, or a limit passed)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "livedigit._draw", NULL, 0, methods};

PyMODINIT_FUNC PyInit__draw(void) { return PyModule_Create(&definition); }
