/*
 * berth's sd_notify sender: one AF_UNIX datagram to NOTIFY_SOCKET, sent from this process, so
 * the kernel stamps it with our own pid (systemd's NotifyAccess=main accepts messages only from
 * the main pid). Node core cannot send unix datagrams, hence this addon.
 *
 *   send(address: Buffer, message: Buffer): number   0, or a negative errno
 *
 * `address` is the raw sun_path: a path, or an abstract name whose first byte is NUL (the JS side
 * turns NOTIFY_SOCKET's leading '@' into it). The send never blocks the event loop
 * (MSG_DONTWAIT); the JS side retries EAGAIN.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static napi_value make_int(napi_env env, int value) {
  napi_value result;
  napi_create_int32(env, value, &result);
  return result;
}

static napi_value Send(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2) {
    napi_throw_type_error(env, NULL, "send(address: Buffer, message: Buffer)");
    return NULL;
  }
  void *address;
  size_t address_length;
  void *message;
  size_t message_length;
  bool is_buffer = false;
  napi_is_buffer(env, argv[0], &is_buffer);
  if (!is_buffer || napi_get_buffer_info(env, argv[0], &address, &address_length) != napi_ok) {
    napi_throw_type_error(env, NULL, "address must be a Buffer");
    return NULL;
  }
  napi_is_buffer(env, argv[1], &is_buffer);
  if (!is_buffer || napi_get_buffer_info(env, argv[1], &message, &message_length) != napi_ok) {
    napi_throw_type_error(env, NULL, "message must be a Buffer");
    return NULL;
  }

  struct sockaddr_un sa;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  /* A path needs room for its terminating NUL; an abstract name has none. */
  if (address_length == 0 || address_length >= sizeof(sa.sun_path) + (((char *)address)[0] == 0))
    return make_int(env, -EINVAL);
  memcpy(sa.sun_path, address, address_length);
  socklen_t sa_length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + address_length +
                                    (((char *)address)[0] == 0 ? 0 : 1));

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_int(env, -errno);
  ssize_t sent = sendto(fd, message, message_length, MSG_NOSIGNAL | MSG_DONTWAIT,
                        (struct sockaddr *)&sa, sa_length);
  int error = sent < 0 ? errno : 0;
  close(fd);
  if (error) return make_int(env, -error);
  if ((size_t)sent != message_length) return make_int(env, -EMSGSIZE);
  return make_int(env, 0);
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  napi_value fn;
  if (napi_create_function(env, "send", NAPI_AUTO_LENGTH, Send, NULL, &fn) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "send", fn) != napi_ok) return NULL;
  return exports;
}
