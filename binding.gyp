{
  "targets": [
    {
      "target_name": "berth_notify",
      "sources": ["native/notify.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
