/*
 * Where a file's data is: its extents by lseek(SEEK_DATA / SEEK_HOLE), for raw images that are sparse
 * files (qemu's raw images, `truncate -s`, a copy made with `cp --sparse`). Reading a hole costs the
 * kernel a zero-fill and the reader a zero check; knowing where the holes are, vhdkit skips them, as
 * qemu-img does.
 *
 *   extents(fd, start, end, max) -> Float64Array [s0, e0, s1, e1, ...] | undefined
 *
 * The data ranges of [start, end), in order, at most `max` of them (call again from the last end for
 * more). undefined when the file system cannot tell (EINVAL, ENOTSUP, EOPNOTSUPP, ENOSYS, ESPIPE:
 * lseek without SEEK_DATA; EOVERFLOW: an offset this build cannot hold): the caller then reads
 * everything. Other errors throw, with the errno name as `code`.
 * The descriptor's file offset moves; vhdkit reads and writes at explicit positions only.
 *
 * Built by .ci/native.mjs as dist/io/extents.node (Node-API: one binary for every Node version).
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64 /* 64-bit off_t on 32-bit hosts too (armv7l) */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
#include <node_api.h>

#define CHECK(call)                                                      \
  do {                                                                   \
    if ((call) != napi_ok) {                                             \
      napi_throw_error(env, NULL, "extents: Node-API call failed");     \
      return NULL;                                                       \
    }                                                                    \
  } while (0)

/* Errors that mean "this file system (or build) cannot say where the holes are". */
static int cannot_tell(int e) {
  return e == EINVAL || e == ENOTSUP || e == EOPNOTSUPP || e == ENOSYS || e == ESPIPE || e == EOVERFLOW;
}

/* The errno's symbolic name, as Node names errors (EBADF, EIO, ...); "ERRNO_<n>" for others. */
static const char *errno_name(int e, char *scratch, size_t size) {
  switch (e) {
    case EBADF: return "EBADF";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENOMEM: return "ENOMEM";
    case EINTR: return "EINTR";
    case EAGAIN: return "EAGAIN";
    default: snprintf(scratch, size, "ERRNO_%d", e); return scratch;
  }
}

static napi_value extents(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) {
    napi_throw_type_error(env, NULL, "extents(fd, start, end, max)");
    return NULL;
  }
  int32_t fd;
  int64_t start, end, max;
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_value_int64(env, argv[1], &start));
  CHECK(napi_get_value_int64(env, argv[2], &end));
  CHECK(napi_get_value_int64(env, argv[3], &max));
  if (start < 0 || end < start || max < 1) {
    napi_throw_range_error(env, NULL, "extents: bad range or count");
    return NULL;
  }

  napi_value buffer, out;
  void *data;
  CHECK(napi_create_arraybuffer(env, (size_t)max * 2 * sizeof(double), &data, &buffer));
  double *ranges = data;
  int64_t n = 0;
  off_t pos = (off_t)start;
  while (pos < end && n < max) {
    off_t d = lseek(fd, pos, SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO) break; /* no data at or after pos */
      if (cannot_tell(errno)) {
        napi_get_undefined(env, &out);
        return out;
      }
      goto fail;
    }
    if (d >= end) break;
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0) {
      if (cannot_tell(errno)) {
        napi_get_undefined(env, &out);
        return out;
      }
      goto fail;
    }
    if (h > end) h = (off_t)end;
    if (h <= d) break; /* cannot happen; never loop forever */
    ranges[n * 2] = (double)d;
    ranges[n * 2 + 1] = (double)h;
    n++;
    pos = h;
  }
  CHECK(napi_create_typedarray(env, napi_float64_array, (size_t)n * 2, buffer, 0, &out));
  return out;

fail: {
  int e = errno;
  char scratch[32];
  napi_value code, message, error;
  CHECK(napi_create_string_utf8(env, errno_name(e, scratch, sizeof scratch), NAPI_AUTO_LENGTH, &code));
  CHECK(napi_create_string_utf8(env, strerror(e), NAPI_AUTO_LENGTH, &message));
  CHECK(napi_create_error(env, code, message, &error));
  CHECK(napi_set_named_property(env, error, "code", code));
  napi_throw(env, error);
  return NULL;
}
}

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "extents", NAPI_AUTO_LENGTH, extents, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "extents", fn) != napi_ok) return NULL;
  return exports;
}
